"""The headline agent test: a real `sftd` wires a real sshd to the platform's CAs, a
granted user logs in with a platform certificate, and is refused once the grant is gone.

sftd (ManageAccounts and ManageSSHD on) and sshd run as root in one private namespace
(tests/support/namespace.py: its own /etc, /home and /run), so the accounts sftd
creates are the ones sshd sees and its SIGHUP reaches that sshd alone. The platform
runs in this process; the real ssh client checks the host against the project's host
CA (`@cert-authority` known_hosts, StrictHostKeyChecking yes).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.cli import host_trust_sink
from agent.config import AgentConfig
from agent.sshd import SSHDTrust
from agent.sshd_config import MARKER, drop_in_path
from agent.state import AgentState
from runtime.database import default_sqlite_url
from sft.auth.v1 import access_pb2, access_service_pb2, access_service_pb2_grpc
from sft.inventory.v1 import group_service_pb2, group_service_pb2_grpc
from tests.support.namespace import PrivateSystem, private_system, require_root
from tests.support.platform import Platform, public_key_line, running_platform
from tests.support.ports import free_port
from tests.support.real_software import require, require_program
from tests.support.sshd import SSHD, SSHDServer, run_ssh, write_private_key

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
TEAM = "acme"
PROJECT = f"teams/{TEAM}/projects/web"
GROUP = f"teams/{TEAM}/groups/ops"
WAIT_SECONDS = 30.0
#: The real sftd, as installed by the package's entry point.
SFTD = Path(sys.executable).parent / "sftd"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[PrivateSystem]:
    """A private namespace with its own /etc, /home and /run (sshd's /run/sshd in it)."""
    require_root("sftd and sshd in a private namespace")
    require("OpenSSH server (sshd)", str(SSHD) if Path(SSHD).is_file() else None, "make deps")
    for tool, package in (("ssh", "openssh-client"), ("useradd", "passwd")):
        require_program(tool, package)
    with private_system(tmp_path, cwd=REPOSITORY, private_run=True) as private:
        yield private


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform on SQLite with team acme (admin alice)."""
    (tmp_path / "db").mkdir()
    (tmp_path / "platform").mkdir()
    async with running_platform(
        default_sqlite_url(tmp_path / "db"), tmp_path / "platform"
    ) as running:
        await running.create_team(TEAM, "alice", members=["bob"])
        yield running


def _sshd_config(etc: Path, port: int, host_key: Path, pid_file: Path) -> str:
    """Return a Debian-shaped sshd_config for a certificate-only loopback server."""
    return (
        "# The test's sshd_config; like Debian's, it includes sshd_config.d/*.conf first.\n"
        f"Include {etc}/sshd_config.d/*.conf\n"
        "ListenAddress 127.0.0.1\n"
        f"Port {port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {pid_file}\n"
        "AuthorizedKeysFile none\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "PermitRootLogin no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "PrintLastLog no\n"
        "LogLevel VERBOSE\n"
        "MaxStartups 200\n"
    )


async def _until(condition: Callable[[], bool], what: str, *logs: Path) -> None:
    """Wait (at most WAIT_SECONDS) for `condition`, checked in a thread; fail showing `logs`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            shown = "\n".join(f"--- {log}:\n{log.read_text(errors='replace')}" for log in logs)
            pytest.fail(f"timed out after {WAIT_SECONDS}s waiting for {what}\n{shown}")
        await asyncio.sleep(0.1)


def _lines(log: Path, pattern: str) -> list[str]:
    """Return the lines of `log` matching regex `pattern`."""
    wanted = re.compile(pattern)
    return [line for line in log.read_text(errors="replace").splitlines() if wanted.search(line)]


def _shadow_field(system: PrivateSystem, name: str) -> str | None:
    """Return `name`'s password field in the namespace's /etc/shadow (None: no account)."""
    for line in system.read("/etc/shadow").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1]
    return None


