"""Run the whole platform (CA, inventory, auth) in-process on loopback, wired the way
`sft-platform serve` wires it: one public listener, one internal listener, services
calling each other as themselves. Plus what a test needs to act as people on it:
bootstrap a team, enroll a device, get its bearer token.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.database import Database
from runtime.migrations import upgrade
from runtime.peers import Peers
from runtime.server import Endpoint, PlatformServer, ServiceBinding
from runtime.service_identity import service_channel
from runtime.tls import TLSFiles, ca_sha256, ensure_dev_pki, service_tls_files
from services.auth.assertions import ASSERTION_AUDIENCE
from services.auth.enrollment_codes import issue_enrollment_code
from services.ca.key_encryption import LocalKeyEncryption, generate_key_file
from services.inventory import repository as inventory
from services.platform.registry import authenticator_for, histories_for, service_bindings
from services.platform.settings import SERVICE_NAMES
from sft.auth.v1 import (
    audit_pb2,
    device_service_pb2,
    device_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from sft.inventory.v1 import (
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    group_pb2,
    group_service_pb2,
    group_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
)
from tests.support.ca_server import Clock

__all__ = [
    "Clock",
    "Device",
    "InventoryBinding",
    "Platform",
    "RecordingTrail",
    "key_assertion",
    "running_platform",
]

Stub = TypeVar("Stub")
#: Builds an inventory binding (servicers under test) from the database, the inventory's
#: peers and the platform clock, in place of the registered one.
InventoryBinding = Callable[[Database, Peers, Clock], ServiceBinding]


@dataclass
class RecordingTrail:
    """An AuditTrail that keeps (team, event) in memory, for servicers tested without auth's."""

    events: list[tuple[str, audit_pb2.AuditEvent]] = field(default_factory=list)

    async def record(self, team: str, event: audit_pb2.AuditEvent) -> None:
        """Keep `event` for `team`."""
        self.events.append((team, event))

    def actions(self) -> list[str]:
        """Return the recorded actions in order."""
        return [event.action for _, event in self.events]

    def events_of(self, action: str) -> list[audit_pb2.AuditEvent]:
        """Return the recorded events of `action`, oldest first."""
        return [event for _, event in self.events if event.action == action]


@dataclass
class Device:
    """An enrolled device: its key, its resource name, and the person it belongs to."""

    key: ed25519.Ed25519PrivateKey
    name: str
    fingerprint: str
    team: str
    user: str

    def assertion(self, **overrides: Any) -> str:
        """Return a fresh signed key assertion (claims overridable, for refusal tests)."""
        return key_assertion(self.key, self.name, self.fingerprint, **overrides)


def key_assertion(key: ed25519.Ed25519PrivateKey, subject: str, kid: str, **overrides: Any) -> str:
    """Return a fresh key assertion by `subject` (a device or server), signed with `key`.

    `kid` names the key (its SHA256 fingerprint); claims are overridable, for refusal tests.
    """
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": subject,
        "sub": subject,
        "aud": ASSERTION_AUDIENCE,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})


