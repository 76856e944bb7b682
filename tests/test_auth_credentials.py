"""IssueCredentials and agent tokens through the real platform, on SQLite and PostgreSQL.

Team acme has project web (certificates 300 s by default, 900 s at most, port
forwarding on) with server web-1, and project nordp (RDP off) with server win-1; group
ops (bob, dave) is granted both. carol has no grant. Agents prove their keys for tokens;
people and service users get SSH and X.509 credentials the inventory allows and the CA
signs, with what the client needs to check the server; every outcome is audited.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from services.auth.device_keys import parse_device_key
from services.auth.models import AuditEventRow
from sft.auth.v1 import (
    access_pb2,
    access_service_pb2,
    access_service_pb2_grpc,
    identity_pb2,
    service_user_pb2,
    service_user_service_pb2,
    service_user_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    project_pb2,
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

TEAM = "acme"
PARENT = f"teams/{TEAM}"
WEB = f"{PARENT}/projects/web"
NORDP = f"{PARENT}/projects/nordp"
Code = grpc.StatusCode


@dataclass
class Agent:
    """An enrolled server's agent key and its server's resource name."""

    key: ed25519.Ed25519PrivateKey
    server: str

    @property
    def fingerprint(self) -> str:
        return parse_device_key(public_key_line(self.key)).fingerprint

    def assertion(self, key: ed25519.Ed25519PrivateKey | None = None, **claims: Any) -> str:
        signer = key or self.key
        kid = parse_device_key(public_key_line(signer)).fingerprint
        return key_assertion(signer, self.server, kid, **claims)


@dataclass
class World:
    """The platform and the people and servers of team acme."""

    platform: Platform
    admin: str
    web: Agent
    win: Agent

    def access(self, token: str) -> access_service_pb2_grpc.AccessServiceStub:
        return self.platform.stub(access_service_pb2_grpc.AccessServiceStub, token)


def _facts(hostname: str, os: int) -> agent_pb2.ServerFacts:
    return agent_pb2.ServerFacts(
        hostname=hostname,
        alt_names=[f"{hostname}.example.com"],
        os=os,  # type: ignore[arg-type]
        addresses=["10.0.0.5", "127.0.0.1"],
        access_address="127.0.0.1",
        ssh_port=22,
        broker_port=4421,
        agent_version="test",
    )


async def _enroll_server(
    platform: Platform, admin: str, project: str, hostname: str, os: int
) -> Agent:
    tokens = platform.stub(enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub, admin)
    created = await tokens.CreateEnrollmentToken(
        enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
            parent=project, enrollment_token=enrollment_token_pb2.EnrollmentToken()
        )
    )
    key = ed25519.Ed25519PrivateKey.generate()
    reply = await platform.stub(agent_service_pb2_grpc.AgentServiceStub).EnrollServer(
        agent_service_pb2.EnrollServerRequest(
            enrollment_token=created.token,
            agent_public_key=public_key_line(key),
            host_public_keys=[public_key_line(ed25519.Ed25519PrivateKey.generate())],
            facts=_facts(hostname, os),
        )
    )
    return Agent(key, str(reply.server.name))


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    async with running_platform(database_url, tmp_path) as platform:
        await platform.create_team(TEAM, "alice")
        admin = await platform.login(TEAM, "alice")
        users = platform.stub(user_service_pb2_grpc.UserServiceStub, admin)
        for name in ("bob", "carol", "dave"):
            await users.CreateUser(
                user_service_pb2.CreateUserRequest(
                    parent=PARENT, user_id=name, user=user_pb2.User()
                )
            )
        projects = platform.stub(project_service_pb2_grpc.ProjectServiceStub, admin)
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                parent=PARENT,
                project_id="web",
                project=project_pb2.Project(
                    certificate_ttl_seconds=300,
                    certificate_max_ttl_seconds=900,
                    permit_port_forwarding=True,
                ),
            )
        )
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                parent=PARENT, project_id="nordp", project=project_pb2.Project(rdp_enabled=False)
            )
        )
        groups = platform.stub(group_service_pb2_grpc.GroupServiceStub, admin)
        await groups.CreateGroup(
            group_service_pb2.CreateGroupRequest(parent=PARENT, group_id="ops")
        )
        for name in ("bob", "dave"):
            await groups.AddGroupMember(
                group_service_pb2.AddGroupMemberRequest(
                    group=f"{PARENT}/groups/ops", user=f"{PARENT}/users/{name}"
                )
            )
        for project in (WEB, NORDP):
            await projects.CreateGrant(
                project_service_pb2.CreateGrantRequest(
                    parent=project,
                    grant=project_pb2.ProjectGrant(
                        group=f"{PARENT}/groups/ops", role=project_pb2.GRANT_ROLE_USER
                    ),
                )
            )
        web = await _enroll_server(platform, admin, WEB, "web-1", server_pb2.OPERATING_SYSTEM_LINUX)
        win = await _enroll_server(
            platform, admin, NORDP, "win-1", server_pb2.OPERATING_SYSTEM_WINDOWS
        )
        yield World(platform, admin, web, win)


def _ssh(server: str, **fields: Any) -> access_service_pb2.IssueCredentialsRequest:
    values: dict[str, Any] = {
        "server": server,
        "kind": access_pb2.CREDENTIAL_KIND_SSH,
        "ssh_public_key": public_key_line(ed25519.Ed25519PrivateKey.generate()),
    }
    values.update(fields)
    return access_service_pb2.IssueCredentialsRequest(**values)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _issue_events(platform: Platform) -> list[AuditEventRow]:
    async with platform.database.sessions() as session:
        return list(
            await session.scalars(
                select(AuditEventRow)
                .where(AuditEventRow.action == "credentials.issue")
                .order_by(AuditEventRow.sequence)
            )
        )


# --- agent tokens ------------------------------------------------------------------------


async def test_an_agent_key_buys_a_server_token(world: World) -> None:
    tokens = world.platform.stub(token_service_pb2_grpc.TokenServiceStub)
    minted = await tokens.CreateAccessToken(
        token_service_pb2.CreateAccessTokenRequest(assertion=world.web.assertion())
    )
    assert minted.identity.kind == identity_pb2.IDENTITY_KIND_SERVER
    assert minted.identity.server == world.web.server
    assert minted.identity.team == PARENT and not minted.identity.user
    agent = world.platform.stub(agent_service_pb2_grpc.AgentServiceStub, minted.access_token)
    await agent.Heartbeat(
        agent_service_pb2.HeartbeatRequest(facts=_facts("web-1", server_pb2.OPERATING_SYSTEM_LINUX))
    )
    # An agent token is no person's: member RPCs refuse it.
    error = await _refusal(
        world.access(minted.access_token).IssueCredentials(_ssh(world.web.server))
    )
    assert error.code() == Code.PERMISSION_DENIED


async def test_agent_assertions_with_the_wrong_key_or_replayed_are_refused(world: World) -> None:
    tokens = world.platform.stub(token_service_pb2_grpc.TokenServiceStub)
    stranger = ed25519.Ed25519PrivateKey.generate()
    for assertion, expected in (
        (world.web.assertion(key=stranger), "not the agent key"),
        (world.win.assertion(iss=world.web.server, sub=world.web.server), "not the agent key"),
        (
            world.web.assertion(
                iss=f"{WEB}/servers/0b7e8a4c-0000-4000-8000-000000000000",
                sub=f"{WEB}/servers/0b7e8a4c-0000-4000-8000-000000000000",
            ),
            "re-enroll",
        ),
        (world.web.assertion(iss="teams/acme/projects/web/servers/", sub="x"), "iss and sub"),
    ):
        error = await _refusal(
            tokens.CreateAccessToken(
                token_service_pb2.CreateAccessTokenRequest(assertion=assertion)
            )
        )
        assert error.code() == Code.UNAUTHENTICATED
        assert expected in (error.details() or ""), error.details()
    replayed = token_service_pb2.CreateAccessTokenRequest(assertion=world.web.assertion())
    await tokens.CreateAccessToken(replayed)
    error = await _refusal(tokens.CreateAccessToken(replayed))
    assert error.code() == Code.UNAUTHENTICATED
    assert "already used" in (error.details() or "")


async def test_a_deleted_server_must_re_enroll(world: World) -> None:
    servers = world.platform.stub(server_service_pb2_grpc.ServerServiceStub, world.admin)
    await servers.DeleteServer(server_service_pb2.DeleteServerRequest(name=world.web.server))
    tokens = world.platform.stub(token_service_pb2_grpc.TokenServiceStub)
    error = await _refusal(
        tokens.CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(assertion=world.web.assertion())
        )
    )
    assert error.code() == Code.UNAUTHENTICATED
    assert "re-enroll" in (error.details() or "")


# --- IssueCredentials ----------------------------------------------------------------------


async def test_a_granted_user_gets_an_ssh_certificate_and_how_to_check_the_server(
    world: World,
) -> None:
    bob = await world.platform.login(TEAM, "bob")
    reply = await world.access(bob).IssueCredentials(
        _ssh(world.web.server, source_addresses=["127.0.0.1/32"])
    )
    assert reply.kind == access_pb2.CREDENTIAL_KIND_SSH
    assert reply.account_name == "bob" and reply.serial > 0
    certificate = serialization.load_ssh_public_identity(reply.certificate.encode())
    assert isinstance(certificate, serialization.SSHCertificate)
    assert certificate.valid_principals == [b"bob"]
    assert certificate.valid_before - certificate.valid_after == 300 + 60  # default; backdated
    assert b"user=bob@acme" in certificate.key_id and b"device=" in certificate.key_id
    assert b"permit-pty" in certificate.extensions
    assert b"permit-port-forwarding" in certificate.extensions
    assert b"permit-agent-forwarding" not in certificate.extensions
    assert b"source-address" in certificate.critical_options
    lifetime = reply.valid_before.ToDatetime(dt.UTC) - reply.valid_after.ToDatetime(dt.UTC)
    assert lifetime == dt.timedelta(seconds=360)

    connection = reply.connection
    team, project, server_id = PARENT, WEB, world.web.server.rpartition("/")[2]
    assert (connection.server, connection.project) == (world.web.server, project)
    assert (connection.canonical_name, connection.hostname) == ("web-1", "web-1")
    assert (connection.address, connection.ssh_port, connection.broker_port) == (
        "127.0.0.1",
        22,
        4421,
    )
    assert connection.broker_uri == f"sft://acme/web/servers/{server_id}"
    assert "BEGIN CERTIFICATE" in connection.x509_ca_bundle_pem
    lines = connection.known_hosts.splitlines()
    assert lines and all(line.startswith("@cert-authority web-1,") for line in lines)
    patterns = lines[0].split()[1].split(",")
    assert {"web-1", "web-1.example.com", "127.0.0.1", "10.0.0.5", "[127.0.0.1]:*"} <= set(patterns)
    assert "*" not in patterns and team not in patterns

    (event,) = await _issue_events(world.platform)
    assert (event.outcome, event.actor, event.resource) == (
        "success",
        f"{PARENT}/users/bob",
        world.web.server,
    )
    assert event.details["serial"] == str(reply.serial)
    assert event.details["kind"] == "ssh" and event.details["account"] == "bob"
    assert event.details["device"].startswith(f"{PARENT}/users/bob/devices/")
    assert bob not in repr(event.details) and "ssh-ed25519" not in repr(event.details)


async def test_the_lifetime_follows_the_request_up_to_the_project_maximum(world: World) -> None:
    access = world.access(await world.platform.login(TEAM, "bob"))
    reply = await access.IssueCredentials(_ssh(world.web.server, ttl_seconds=900))
    lifetime = reply.valid_before.ToDatetime(dt.UTC) - reply.valid_after.ToDatetime(dt.UTC)
    assert lifetime == dt.timedelta(seconds=960)
    error = await _refusal(access.IssueCredentials(_ssh(world.web.server, ttl_seconds=901)))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "maximum of 900" in (error.details() or "")
    events = await _issue_events(world.platform)
    assert [e.outcome for e in events] == ["success", "failed"]
    assert "maximum of 900" in events[1].details["reason"]


async def test_an_x509_credential_names_the_user_and_the_one_broker(world: World) -> None:
    access = world.access(await world.platform.login(TEAM, "bob"))
    reply = await access.IssueCredentials(
        access_service_pb2.IssueCredentialsRequest(
            server=world.web.server, kind=access_pb2.CREDENTIAL_KIND_X509, csr_pem=_csr()
        )
    )
    leaf = x509.load_pem_x509_certificate(reply.certificate.encode())
    bundle = x509.load_pem_x509_certificates(reply.connection.x509_ca_bundle_pem.encode())
    leaf.verify_directly_issued_by(bundle[0])
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert "sft://acme/web/users/bob" in uris
    assert reply.connection.broker_uri in uris
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    by_key = await access.IssueCredentials(
        access_service_pb2.IssueCredentialsRequest(
            server=world.web.server, kind=access_pb2.CREDENTIAL_KIND_X509, public_key_pem=public
        )
    )
    assert by_key.serial != reply.serial
    error = await _refusal(
        access.IssueCredentials(
            access_service_pb2.IssueCredentialsRequest(
                server=world.win.server, kind=access_pb2.CREDENTIAL_KIND_X509, csr_pem=_csr()
            )
        )
    )
    assert error.code() == Code.FAILED_PRECONDITION
    assert "rdp_enabled" in (error.details() or "")


async def test_a_user_without_a_grant_is_denied_and_the_denial_is_audited(world: World) -> None:
    carol = await world.platform.login(TEAM, "carol")
    error = await _refusal(world.access(carol).IssueCredentials(_ssh(world.web.server)))
    assert error.code() == Code.PERMISSION_DENIED
    assert "web" in (error.details() or "")
    (event,) = await _issue_events(world.platform)
    assert (event.outcome, event.actor) == ("denied", f"{PARENT}/users/carol")
    assert event.details["reason"] == error.details()


async def test_a_disabled_user_gets_no_credentials_with_a_token_it_already_has(
    world: World,
) -> None:
    dave = await world.platform.login(TEAM, "dave")
    await world.access(dave).IssueCredentials(_ssh(world.web.server))
    users = world.platform.stub(user_service_pb2_grpc.UserServiceStub, world.admin)
    await users.DisableUser(user_service_pb2.DisableUserRequest(name=f"{PARENT}/users/dave"))
    error = await _refusal(world.access(dave).IssueCredentials(_ssh(world.web.server)))
    assert error.code() == Code.PERMISSION_DENIED
    assert "disabled" in (error.details() or "")
    assert [e.outcome for e in await _issue_events(world.platform)] == ["success"]


async def test_a_service_user_gets_credentials_for_its_own_account(world: World) -> None:
    admin = world.platform.stub(service_user_service_pb2_grpc.ServiceUserServiceStub, world.admin)
    await admin.CreateServiceUser(
        service_user_service_pb2.CreateServiceUserRequest(
            parent=PARENT, service_user_id="deployer", service_user=service_user_pb2.ServiceUser()
        )
    )
    groups = world.platform.stub(group_service_pb2_grpc.GroupServiceStub, world.admin)
    await groups.AddGroupMember(
        group_service_pb2.AddGroupMemberRequest(
            group=f"{PARENT}/groups/ops", user=f"{PARENT}/users/deployer"
        )
    )
    key = await admin.CreateServiceUserKey(
        service_user_service_pb2.CreateServiceUserKeyRequest(
            parent=f"{PARENT}/serviceUsers/deployer"
        )
    )
    minted = await world.platform.stub(
        token_service_pb2_grpc.TokenServiceStub
    ).CreateServiceUserToken(
        token_service_pb2.CreateServiceUserTokenRequest(key_id=key.key.key_id, secret=key.secret)
    )
    reply = await world.access(minted.access_token).IssueCredentials(_ssh(world.web.server))
    certificate = serialization.load_ssh_public_identity(reply.certificate.encode())
    assert isinstance(certificate, serialization.SSHCertificate)
    assert certificate.valid_principals == [b"deployer"]
    assert b"device=-" in certificate.key_id
    (event,) = await _issue_events(world.platform)
    assert (event.actor, event.actor_kind) == (f"{PARENT}/users/deployer", "service_user")
    assert key.secret not in repr(event.details)


@pytest.mark.parametrize(
    ("case", "request_fields", "code", "expected"),
    [
        (
            "no-kind",
            {"kind": access_pb2.CREDENTIAL_KIND_UNSPECIFIED},
            Code.INVALID_ARGUMENT,
            "kind",
        ),
        ("ssh-without-key", {"ssh_public_key": ""}, Code.INVALID_ARGUMENT, "ssh_public_key"),
        (
            "x509-with-ssh-key",
            {"kind": access_pb2.CREDENTIAL_KIND_X509},
            Code.INVALID_ARGUMENT,
            "csr_pem",
        ),
        (
            "bad-source",
            {"source_addresses": ["somewhere"]},
            Code.INVALID_ARGUMENT,
            "source address",
        ),
        ("negative-ttl", {"ttl_seconds": -1}, Code.INVALID_ARGUMENT, "ttl_seconds"),
        ("no-server", {"server": ""}, Code.INVALID_ARGUMENT, "server"),
        ("bad-server", {"server": "web 1"}, Code.INVALID_ARGUMENT, "server"),
        (
            "other-team",
            {"server": "teams/other/projects/web/servers/abc"},
            Code.PERMISSION_DENIED,
            "sft use other",
        ),
        ("bad-key", {"ssh_public_key": "ssh-ed25519 AAAA"}, Code.INVALID_ARGUMENT, ""),
        ("huge-key", {"ssh_public_key": "x" * 20000}, Code.INVALID_ARGUMENT, "16384"),
    ],
)
async def test_bad_credential_requests_are_refused_and_nothing_is_issued(
    world: World,
    case: str,
    request_fields: dict[str, Any],
    code: grpc.StatusCode,
    expected: str,
) -> None:
    bob = await world.platform.login(TEAM, "bob")
    request = _ssh(world.web.server)
    for name, value in request_fields.items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
        elif name == "ssh_public_key" and not value:
            request.ClearField("ssh_public_key")
        else:
            setattr(request, name, value)
    error = await _refusal(world.access(bob).IssueCredentials(request))
    assert error.code() == code, error.details()
    assert expected in (error.details() or "")
    assert [e.outcome for e in await _issue_events(world.platform)] in ([], ["failed"])


async def test_a_bare_server_id_is_resolved_in_the_callers_team(world: World) -> None:
    bob = await world.platform.login(TEAM, "bob")
    server_id = world.web.server.rpartition("/")[2]
    reply = await world.access(bob).IssueCredentials(_ssh(server_id))
    assert reply.connection.server == world.web.server
