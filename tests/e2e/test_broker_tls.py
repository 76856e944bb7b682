"""The real `sft-broker` process's TLS posture: sslyze's view, handshake refusals, hot reload.

Weak cipher suites, for this test: anything without forward secrecy (no ECDHE in TLS 1.2),
anything not AEAD (CBC, RC4, 3DES/DES, NULL), EXPORT, anonymous and PSK suites, and MD5 or
SHA-1 MACs. TLS 1.3 suites are all AEAD with ephemeral key exchange.

sslyze cannot report "client certificate required" for a gRPC server: without a
certificate the server ends the handshake, and sslyze reports a connectivity error. The
test asserts exactly that, then scans again presenting a valid client certificate.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from sft.broker.v1 import broker_service_pb2, broker_service_pb2_grpc
from tests.support.broker import (
    BROKER_BIN,
    AgentControlStub,
    BrokerProcess,
    IssuedCert,
    TestPKI,
    broker_channel,
    serve_agent_control_stub,
    start_broker,
)
from tests.support.real_software import find_program, require

pytestmark = pytest.mark.e2e

_SSLYZE_VENV = Path(__file__).resolve().parents[2] / ".venv-sslyze" / "bin" / "sslyze"
_WEAK_WORDS = ("NULL", "EXPORT", "RC4", "3DES", "_DES_", "CBC", "MD5", "ANON", "_anon_", "PSK")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentControlStub]:
    path = tmp_path_factory.mktemp("agent") / "control.sock"
    with serve_agent_control_stub(path, ["alice"]) as stub:
        yield stub


@pytest.fixture(scope="module")
def broker(
    pki: TestPKI, agent: AgentControlStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    tls_dir = pki.write_tls_dir(tmp_path_factory.mktemp("broker") / "tls")
    with start_broker(tls_dir, agent.socket_path, "127.0.0.1:9") as process:
        yield process


def _sslyze(port: int, out: Path, client: tuple[Path, Path] | None) -> dict[str, object]:
    sslyze = require(
        "sslyze",
        os.environ.get("SFT_SSLYZE")
        or find_program("sslyze", "/work/main/.venv-sslyze/bin/sslyze"),
        "run `make deps` (sslyze lives in .venv-sslyze)",
    )
    args = [sslyze, "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", f"--json_out={out}"]
    if client is not None:
        args += ["--cert", str(client[0]), "--key", str(client[1])]
    subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, timeout=180, check=True)
    document = json.loads(out.read_text())
    results: list[dict[str, object]] = document["server_scan_results"]
    return results[0]


def _accepted(scan: dict[str, object], version: str) -> list[str]:
    result = scan["scan_result"][f"{version}_cipher_suites"]  # type: ignore[index]
    assert result["status"] == "COMPLETED", result
    return [s["cipher_suite"]["name"] for s in result["result"]["accepted_cipher_suites"]]


def test_sslyze_sees_tls_1_2_and_1_3_only_with_strong_suites(
    broker: BrokerProcess, pki: TestPKI, tmp_path: Path
) -> None:
    client = pki.client_cert().write(tmp_path, "client")
    scan = _sslyze(broker.port, tmp_path / "scan.json", client)
    assert scan["connectivity_status"] == "COMPLETED"
    assert _accepted(scan, "tls_1_0") == []
    assert _accepted(scan, "tls_1_1") == []
    tls12, tls13 = _accepted(scan, "tls_1_2"), _accepted(scan, "tls_1_3")
    assert tls12, "TLS 1.2 must be accepted"
    for suite in tls12:
        assert "ECDHE" in suite, f"{suite} has no forward secrecy"
        assert "GCM" in suite or "CHACHA20_POLY1305" in suite, f"{suite} is not AEAD"
    for suite in (*tls12, *tls13):
        assert not any(word in suite for word in _WEAK_WORDS), f"{suite} is weak"


def test_sslyze_without_a_client_certificate_cannot_connect(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    scan = _sslyze(broker.port, tmp_path / "scan.json", None)
    assert scan["connectivity_status"] == "ERROR"
    assert scan["scan_result"] is None


def _refusal(
    port: int, pki: TestPKI, client: IssuedCert | None, trust: TestPKI | None = None
) -> grpc.StatusCode:
    """Call RequestAccess presenting `client`; return the status code it ended with."""
    import asyncio

    async def call() -> grpc.StatusCode:
        channel = broker_channel(port, trust or pki, client)
        try:
            stub = broker_service_pb2_grpc.BrokerServiceStub(channel)
            await stub.RequestAccess(broker_service_pb2.RequestAccessRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()
        return grpc.StatusCode.OK

    return asyncio.run(call())


_HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    "make",
    [
        lambda pki, other: None,
        lambda pki, other: other.client_cert(),
        lambda pki, other: pki.client_cert(not_after=datetime.now(UTC) - timedelta(seconds=5)),
        lambda pki, other: pki.client_cert(not_before=datetime.now(UTC) + _HOUR),
        lambda pki, other: pki.client_cert(self_signed=True),
        lambda pki, other: pki.client_cert(usages=[ExtendedKeyUsageOID.SERVER_AUTH]),
    ],
    ids=[
        "no-cert",
        "other-project-ca",
        "expired",
        "not-yet-valid",
        "self-signed",
        "server-auth-only",
    ],
)
def test_bad_client_certificates_are_refused(
    broker: BrokerProcess, agent: AgentControlStub, pki: TestPKI, make: object
) -> None:
    calls_before = len(agent.calls)
    client = make(pki, TestPKI(project="other"))  # type: ignore[operator]
    code = _refusal(broker.port, pki, client)
    # Refused at the handshake (the channel never connects) or by the broker's own checks.
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert len(agent.calls) == calls_before


def test_a_good_client_certificate_gets_a_grant(broker: BrokerProcess, pki: TestPKI) -> None:
    assert _refusal(broker.port, pki, pki.client_cert()) is grpc.StatusCode.OK


def _served_certificate(port: int, pki: TestPKI, tmp_path: Path) -> x509.Certificate:
    """Handshake with Python's ssl (ALPN h2, a valid client cert); return the server's cert."""
    cert_path, key_path = pki.client_cert().write(tmp_path, "probe")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pki.ca_pem.decode())
    context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_renewed_certificate_is_served_without_a_restart(
    pki: TestPKI, agent: AgentControlStub, tmp_path: Path
) -> None:
    tls_dir = pki.write_tls_dir(tmp_path / "tls")
    with start_broker(tls_dir, agent.socket_path, "127.0.0.1:9") as process:
        before = _served_certificate(process.port, pki, tmp_path)
        renewed = pki.server_cert()
        pki.write_tls_dir(tls_dir, renewed)
        after = _served_certificate(process.port, pki, tmp_path)
        assert after.serial_number != before.serial_number
        assert after == x509.load_pem_x509_certificate(renewed.cert_pem)
        # A broken renewal is logged and the last good certificate kept.
        (tls_dir / "broker.key").write_bytes(pki.server_cert().key_pem)
        kept = _served_certificate(process.port, pki, tmp_path)
        assert kept == after
        assert process.process.poll() is None
    assert "new ones are unusable" in process.log()


@pytest.mark.parametrize("missing", ["broker.crt", "broker.key", "ca.pem"])
def test_a_missing_tls_file_exits_2_with_one_line(
    pki: TestPKI, tmp_path: Path, missing: str
) -> None:
    tls_dir = pki.write_tls_dir(tmp_path / "tls")
    (tls_dir / missing).unlink()
    result = subprocess.run(
        [
            BROKER_BIN,
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            str(tls_dir),
            "--control",
            str(tmp_path / "control.sock"),
            "--target",
            "127.0.0.1:3389",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert missing in lines[0] and lines[0].startswith("sft-broker: error:")


def test_sigterm_ends_every_grant_and_exits_0(
    pki: TestPKI, agent: AgentControlStub, tmp_path: Path
) -> None:
    tls_dir = pki.write_tls_dir(tmp_path / "tls")
    with start_broker(tls_dir, agent.socket_path, "127.0.0.1:9") as process:
        assert _refusal(process.port, pki, pki.client_cert()) is grpc.StatusCode.OK
        grant_id = agent.calls[-1].grant_id
        assert process.stop() == 0
    (ended,) = agent.disabled(grant_id)
    assert ended.reason == 4  # DISABLE_REASON_BROKER_STOPPING
