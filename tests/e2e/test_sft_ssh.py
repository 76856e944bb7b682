"""`sft ssh`, `sft ssh-config` + plain ssh/scp, and `sft proxycommand` against real sshds.

A platform (in-process, SQLite) with project `web` (server web-1) and project `edge`
(bastion-1, bastion-2); bob is granted both, carol nothing. Each server is a real sshd
in its own namespace that trusts its project's user CA and serves the host
certificate the platform issued at enrollment. bob enrolls with the real `sft` and
reaches web-1 directly, through two bastions, and with plain ssh and scp through the
block `sft ssh-config` prints. The cache is checked from the outside: one certificate
per project even when ten `sft ssh` start at once, renewal before expiry, and a server
answering with another project's host certificate is refused.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.database import default_sqlite_url
from services.ca.ssh_signer import ssh_fingerprint
from sft.auth.v1 import (
    audit_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    project_pb2,
    server_pb2,
)
from tests.support.cli import Person
from tests.support.platform import Platform, key_assertion, public_key_line, running_platform
from tests.support.sshd import SSHDServer, run_sshd, write_private_key

pytestmark = pytest.mark.e2e

TEAM = "acme"


@dataclass
class Server:
    """An enrolled server and the real sshd standing in for it."""

    name: str
    project: str
    resource: str
    sshd: SSHDServer


@contextmanager
def _sshd(tmp_path: Path, ca_keys: str, host_key: Path, certificate: str) -> Iterator[SSHDServer]:
    with run_sshd(
        tmp_path,
        users=["bob", "carol"],
        trusted_user_ca_keys=ca_keys,
        host_key_path=host_key,
        host_certificate=certificate,
    ) as server:
        yield server


class World:
    """The platform, the servers, and the people."""

    def __init__(self, platform: Platform, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.platform = platform
        self.tmp_path = tmp_path
        self.stack = stack
        self.admin_token = ""
        self.servers: dict[str, Server] = {}
        self.bob = Person(tmp_path / "bob-home")
        self.carol = Person(tmp_path / "carol-home")

    async def enroll_server(self, name: str, project: str, *, hostname: str = "") -> Server:
        """Enroll `name` in `project` the way sftd does, start its sshd, report its port."""
        token, _ = await self.platform.enrollment_token(
            self.admin_token, f"teams/{TEAM}/projects/{project}", name
        )
        agent_key = ed25519.Ed25519PrivateKey.generate()
        host_key = self.tmp_path / f"{name}-{project}_host_key"
        host_public = write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
        facts = agent_pb2.ServerFacts(
            hostname=hostname or name,
            canonical_name=name,
            os=server_pb2.OPERATING_SYSTEM_LINUX,
            addresses=["127.0.0.1"],
            access_address="127.0.0.1",
            ssh_port=22,
            agent_version="test",
        )
        agents = self.platform.stub(agent_service_pb2_grpc.AgentServiceStub)
        reply = await agents.EnrollServer(
            agent_service_pb2.EnrollServerRequest(
                enrollment_token=token,
                agent_public_key=public_key_line(agent_key),
                host_public_keys=[host_public],
                facts=facts,
            )
        )
        authorities = await self.platform.as_service(
            ca_service_pb2_grpc.CertificateAuthorityServiceStub, "inventory"
        ).GetAuthorities(
            ca_service_pb2.GetAuthoritiesRequest(project=f"teams/{TEAM}/projects/{project}")
        )
        sshd = self.stack.enter_context(
            _sshd(
                self.tmp_path,
                authorities.trusted_user_ca_keys,
                host_key,
                reply.host_certificates[0].certificate,
            )
        )
        # The agent reports the port sshd really listens on.
        resource = str(reply.credential.subject)
        minted = await self.platform.stub(
            token_service_pb2_grpc.TokenServiceStub
        ).CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(
                assertion=key_assertion(agent_key, resource, ssh_fingerprint(agent_key))
            )
        )
        facts.ssh_port = sshd.port
        await self.platform.stub(
            agent_service_pb2_grpc.AgentServiceStub, minted.access_token
        ).Heartbeat(agent_service_pb2.HeartbeatRequest(facts=facts))
        server = Server(name, project, resource, sshd)
        self.servers[name] = server
        return server

    async def issuances(self) -> int:
        """Return how many credentials the platform has issued (from the audit trail)."""
        audit = self.platform.stub(audit_service_pb2_grpc.AuditServiceStub, self.admin_token)
        reply = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(
                parent=f"teams/{TEAM}",
                action="credentials.issue",
                outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
                page_size=1000,
            )
        )
        return len(reply.events)

    def ssh_dir(self, person: Person) -> Path:
        """Return a person's SSH cache directory."""
        return person.home / "teams" / TEAM / "ssh"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with AsyncExitStack() as stack:
        platform = await stack.enter_async_context(
            running_platform(default_sqlite_url(tmp_path), tmp_path)
        )
        await platform.create_team(TEAM, "ada", members=["bob", "carol"])
        built = World(platform, tmp_path, stack)
        built.admin_token = await platform.login(TEAM, "ada")
        await platform.grant_project(built.admin_token, TEAM, "web", "web-ops", members=["bob"])
        # Bastions forward connections: their project's certificates must permit it.
        await platform.grant_project(
            built.admin_token,
            TEAM,
            "edge",
            "edge-ops",
            members=["bob"],
            settings=project_pb2.Project(permit_port_forwarding=True),
        )
        url = f"https://{platform.address}"
        for person, name in ((built.bob, "bob"), (built.carol, "carol")):
            code = await platform.enrollment_code(TEAM, name)
            enrolled = await person.sft("enroll", "--url", url, "--team", TEAM, "--code", code)
            assert enrolled.returncode == 0, enrolled.stderr
        await built.enroll_server("web-1", "web")
        yield built


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sft_ssh_runs_a_command_as_the_platform_account_and_caches_the_certificate(
    world: World,
) -> None:
    bob = world.bob
    ran = await bob.sft("ssh", "web-1", "--", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    ssh_dir = world.ssh_dir(bob)
    for private in (ssh_dir / "id_ed25519", ssh_dir / "credentials" / "web-cert.pub"):
        assert _mode(private) == 0o600, private
    assert _mode(ssh_dir) == 0o700
    assert await world.issuances() == 1

    # Warm: no new certificate; stdin, stdout and the exit status are ssh's own.
    echoed = await bob.sft("ssh", "web-1", "--", "cat", stdin=b"hello through sft\n")
    assert echoed.stdout == "hello through sft\n"
    status = await bob.sft("ssh", "web-1", "--", "echo oops >&2; exit 7")
    assert status.returncode == 7
    assert "oops" in status.stderr
    assert await world.issuances() == 1

    # A certificate about to expire is replaced before ssh ever sees it.
    record_file = ssh_dir / "credentials" / "web.json"
    record = json.loads(record_file.read_text())
    old_serial = record["serial"]
    record["valid_before"] = time.time() + 10
    record_file.write_text(json.dumps(record))
    renewed = await bob.sft("ssh", "web-1", "--", "id", "-un")
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.strip() == "bob"
    assert json.loads(record_file.read_text())["serial"] != old_serial
    assert await world.issuances() == 2

    # `sft logout` forgets the certificates (the key pair stays).
    assert (await bob.sft("logout")).returncode == 0
    assert not (ssh_dir / "credentials").exists()
    assert (ssh_dir / "id_ed25519").exists()


async def test_ten_concurrent_cold_sft_ssh_sign_one_certificate(world: World) -> None:
    runs = await asyncio.gather(*(world.bob.sft("ssh", "web-1", "--", "true") for _ in range(10)))
    assert [ran.returncode for ran in runs] == [0] * 10, [ran.stderr for ran in runs]
    assert await world.issuances() == 1


async def test_through_two_bastions_each_with_its_own_certificate(world: World) -> None:
    first = await world.enroll_server("bastion-1", "edge")
    second = await world.enroll_server("bastion-2", "edge")
    marks = {server.name: server.sshd.log_mark() for server in (first, second)}
    ran = await world.bob.sft(
        "ssh", "--via", "bastion-1", "--via", "bastion-2", "web-1", "--", "id", "-un"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    for server in (first, second):
        server.sshd.wait_for_log(
            r"Accepted publickey for bob .*ED25519-CERT", since=marks[server.name]
        )
    ssh_dir = world.ssh_dir(world.bob)
    assert (ssh_dir / "credentials" / "edge-cert.pub").exists()
    assert (ssh_dir / "credentials" / "web-cert.pub").exists()


async def test_plain_ssh_and_scp_through_the_ssh_config_block(world: World) -> None:
    bob = world.bob
    block = await bob.sft("ssh-config")
    assert block.returncode == 0, block.stderr
    assert 'Match exec "' in block.stdout and "proxycommand" in block.stdout
    config = world.tmp_path / "bob_ssh_config"
    config.write_text(block.stdout)
    ran = await bob.run("ssh", "-F", str(config), "web-1", "id", "-un")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "bob"
    copied = world.tmp_path / "copied-hostname"
    scp = await bob.run("scp", "-F", str(config), "web-1:/etc/hostname", str(copied))
    assert scp.returncode == 0, scp.stderr
    assert copied.read_text().strip()
    # A name sft does not know is left to ssh's own configuration.
    unknown = await bob.run(
        "ssh", "-F", str(config), "-o", "ConnectTimeout=3", "-o", "BatchMode=yes",
        "no-such-server.invalid", "true",
    )  # fmt: skip
    assert unknown.returncode == 255
    assert "proxycommand" not in unknown.stderr


async def test_a_server_with_another_projects_host_certificate_is_refused(world: World) -> None:
    impostor = await world.enroll_server("web-1-impostor", "edge", hostname="web-1")
    bob = world.bob
    assert (await bob.sft("ssh", "web-1", "--", "true")).returncode == 0
    # web-1's address now leads to a server whose host certificate another project signed.
    ssh_dir = world.ssh_dir(bob)
    (record_file,) = (ssh_dir / "servers").glob("*.json")
    record = json.loads(record_file.read_text())
    record["ssh_port"] = impostor.sshd.port
    record_file.write_text(json.dumps(record))
    ran = await bob.sft("ssh", "web-1", "--", "true")
    assert ran.returncode == 255
    assert "Host key verification failed" in ran.stderr


async def test_no_grant_gets_one_line_and_no_certificate(world: World) -> None:
    carol = world.carol
    refused = await carol.sft("ssh", "web-1", "--", "true")
    message = refused.one_error_line()
    assert "web-1" in message
    by_resource = await carol.sft("ssh", world.servers["web-1"].resource, "--", "true")
    assert "no grant on project 'web'" in by_resource.one_error_line()
    credentials = world.ssh_dir(carol) / "credentials"
    assert not credentials.exists() or not any(credentials.iterdir())
    assert await world.issuances() == 0


async def test_bad_command_lines_are_usage_errors(world: World) -> None:
    for args, words in (
        (("ssh",), "name the server"),
        (("ssh", "-J", "b1", "web-1"), "--via"),
        (("ssh", "-p", "http", "web-1"), "TCP port"),
        (("ssh", "--bogus", "web-1"), "unknown option"),
    ):
        ran = await world.bob.sft(*args)
        assert ran.returncode == 2, (args, ran.stderr)
        assert words in ran.stderr and "Traceback" not in ran.stderr
    assert not (world.ssh_dir(world.bob) / "credentials").exists()
