"""The whole access flow through the real platform, on SQLite and PostgreSQL.

A team admin sets up a project, a group, a grant and two users; invites them and they
enroll devices; an agent enrolls a server with an enrollment token; the granted user
lists it, gets an SSH certificate that a real sshd (trusting the project's user CA,
serving the host certificate the platform issued) accepts, and an X.509 client
certificate that chains to the project's CA. The user without a grant sees no server
and is refused credentials. Every step is in the audit trail, and the chain verifies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.ca.ssh_signer import ssh_fingerprint
from sft.auth.v1 import (
    access_pb2,
    access_service_pb2,
    access_service_pb2_grpc,
    audit_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    enrollment_code_service_pb2,
    enrollment_code_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    project_service_pb2,
    project_service_pb2_grpc,
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from tests.support.platform import Platform, key_assertion, public_key_line, running_platform
from tests.support.sshd import run_ssh, run_sshd, write_private_key

pytestmark = pytest.mark.e2e

TEAM = "acme"
PROJECT = f"teams/{TEAM}/projects/web"


FACTS = agent_pb2.ServerFacts(
    hostname="web-1",
    os=server_pb2.OPERATING_SYSTEM_LINUX,
    addresses=["127.0.0.1"],
    access_address="127.0.0.1",
    ssh_port=22,
    broker_port=4421,
    agent_version="test",
)


@pytest.fixture
async def platform(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(database_url, tmp_path) as running:
        await running.create_team(TEAM, "alice")
        yield running


@dataclass
class Agent:
    """A test agent: its key, its host key on disk, and what enrollment returned."""

    key: ed25519.Ed25519PrivateKey
    host_key_path: Path
    reply: agent_service_pb2.EnrollServerResponse

    @property
    def server(self) -> str:
        return str(self.reply.credential.subject)

    def assertion(self) -> str:
        return key_assertion(self.key, self.server, ssh_fingerprint(self.key))


async def _invite(platform: Platform, admin_token: str, name: str) -> str:
    """Create user `name` and return a bearer token from their newly enrolled device."""
    users = platform.stub(user_service_pb2_grpc.UserServiceStub, admin_token)
    await users.CreateUser(
        user_service_pb2.CreateUserRequest(
            parent=f"teams/{TEAM}", user_id=name, user=user_pb2.User(display_name=name.title())
        )
    )
    codes = platform.stub(enrollment_code_service_pb2_grpc.EnrollmentCodeServiceStub, admin_token)
    issued = await codes.CreateEnrollmentCode(
        enrollment_code_service_pb2.CreateEnrollmentCodeRequest(parent=f"teams/{TEAM}/users/{name}")
    )
    device = await platform.enroll(TEAM, name, code=issued.code)
    return await platform.token(device)


async def _enroll_agent(platform: Platform, admin: str, tmp_path: Path) -> Agent:
    token, _ = await platform.enrollment_token(admin, PROJECT, "web fleet")
    assert token.startswith("sftt1_")
    key = ed25519.Ed25519PrivateKey.generate()
    host_key_path = tmp_path / "ssh_host_ed25519_key"
    host_public = write_private_key(host_key_path, ed25519.Ed25519PrivateKey.generate())
    agents = platform.stub(agent_service_pb2_grpc.AgentServiceStub)
    reply = await agents.EnrollServer(
        agent_service_pb2.EnrollServerRequest(
            enrollment_token=token,
            agent_public_key=public_key_line(key),
            host_public_keys=[host_public],
            facts=FACTS,
        )
    )
    return Agent(key, host_key_path, reply)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def _client_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_granted_user_reaches_an_enrolled_server_and_the_other_does_not(
    platform: Platform, tmp_path: Path
) -> None:
    admin = await platform.login(TEAM, "alice")
    bob = await _invite(platform, admin, "bob")
    carol = await _invite(platform, admin, "carol")
    await platform.grant_project(admin, TEAM, "web", "ops", members=["bob"])
    agent = await _enroll_agent(platform, admin, tmp_path)
    assert agent.server.startswith(f"{PROJECT}/servers/")
    assert agent.reply.host_certificates, "enrollment returns host certificates"

    # The agent proves its key for a token, heartbeats, and is told bob's account.
    minted = await platform.stub(token_service_pb2_grpc.TokenServiceStub).CreateAccessToken(
        token_service_pb2.CreateAccessTokenRequest(assertion=agent.assertion())
    )
    agent_api = platform.stub(agent_service_pb2_grpc.AgentServiceStub, minted.access_token)
    await agent_api.Heartbeat(agent_service_pb2.HeartbeatRequest(facts=FACTS))
    stream = agent_api.WatchAccounts(agent_service_pb2.WatchAccountsRequest())
    snapshot = await asyncio.wait_for(stream.read(), timeout=10)
    stream.cancel()
    assert [account.name for account in snapshot.accounts] == ["bob"]
    assert snapshot.accounts[0].uid >= 60001

    # bob sees the server, resolves it by name, and gets an SSH certificate.
    bob_servers = platform.stub(server_service_pb2_grpc.ServerServiceStub, bob)
    listed = await bob_servers.ListServers(
        server_service_pb2.ListServersRequest(parent=f"teams/{TEAM}")
    )
    assert [s.canonical_name for s in listed.servers] == ["web-1"]
    resolved = await bob_servers.ResolveServer(
        server_service_pb2.ResolveServerRequest(parent=f"teams/{TEAM}", query="web-1")
    )
    assert resolved.server.name == agent.server
    user_key = ed25519.Ed25519PrivateKey.generate()
    user_key_path = tmp_path / "bob_key"
    write_private_key(user_key_path, user_key)
    access = platform.stub(access_service_pb2_grpc.AccessServiceStub, bob)
    ssh_credential = await access.IssueCredentials(
        access_service_pb2.IssueCredentialsRequest(
            server=agent.server,
            kind=access_pb2.CREDENTIAL_KIND_SSH,
            ssh_public_key=public_key_line(user_key),
        )
    )
    assert ssh_credential.account_name == "bob"
    connection = ssh_credential.connection
    assert connection.address == "127.0.0.1"
    assert "@cert-authority" in connection.known_hosts
    (tmp_path / "bob_key-cert.pub").write_text(ssh_credential.certificate + "\n")

    # A real sshd that trusts the project's user CA and serves the platform's host
    # certificate lets bob in as bob; ssh checks the host against the project's host CA.
    authorities = await platform.stub(
        ca_service_pb2_grpc.CertificateAuthorityServiceStub
    ).GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project=PROJECT))
    with run_sshd(
        tmp_path,
        users=["bob"],
        trusted_user_ca_keys=authorities.trusted_user_ca_keys,
        host_key_path=agent.host_key_path,
        host_certificate=agent.reply.host_certificates[0].certificate,
    ) as sshd:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(connection.known_hosts)
        result = await asyncio.to_thread(
            run_ssh, sshd, "bob", user_key_path, known_hosts=known_hosts
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bob"

    # And an X.509 client certificate, chaining to the project's CA, naming bob.
    _, csr = _client_csr()
    x509_credential = await access.IssueCredentials(
        access_service_pb2.IssueCredentialsRequest(
            server=agent.server, kind=access_pb2.CREDENTIAL_KIND_X509, csr_pem=csr
        )
    )
    leaf = x509.load_pem_x509_certificate(x509_credential.certificate.encode())
    ca_cert = x509.load_pem_x509_certificates(connection.x509_ca_bundle_pem.encode())[0]
    leaf.verify_directly_issued_by(ca_cert)
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert f"sft://{TEAM}/web/users/bob" in uris
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages

    # carol has no grant: no servers, no resolution, no credentials.
    carol_servers = platform.stub(server_service_pb2_grpc.ServerServiceStub, carol)
    assert not (
        await carol_servers.ListServers(
            server_service_pb2.ListServersRequest(parent=f"teams/{TEAM}")
        )
    ).servers
    unresolved = await _refused(
        carol_servers.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=f"teams/{TEAM}", query="web-1")
        )
    )
    assert unresolved.code() == grpc.StatusCode.NOT_FOUND
    denied = await _refused(
        platform.stub(access_service_pb2_grpc.AccessServiceStub, carol).IssueCredentials(
            access_service_pb2.IssueCredentialsRequest(
                server=agent.server,
                kind=access_pb2.CREDENTIAL_KIND_SSH,
                ssh_public_key=public_key_line(ed25519.Ed25519PrivateKey.generate()),
            )
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "web" in (denied.details() or "")

    # A member reaching for an admin verb is refused, and the refusal is audited.
    refused_admin = await _refused(
        platform.stub(project_service_pb2_grpc.ProjectServiceStub, carol).CreateProject(
            project_service_pb2.CreateProjectRequest(parent=f"teams/{TEAM}", project_id="mine")
        )
    )
    assert refused_admin.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "team admin" in (refused_admin.details() or "")

    # The admin sees it all in the audit trail, and the chain is intact.
    audit = platform.stub(audit_service_pb2_grpc.AuditServiceStub, admin)
    events = await audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(parent=f"teams/{TEAM}", page_size=200)
    )
    actions = [event.action for event in events.events]
    for expected in ("project.create", "grant.create", "server.enroll", "credentials.issue"):
        assert expected in actions, actions
    denial = next(event for event in events.events if event.action == "rpc.create_project")
    assert denial.actor == f"teams/{TEAM}/users/carol"
    assert denial.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
    assert "team admin" in denial.details["reason"]
    verified = await audit.VerifyAuditChain(
        audit_service_pb2.VerifyAuditChainRequest(parent=f"teams/{TEAM}")
    )
    assert verified.ok, verified.first_break
    assert verified.checked_events == len(events.events)
