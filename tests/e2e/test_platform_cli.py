"""`sft-platform` as an operator runs it: serve, migrate, init, and every bad-input path."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runtime.pinned_codes import CodeKind, PinnedCode
from tests.support.platform_process import PlatformProcess, run_platform
from tests.support.ports import free_port

SERVICES = {
    "ca": "sft.ca.v1.CertificateAuthorityService",
    "inventory": "sft.inventory.v1.AgentService",
    "auth": "sft.auth.v1.AccessService",
}


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a failed run printed exactly one error line and no traceback; return it."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sft-platform: error: ")
    return str(lines[0])


def _reflected_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return {service.name for service in reply.list_services_response.service}


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    result = run_platform("migrate", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


def test_serve_answers_health_reflection_and_metrics_then_stops_on_sigterm(
    migrated: Path,
) -> None:
    platform = PlatformProcess(migrated).start()
    try:
        with platform.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ["", *SERVICES.values()]:
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
            listed = _reflected_services(channel)
            assert set(SERVICES.values()) <= listed
            assert "grpc.health.v1.Health" in listed
            # A member's RPC without a token is refused before it runs, in one line.
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary("/sft.inventory.v1.ProjectService/GetProject")(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "sft login" in caught.value.details()
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{platform.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'grpc_server_handled_total{grpc_code="UNAUTHENTICATED"' in metrics
        assert 'grpc_service="grpc.health.v1.Health"' in metrics
    finally:
        assert platform.stop() == 0, platform.log()
    assert '"stopped"' in platform.log() or "stopped" in platform.log()
    # A laptop platform makes the CA's key-encryption key beside, not inside, its database.
    assert (migrated / "ca-kek.key").stat().st_mode & 0o777 == 0o600


def test_serve_runs_a_subset_of_services(migrated: Path) -> None:
    platform = PlatformProcess(migrated, "--services", "ca").start()
    try:
        with platform.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICES["ca"]), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                health.Check(health_pb2.HealthCheckRequest(service=SERVICES["auth"]), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        platform.stop()


def test_serve_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    env = {"SFT_PLATFORM_DATABASE_URL": postgres_url}
    result = run_platform("migrate", "--data-dir", str(data_dir), env=env)
    assert result.returncode == 0, result.stderr
    # Replicas share one database, so they must share the CA's key-encryption key too.
    error = _one_line_error(run_platform("serve", "--data-dir", str(data_dir), env=env))
    assert "ca_kek_file or SFT_PLATFORM_CA_KEK" in error
    result = run_platform("generate-kek", str(tmp_path / "kek"))
    assert result.returncode == 0, result.stderr
    kek = (tmp_path / "kek").read_text().strip()
    # Replacing a KEK would make every CA key sealed with it unreadable.
    error = _one_line_error(run_platform("generate-kek", str(tmp_path / "kek")))
    assert "already exists" in error
    assert (tmp_path / "kek").read_text().strip() == kek
    platform = PlatformProcess(data_dir, env={**env, "SFT_PLATFORM_CA_KEK": kek}).start()
    platform.stop()
    assert not (data_dir / "platform.db").exists()
    assert not (data_dir / "ca-kek.key").exists()


def test_serve_refuses_an_unmigrated_database_and_names_the_command(tmp_path: Path) -> None:
    result = run_platform(
        "serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{free_port()}"
    )
    line = _one_line_error(result)
    assert "not migrated for ca, inventory, auth" in line
    assert "sft-platform migrate" in line


def test_auto_migrate_lets_a_laptop_start_at_once(tmp_path: Path) -> None:
    platform = PlatformProcess(tmp_path / "data", "--auto-migrate").start()
    platform.stop()
    assert (tmp_path / "data" / "platform.db").exists()


def test_port_in_use_is_one_line(migrated: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_platform("serve", "--data-dir", str(migrated), "--listen", f"127.0.0.1:{port}")
    assert "already in use" in _one_line_error(result)


@pytest.mark.parametrize(
    ("args", "config", "expected"),
    [
        ([], "listen: 127.0.0.1:1\nlisten_adress: x\n", "unknown setting 'listen_adress'"),
        (["--database-url", "mysql://db/sft"], None, "database 'mysql' is not supported"),
        (["--listen", "nowhere"], None, "is not HOST:PORT"),
        (["--services", "ca,dns"], None, "unknown service 'dns'"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], config: str | None, expected: str
) -> None:
    extra = []
    if config is not None:
        (tmp_path / "platform.yaml").write_text(config)
        extra = ["--config", str(tmp_path / "platform.yaml")]
    result = run_platform("serve", "--data-dir", str(tmp_path / "d"), *extra, *args)
    assert expected in _one_line_error(result)
    assert result.returncode == 2


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_unusable_data_dir_is_one_line(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    data_dir = blocker if kind == "file" else blocker / "data"
    result = run_platform("migrate", "--data-dir", str(data_dir))
    line = _one_line_error(result)
    assert f"data dir {data_dir} is not usable" in line
    assert "--data-dir" in line


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://sft@127.0.0.1:{free_port()}/sft"
    result = run_platform("migrate", "--data-dir", str(tmp_path), "--database-url", url)
    assert "database" in _one_line_error(result)


def test_init_prints_a_code_pinned_to_the_platform_ca(migrated: Path) -> None:
    result = run_platform(
        "init", "--team", "acme", "--admin", "alice", "--json", "--data-dir", str(migrated)
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["team"] == "acme" and out["user"] == "alice" and out["created"] is True
    code = PinnedCode.parse(out["code"], CodeKind.DEVICE_ENROLLMENT)
    ca = x509.load_pem_x509_certificate((migrated / "tls" / "ca.pem").read_bytes())
    fingerprint = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).digest()
    assert code.pins(fingerprint)
    assert out["ca_sha256"] == fingerprint.hex()
    # The database holds the hash of the code, never the code.
    database = (migrated / "platform.db").read_bytes()
    assert code.secret_hash.encode() in database
    assert out["code"].encode() not in database

    again = run_platform("init", "--team", "acme", "--admin", "alice", "--data-dir", str(migrated))
    line = _one_line_error(again)
    assert "team 'acme' already exists" in line and "enrollment-code" in line

    reissued = run_platform(
        "init",
        "--team",
        "acme",
        "--admin",
        "alice",
        "--existing-ok",
        "--json",
        "--data-dir",
        str(migrated),
    )
    assert reissued.returncode == 0, reissued.stderr
    second = json.loads(reissued.stdout)
    assert second["created"] is False and second["code"] != out["code"]


def test_init_refuses_bad_names_and_changes_nothing(migrated: Path) -> None:
    result = run_platform(
        "init", "--team", "Bad Team!", "--admin", "alice", "--data-dir", str(migrated)
    )
    assert "team name 'Bad Team!' is not valid" in _one_line_error(result)
    result = run_platform("init", "--team", "acme", "--admin", "root", "--data-dir", str(migrated))
    assert "reserved" in _one_line_error(result)
    # Neither attempt left a team behind: a correct init now creates it fresh.
    ok = run_platform(
        "init", "--team", "acme", "--admin", "alice", "--json", "--data-dir", str(migrated)
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["created"] is True


def test_enrollment_code_for_an_unknown_user_is_refused(migrated: Path) -> None:
    run_platform("init", "--team", "acme", "--admin", "alice", "--data-dir", str(migrated))
    result = run_platform(
        "enrollment-code", "--team", "acme", "--user", "bob", "--data-dir", str(migrated)
    )
    assert "user 'bob' does not exist in team 'acme'" in _one_line_error(result)


def test_migrate_check_reports_pending(tmp_path: Path) -> None:
    result = run_platform("migrate", "--check", "--data-dir", str(tmp_path / "d"))
    assert "migrations pending for: ca, inventory, auth" in _one_line_error(result)
    assert run_platform("migrate", "--data-dir", str(tmp_path / "d")).returncode == 0
    assert run_platform("migrate", "--check", "--data-dir", str(tmp_path / "d")).returncode == 0


def test_migrate_refuses_an_unknown_service(tmp_path: Path) -> None:
    result = run_platform("migrate", "--services", "ca,cas", "--data-dir", str(tmp_path / "d"))
    assert "unknown service 'cas'" in _one_line_error(result)
    assert result.returncode == 2
    assert not (tmp_path / "d" / "platform.db").exists()
