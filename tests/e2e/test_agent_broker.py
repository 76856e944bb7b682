"""sftd runs the real sft-broker: it enrolls with a broker CSR, writes the broker's TLS
files, starts the broker as its own system user, and fails closed when it dies.

sftd (ManageAccounts and Broker on) runs as root in a private namespace
(tests/support/namespace.py: its own /etc, /home and pids), so the `sft-broker` user
and bob's account it creates exist only in there. The namespace lets unprivileged
users run this Python (share_python), since the broker runs as `sft-broker`. The
platform runs in this process; the test plays the broker's caller on the control
socket to hold bob's account enabled.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.broker_tls import CA_FILE, CERTIFICATE_FILE, KEY_FILE
from agent.control_client import SOCKET_NAME, ControlClient
from agent.state import AgentState
from sft.agent.v1 import agent_control_pb2
from tests.e2e.test_agent_sshd import _until, platform
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.platform import Platform
from tests.support.ports import free_port
from tests.support.real_software import require_program
from tests.support.sshd import write_private_key

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
TEAM = "acme"
PROJECT = f"teams/{TEAM}/projects/web"
__all__ = ["platform"]  # the fixture, shared with the sshd test
SFTD = Path(sys.executable).parent / "sftd"
BROKER_USER = "sft-broker"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    """A private namespace whose unprivileged users can run this Python."""
    require_root("sftd running the broker as its own user in a private namespace")
    if importlib.util.find_spec("services.broker.cli") is None:
        pytest.skip("services/broker/cli.py (the sft-broker program) is not written yet")
    for tool, package in (("useradd", "passwd"), ("passwd", "passwd"), ("kill", "procps")):
        require_program(tool, package)
    with private_system(tmp_path, cwd=REPOSITORY, share_python=True) as private:
        yield private


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the broker's user can enter (pytest's tmp dirs are root's, 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="sftd-broker-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _entries(log: Path) -> list[dict[str, Any]]:
    """Return every JSON entry in sftd's log."""
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    """Return sftd's JSON log entries whose event is `event`."""
    return [entry for entry in _entries(log) if entry.get("event") == event]


def _passwd_entry(system: PrivateSystem, name: str) -> list[str] | None:
    """Return `name`'s /etc/passwd fields in the namespace (None: no such user)."""
    for line in system.read("/etc/passwd").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def _password_status(system: PrivateSystem, name: str) -> str:
    """Return `passwd -S`'s letter for `name` in the namespace (P usable, L locked)."""
    return system.run(["passwd", "-S", name]).stdout.split()[1]