def public_key_line(key: ed25519.Ed25519PrivateKey) -> str:
    """Return `key`'s public half as one OpenSSH line."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Return call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Platform:
    """A started platform and ways to call it."""

    server: PlatformServer
    database: Database
    tls: TLSFiles
    tls_dir: Path
    clock: Clock
    peers: Peers
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def pin(self) -> bytes:
        """Return the SHA-256 of the platform CA (what codes and tokens pin)."""
        return ca_sha256(self.tls.ca_file.read_bytes())

    @property
    def address(self) -> str:
        """Return the public listener's host:port."""
        return f"127.0.0.1:{self.server.port}"

    def channel(self, token: str | None = None) -> grpc.aio.Channel:
        """Return a channel on the public listener; with `token`, every call carries it."""
        credentials = grpc.ssl_channel_credentials(self.tls.ca_file.read_bytes())
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        channel = grpc.aio.secure_channel(self.address, credentials)
        self._channels.append(channel)
        return channel

    def stub(self, stub_class: type[Stub], token: str | None = None) -> Stub:
        """Return `stub_class` on the public listener, as the bearer of `token` (if any)."""
        return stub_class(self.channel(token))  # type: ignore[call-arg]

    def as_service(self, stub_class: type[Stub], service: str) -> Stub:
        """Return `stub_class` on the internal listener, as platform service `service`."""
        channel = service_channel(
            f"127.0.0.1:{self.server.internal_port}", service_tls_files(self.tls_dir, service)
        )
        self._channels.append(channel)
        return stub_class(channel)  # type: ignore[call-arg]

    async def create_team(self, team: str, admin: str, members: Iterable[str] = ()) -> None:
        """Create `team` with `admin` as team admin, the way `sft-platform init` does, and
        `members` as people without the team admin role."""
        async with self.database.sessions.begin() as session:
            row = await inventory.create_team(session, team)
            await inventory.create_user(session, row, admin, team_admin=True)
            for member in members:
                await inventory.create_user(session, row, member, team_admin=False)

    async def enrollment_code(self, team: str, user: str) -> str:
        """Return a fresh one-time enrollment code for an existing user."""
        async with self.database.sessions.begin() as session:
            issued = await issue_enrollment_code(
                session,
                team=team,
                user=f"teams/{team}/users/{user}",
                created_by="test",
                ca_sha256=self.pin,
            )
        return issued.code

    async def enroll(self, team: str, user: str, code: str | None = None) -> Device:
        """Enroll a new device key for `user` (with `code`, or a fresh one)."""
        key = ed25519.Ed25519PrivateKey.generate()
        reply = await self.stub(device_service_pb2_grpc.DeviceServiceStub).EnrollDevice(
            device_service_pb2.EnrollDeviceRequest(
                team=f"teams/{team}",
                code=code or await self.enrollment_code(team, user),
                public_key=public_key_line(key),
                hostname="laptop",
                os="linux",
            )
        )
        return Device(key, reply.device.name, reply.device.public_key_fingerprint, team, user)

    async def token(self, device: Device) -> str:
        """Exchange a fresh assertion of `device` for a bearer token."""
        reply = await self.stub(token_service_pb2_grpc.TokenServiceStub).CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(assertion=device.assertion())
        )
        return str(reply.access_token)

    async def login(self, team: str, user: str) -> str:
        """Enroll a device for `user` and return a bearer token for it."""
        return await self.token(await self.enroll(team, user))

    async def grant_project(
        self,
        token: str,
        team: str,
        project: str,
        group: str,
        members: Iterable[str],
        role: project_pb2.GrantRole.ValueType = project_pb2.GRANT_ROLE_USER,
        settings: project_pb2.Project | None = None,
    ) -> None:
        """As the bearer of `token`: create `project` (with `settings`) and
        `group` (with `members`, who must exist) and grant the group `role` on the project."""
        projects = self.stub(project_service_pb2_grpc.ProjectServiceStub, token)
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(
                parent=f"teams/{team}",
                project_id=project,
                project=settings or project_pb2.Project(),
            )
        )
        groups = self.stub(group_service_pb2_grpc.GroupServiceStub, token)
        await groups.CreateGroup(
            group_service_pb2.CreateGroupRequest(
                parent=f"teams/{team}", group_id=group, group=group_pb2.Group()
            )
        )
        for member in members:
            await groups.AddGroupMember(
                group_service_pb2.AddGroupMemberRequest(
                    group=f"teams/{team}/groups/{group}", user=f"teams/{team}/users/{member}"
                )
            )
        await projects.CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent=f"teams/{team}/projects/{project}",
                grant=project_pb2.ProjectGrant(group=f"teams/{team}/groups/{group}", role=role),
            )
        )

    async def enrollment_token(
        self, token: str, project: str, description: str = "test"
    ) -> tuple[str, str]:
        """As the bearer of `token`: make a server enrollment token for the `project`
        resource; return (the token string, its resource name)."""
        tokens = self.stub(enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub, token)
        created = await tokens.CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                parent=project,
                enrollment_token=enrollment_token_pb2.EnrollmentToken(description=description),
            )
        )
        return str(created.token), str(created.enrollment_token.name)

    async def close_channels(self) -> None:
        """Close every channel handed out."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()


@asynccontextmanager
async def running_platform(
    database_url: str,
    directory: Path,
    *,
    clock: Clock | None = None,
    services: tuple[str, ...] = SERVICE_NAMES,
    inventory: InventoryBinding | None = None,
) -> AsyncIterator[Platform]:
    """Migrate `database_url`, serve `services` on free loopback ports, stop afterwards.

    With `inventory`, the inventory served is the binding it builds (servicers under test).
    """
    tls_dir = directory / "tls"
    tls = ensure_dev_pki(tls_dir, ["127.0.0.1", "localhost"], services=SERVICE_NAMES)
    kek_file = directory / "ca-kek.key"
    kek = (
        LocalKeyEncryption.from_file(kek_file) if kek_file.exists() else generate_key_file(kek_file)
    )
    the_clock = clock or Clock()
    database = Database.connect(database_url)
    await upgrade(database, histories_for(services))
    server: PlatformServer | None = None

    def local_address() -> str | None:
        return f"127.0.0.1:{server.internal_port}" if server and server.internal_port else None

    peers = Peers("platform", tls_dir, local_address=local_address)
    bindings = service_bindings(
        tuple(name for name in services if inventory is None or name != "inventory"),
        database,
        ca_key_encryption=kek if "ca" in services else None,
        peers=peers,
        clock=the_clock,
    )
    if inventory is not None:
        bindings.append(inventory(database, peers.for_service("inventory"), the_clock))
    server = PlatformServer(
        bindings,
        Endpoint("127.0.0.1", 0),
        tls,
        authenticate=authenticator_for(services, database, the_clock),
        internal_listen=Endpoint("127.0.0.1", 0),
        grace_seconds=0,
    )
    await server.start()
    platform = Platform(server, database, tls, tls_dir, the_clock, peers)
    try:
        yield platform
    finally:
        await platform.close_channels()
        await server.stop()
        await peers.close()
        await database.close()
