"""The headline RDP test: real `sft rdp` → real `sft-broker` run by a real `sftd` → real
xrdp, logged in to by real FreeRDP with the one-time password; the password dies with
the session.

sftd (ManageAccounts and Broker on) and xrdp run as root in one private namespace
(tests/support/namespace.py: its own /etc, /home, /run and pids; share_python so the
broker's unprivileged user can run this Python), so bob's account, the `sft-broker`
user and the one-time password hash exist only in there, and xrdp-sesman checks the
password against that /etc/shadow. The platform runs in this process (ssh_world);
bob runs the real `sft`. A login is judged from sesman's log (tests/support/xrdp.py):
xrdp 0.9 has no NLA, so FreeRDP's own exit status proves nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.broker_tls import CERTIFICATE_FILE
from tests.e2e.test_agent_broker import _broker_pids, _password_status, _running, open_dir
from tests.e2e.test_agent_sshd import _until
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.ports import free_port
from tests.support.rdp_world import holding
from tests.support.real_software import require_program
from tests.support.ssh_world import TEAM, World, ssh_world
from tests.support.sshd import write_private_key
from tests.support.xrdp import XRDPServer, running_xrdp

pytestmark = pytest.mark.e2e
__all__ = ["open_dir"]  # the fixture: a state dir parent the broker's user can enter

REPOSITORY = Path(__file__).resolve().parents[2]
SFTD = Path(sys.executable).parent / "sftd"
#: sftd.yaml SessionGracePeriod for these tests: short, but long enough that a login's
#: own reconnects fall inside it.
GRACE_SECONDS = 3


@dataclass
class WindowsLike:
    """win-1: a server whose sftd runs the broker in front of a real xrdp."""

    system: PrivateSystem
    xrdp: XRDPServer
    conf: Path
    log: Path
    broker_port: int


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    """A private namespace with its own /run (xrdp) whose unprivileged users run this Python."""
    require_root("sftd, the broker and xrdp in a private namespace")
    for tool, package in (("useradd", "passwd"), ("passwd", "passwd"), ("kill", "procps")):
        require_program(tool, package)
    with private_system(tmp_path, cwd=REPOSITORY, private_run=True, share_python=True) as private:
        yield private


@asynccontextmanager
async def windows_like(
    world: World, system: PrivateSystem, tmp_path: Path, open_dir: Path
) -> AsyncIterator[WindowsLike]:
    """Grant project win to bob; start xrdp and sftd (enrolling win-1) in `system`."""
    await world.platform.grant_project(world.admin_token, TEAM, "win", "win-ops", members=["bob"])
    token, _ = await world.platform.enrollment_token(
        world.admin_token, f"teams/{TEAM}/projects/win", "rdp test"
    )
    # Enrollment on Linux certifies sshd's host keys; sshd itself is not needed here.
    host_key = tmp_path / "win-1_host_key"
    write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    sshd_config = tmp_path / "win-1_sshd_config"
    sshd_config.write_text(f"HostKey {host_key}\n")
    (tmp_path / "win-1.token").write_text(token + "\n")
    broker_port = free_port()
    with running_xrdp(system, tmp_path) as xrdp:
        settings = {
            "InitialURL": f"https://{world.platform.address}",
            "CanonicalName": "win-1",
            "AccessAddress": "127.0.0.1",
            "StateDir": str(open_dir / "state"),
            "EnrollmentTokenFile": str(tmp_path / "win-1.token"),
            "SSHDConfigFile": str(sshd_config),
            "ManageAccounts": True,
            "ManageSSHD": False,
            "Broker": True,
            "BrokerPort": broker_port,
            "BrokerListenAddress": "127.0.0.1",
            "RDPTarget": xrdp.address,
            "SessionGracePeriod": GRACE_SECONDS,
            "LogLevel": "INFO",
        }
        conf = tmp_path / "sftd.yaml"
        conf.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
        log = tmp_path / "sftd.log"
        sftd = system.start([str(SFTD), "--conf", str(conf)], log=log)
        try:
            server = WindowsLike(system, xrdp, conf, log, broker_port)
            certificate = open_dir / "state" / "broker" / CERTIFICATE_FILE
            await _until(certificate.is_file, "the broker's certificate", log)
            await _until(lambda: _running(system, conf), "the broker to run", log)
            locked = "bob's locked account"
            await _until(lambda: _password_status(system, "bob") == "L", locked, log)
            yield server
        finally:
            stopped = await asyncio.to_thread(system.stop, sftd, timeout_seconds=20.0)
        text = log.read_text(errors="replace")
        assert stopped == 0, text
        assert "Traceback" not in text, text


async def _login(server: WindowsLike, user: str, password: str, address: str | None = None) -> bool:
    """Log in with FreeRDP (through `address`, default xrdp's own port); sesman's verdict."""
    result = await asyncio.to_thread(server.xrdp.rdp_login, user, password, address=address)
    return result.authenticated


async def test_the_one_time_password_logs_in_through_the_tunnel_and_dies_with_the_session(
    system: PrivateSystem, tmp_path: Path, open_dir: Path
) -> None:
    async with (
        ssh_world(tmp_path) as world,
        windows_like(world, system, tmp_path, open_dir) as server,
        holding(world.bob, "--no-launch", "-o", "json", "win-1") as running,
    ):
        connection = json.loads(await running.first_line())
        assert connection["username"] == "bob"
        password = connection["password"]
        assert _password_status(system, "bob") == "P"  # enabled for this grant only

        assert await _login(server, "bob", password, connection["address"])

        # The session ended (rdp_login waits for it); once the grace period has passed
        # with no tunnel open, the broker has sftd lock bob and forget the password.
        await _until(lambda: _password_status(system, "bob") == "L", "bob locked", server.log)
        assert not await _login(server, "bob", password)  # straight to xrdp: refused
        _, err = await running.interrupt()
    assert running.process.returncode == 0, err
    assert _password_status(system, "bob") == "L"


async def test_two_bastions_carry_the_session_and_ctrl_c_ends_the_grant(
    system: PrivateSystem, tmp_path: Path, open_dir: Path
) -> None:
    async with (
        ssh_world(tmp_path) as world,
        windows_like(world, system, tmp_path, open_dir) as server,
    ):
        hops = [await world.enroll_server(name, "edge") for name in ("hop-1", "hop-2")]
        marks = [hop.sshd.log_mark() for hop in hops]
        args = ("--via", "hop-1", "--via", "hop-2", "--no-launch", "-o", "json", "win-1")
        async with holding(world.bob, *args) as running:
            connection = json.loads(await running.first_line())
            assert await _login(server, "bob", connection["password"], connection["address"])
            _, err = await running.interrupt()
        assert running.process.returncode == 0, err
        for hop, mark in zip(hops, marks, strict=True):
            hop.sshd.wait_for_log(r"Accepted publickey for bob .*ED25519-CERT", since=mark)
        # Ctrl-C released the grant: bob is locked without waiting for the grace period
        # to matter (ReleaseAccess disables once the last tunnel is closed).
        await _until(lambda: _password_status(system, "bob") == "L", "bob locked", server.log)
        assert not await _login(server, "bob", connection["password"])


async def test_killing_the_broker_mid_session_disables_the_account(
    system: PrivateSystem, tmp_path: Path, open_dir: Path
) -> None:
    async with (
        ssh_world(tmp_path) as world,
        windows_like(world, system, tmp_path, open_dir) as server,
        holding(world.bob, "--no-launch", "-o", "json", "win-1") as running,
    ):
        connection = json.loads(await running.first_line())
        # A tunnel is open (the RDP client is connected) when the broker dies.
        host, _, port = connection["address"].rpartition(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"\x03\x00\x00\x13")  # the start of an RDP connection request
        await writer.drain()
        assert _password_status(system, "bob") == "P"
        (broker,) = _broker_pids(server.log)
        system.run(["kill", "-9", str(broker)])
        await _until(lambda: _password_status(system, "bob") == "L", "bob locked", server.log)
        assert not await _login(server, "bob", connection["password"])
        writer.close()
        await _until(lambda: _running(system, server.conf), "a new broker", server.log)
        await running.interrupt()