async def test_sftd_wires_sshd_so_a_granted_user_logs_in_and_is_refused_once_ungranted(
    system: PrivateSystem, platform: Platform, tmp_path: Path
) -> None:
    wired = host_trust_sink(AgentConfig.model_validate({"ManageSSHD": True}))
    assert isinstance(wired, SSHDTrust), (
        "agent/cli.py: host_trust_sink must return agent.sshd.SSHDTrust when ManageSSHD is true"
    )
    admin = await platform.login(TEAM, "alice")
    await platform.grant_project(admin, TEAM, "web", "ops", members=["bob"])
    token, _ = await platform.enrollment_token(admin, PROJECT, "sshd test")

    etc = tmp_path / "etc-ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    host_key = etc / "ssh_host_ed25519_key"
    host_public = write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    sshd_config = etc / "sshd_config"
    sshd_log = tmp_path / "sshd.log"
    port = free_port()
    sshd_config.write_text(_sshd_config(etc, port, host_key, tmp_path / "sshd.pid"))
    original = sshd_config.read_text()
    state_dir = tmp_path / "state"
    (tmp_path / "enrollment.token").write_text(token + "\n")
    conf = tmp_path / "sftd.yaml"
    settings = {
        "InitialURL": f"https://{platform.address}",
        "CanonicalName": "web-1",
        "AccessAddress": "127.0.0.1",
        "StateDir": str(state_dir),
        "EnrollmentTokenFile": str(tmp_path / "enrollment.token"),
        "SSHDConfigFile": str(sshd_config),
        "TrustedUserCAKeysFile": str(tmp_path / "sftd-ca" / "ssh_ca.pub"),
        "SSHDPort": port,
        "ManageAccounts": True,
        "ManageSSHD": True,
        "LogLevel": "INFO",
    }
    conf.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    sftd_log = tmp_path / "sftd.log"

    # sshd first, serving no certificate and trusting no CA: sftd must change that.
    sshd = system.start([SSHD, "-D", "-e", "-f", str(sshd_config)], log=sshd_log)
    sftd = None
    try:
        listening = f"Server listening on 127.0.0.1 port {port}"
        await _until(lambda: bool(_lines(sshd_log, listening)), "sshd to listen", sshd_log)
        sftd = system.start([str(SFTD), "--conf", str(conf)], log=sftd_log)

        # sftd enrolls, creates bob's account, installs the CA keys, the host
        # certificate and the Include, and sends sshd a SIGHUP; sshd listens again.
        await _until(
            lambda: _shadow_field(system, "bob") == "*", "bob's account", sftd_log, sshd_log
        )
        await _until(
            lambda: len(_lines(sshd_log, listening)) >= 2,
            "sshd to reload",
            sftd_log,
            sshd_log,
        )
        assert _lines(sshd_log, "Received SIGHUP; restarting")
        assert sshd_config.read_text() == (
            f"{MARKER}\nInclude {drop_in_path(sshd_config)}\n{original}"
        )
        assert (etc / "ssh_host_ed25519_key-cert.pub").is_file()
        status = json.loads((state_dir / AgentState.STATUS).read_text())
        assert status["problems"] == []
        identity = AgentState(state_dir).read_identity()
        assert identity is not None

        # bob gets a certificate from the platform and logs in as his platform account.
        bob = await platform.login(TEAM, "bob")
        user_key_path = tmp_path / "bob_key"
        write_private_key(user_key_path, user_key := ed25519.Ed25519PrivateKey.generate())
        access = platform.stub(access_service_pb2_grpc.AccessServiceStub, bob)
        credential = await access.IssueCredentials(
            access_service_pb2.IssueCredentialsRequest(
                server=identity.server,
                kind=access_pb2.CREDENTIAL_KIND_SSH,
                ssh_public_key=public_key_line(user_key),
            )
        )
        (tmp_path / "bob_key-cert.pub").write_text(credential.certificate + "\n")
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(credential.connection.known_hosts)
        assert known_hosts.read_text().startswith("@cert-authority ")
        server = SSHDServer(
            port=port,
            pid=sshd.pid,
            users=("bob",),
            config_path=sshd_config,
            host_key_path=host_key,
            host_public_key=host_public,
            host_certificate_path=etc / "ssh_host_ed25519_key-cert.pub",
            trusted_user_ca_keys=tmp_path / "sftd-ca" / "ssh_ca.pub",
            log_path=sshd_log,
        )
        granted = await asyncio.to_thread(
            functools.partial(
                run_ssh,
                server,
                credential.account_name,
                user_key_path,
                known_hosts=known_hosts,
                extra_options=("LogLevel=DEBUG1",),
            )
        )
        assert granted.returncode == 0, granted.stderr
        assert granted.stdout.strip() == credential.account_name == "bob"
        # The host proved itself with the certificate sftd installed, not a bare key.
        assert "matches the ED25519-CERT host certificate" in granted.stderr, granted.stderr

        # bob leaves the group: sftd locks the account, and the same certificate is refused.
        mark = server.log_mark()
        groups = platform.stub(group_service_pb2_grpc.GroupServiceStub, admin)
        await groups.RemoveGroupMember(
            group_service_pb2.RemoveGroupMemberRequest(group=GROUP, user=f"teams/{TEAM}/users/bob")
        )
        await _until(lambda: _shadow_field(system, "bob") == "!*", "bob's account locked", sftd_log)
        refused = await asyncio.to_thread(
            run_ssh, server, "bob", user_key_path, known_hosts=known_hosts
        )
        assert refused.returncode == 255
        assert "Permission denied" in refused.stderr
        await asyncio.to_thread(server.wait_for_log, "User bob not allowed", since=mark)
    finally:
        stopped = await asyncio.to_thread(system.stop, sftd) if sftd is not None else None
        await asyncio.to_thread(system.stop, sshd)
    log = sftd_log.read_text(errors="replace")
    assert stopped == 0, log
    assert "Traceback" not in log, log
