"""A platform with servers behind real sshds and people using the real `sft`: for sft ssh.

`ssh_world(tmp_path)` starts a platform (in-process, SQLite) with team acme, admin ada,
project `web` granted to bob (server web-1, a real sshd) and project `edge` (port
forwarding allowed, for bastions) granted to bob; carol has no grant. bob and carol
enroll with the real `sft enroll`. Used by tests/e2e/test_sft_ssh.py and the sft_ssh
benchmark.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

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

__all__ = ["TEAM", "Server", "World", "ssh_world"]

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


@asynccontextmanager
async def ssh_world(tmp_path: Path) -> AsyncIterator[World]:
    """Start the world described in the module docstring; stop it all afterwards."""
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