def _status(system: PrivateSystem, conf: Path) -> dict[str, Any]:
    """Return `sftd status -o json`, run in the namespace."""
    result = system.run([str(SFTD), "--conf", str(conf), "status", "-o", "json"])
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _proc_status(system: PrivateSystem, pid: int) -> dict[str, str]:
    """Return /proc/PID/status of a process in the namespace, as key: value."""
    text = system.read(f"/proc/{pid}/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _broker_pids(log: Path) -> list[int]:
    """Return the namespace pids sftd started the broker with, in order."""
    return [int(entry["pid"]) for entry in _events(log, "broker started")]


def _running(system: PrivateSystem, conf: Path) -> bool:
    """Return whether `sftd status` reports a running broker."""
    daemon = _status(system, conf).get("daemon") or {}
    return daemon.get("broker") == "running"


async def test_sftd_runs_the_broker_as_its_user_and_fails_closed_when_it_is_killed(
    system: PrivateSystem, platform: Platform, tmp_path: Path, open_dir: Path
) -> None:
    admin = await platform.login(TEAM, "alice")
    await platform.grant_project(admin, TEAM, "web", "ops", members=["bob"])
    token, _ = await platform.enrollment_token(admin, PROJECT, "broker test")

    # Enrollment on Linux certifies sshd's host keys; sshd itself is not needed here.
    host_key = tmp_path / "ssh_host_ed25519_key"
    write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    sshd_config = tmp_path / "sshd_config"
    sshd_config.write_text(f"HostKey {host_key}\n")
    state_dir = open_dir / "state"
    (tmp_path / "enrollment.token").write_text(token + "\n")
    broker_port = free_port()
    conf = tmp_path / "sftd.yaml"
    settings = {
        "InitialURL": f"https://{platform.address}",
        "CanonicalName": "win-1",
        "AccessAddress": "127.0.0.1",
        "StateDir": str(state_dir),
        "EnrollmentTokenFile": str(tmp_path / "enrollment.token"),
        "SSHDConfigFile": str(sshd_config),
        "ManageAccounts": True,
        "ManageSSHD": False,
        "Broker": True,
        "BrokerPort": broker_port,
        "BrokerListenAddress": "127.0.0.1",
        "RDPTarget": f"127.0.0.1:{free_port()}",
        "SessionGracePeriod": 5,
        "LogLevel": "INFO",
    }
    conf.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    log = tmp_path / "sftd.log"

    sftd = system.start([str(SFTD), "--conf", str(conf)], log=log)
    stopped = None
    try:
        broker_dir = state_dir / "broker"
        await _until(lambda: (broker_dir / CERTIFICATE_FILE).is_file(), "the broker cert", log)
        await _until(lambda: _running(system, conf), "the broker to run", log)
        await _until(lambda: _password_status(system, "bob") == "L", "bob's account", log)

        # The broker's user: a system user sftd created, with no home and no shell.
        entry = _passwd_entry(system, BROKER_USER)
        assert entry is not None, "sftd did not create the broker's user"
        uid, gid = int(entry[2]), int(entry[3])
        assert 0 < uid < 1000 and 0 < gid < 1000
        assert entry[5:] == ["/nonexistent", "/usr/sbin/nologin"]

        # Its certificate names this server and chains to the project's CA.
        identity = AgentState(state_dir).read_identity()
        assert identity is not None
        certificate = x509.load_pem_x509_certificate((broker_dir / CERTIFICATE_FILE).read_bytes())
        ca = x509.load_pem_x509_certificate((broker_dir / CA_FILE).read_bytes())
        certificate.verify_directly_issued_by(ca)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        assert f"sft://{TEAM}/web/servers/{identity.server_id}" in uris
        assert "win-1" in names.get_values_for_type(x509.DNSName)

        # Files: the key is the broker's alone; the rest root's, readable by its group.
        def owner_mode(path: Path) -> tuple[int, int, int]:
            info = path.stat()
            return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)

        assert owner_mode(state_dir) == (0, gid, 0o710)
        assert owner_mode(broker_dir) == (0, gid, 0o750)
        assert owner_mode(broker_dir / KEY_FILE) == (uid, gid, 0o600)
        assert owner_mode(broker_dir / CERTIFICATE_FILE) == (0, gid, 0o644)
        assert owner_mode(broker_dir / CA_FILE) == (0, gid, 0o644)
        assert owner_mode(state_dir / SOCKET_NAME) == (0, gid, 0o660)
        assert owner_mode(state_dir / AgentState.KEY)[2] == 0o600

        # The broker runs as that user, with no other group, and listens on its port.
        (first,) = _broker_pids(log)
        process = _proc_status(system, first)
        assert process["Uid"].split() == [str(uid)] * 4
        assert process["Gid"].split() == [str(gid)] * 4
        assert process["Groups"] == ""
        assert process["NoNewPrivs"] == "1"
        _, writer = await asyncio.open_connection("127.0.0.1", broker_port)
        writer.close()

        async with ControlClient.unix(state_dir / SOCKET_NAME) as client:
            assert (await client.status()).broker_state == agent_control_pb2.BROKER_STATE_RUNNING
            enabled = await client.enable_account("bob", "grant-1", 600)
            assert enabled.password is not None
            assert _password_status(system, "bob") == "P"

            # kill -9: sftd disables bob at once, then starts a new broker.
            system.run(["kill", "-9", str(first)])
            await _until(lambda: _password_status(system, "bob") == "L", "bob disabled", log)
            await _until(lambda: len(_broker_pids(log)) >= 2, "a second broker", log)
            await _until(lambda: _running(system, conf), "the broker to run again", log)
            assert list((await client.status()).grants) == []
        second = _broker_pids(log)[1]
        assert second != first
        assert _proc_status(system, second)["Uid"].split()[0] == str(uid)
        failures = _events(log, "broker failed")
        assert failures and failures[0]["reason"] == "the broker exited with status -9"
        # Its own log lines came through sftd's, tagged.
        assert any(entry.get("source") == "broker" for entry in _entries(log))
    finally:
        stopped = await asyncio.to_thread(system.stop, sftd, timeout_seconds=20.0)
    text = log.read_text(errors="replace")
    assert stopped == 0, text
    assert "Traceback" not in text, text
    # sftd's own line (the broker logs one of the same name, tagged source=broker).
    assert [e["status"] for e in _events(log, "broker stopped") if "source" not in e] == [0]
    assert not (state_dir / SOCKET_NAME).exists()


def test_the_broker_user_is_never_root_in_sftd_yaml(tmp_path: Path) -> None:
    """BrokerUser: root is refused at start, one line, before anything is created."""
    conf = tmp_path / "sftd.yaml"
    conf.write_text(f"StateDir: {tmp_path / 'state'}\nBroker: true\nBrokerUser: root\n")
    result = subprocess.run(
        [str(SFTD), "--conf", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "BrokerUser: must not be 'root'" in result.stderr
    assert not (tmp_path / "state").exists()
