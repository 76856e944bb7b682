"""The inventory's fleet servicers served on loopback for tests, and the world they act on.

`running_fleet` serves the real CA and auth services with the inventory's fleet
servicers, the way the platform wires them; people and agents get real access tokens
recorded in auth's table. Used by tests/test_inventory_fleet.py and test_inventory_agents.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.database import Database
from runtime.peers import Peers
from runtime.server import ServiceBinding
from services.auth import repository as auth_repository
from services.auth.access_tokens import hash_access_token, new_access_token
from services.inventory.accounts_watch import AccountsHub
from services.inventory.agent_service import AgentServicer
from services.inventory.enrollment_tokens_service import EnrollmentTokenServicer
from services.inventory.models import (
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    Team,
    User,
    UserStatus,
)
from services.inventory.roles import LocalRoles
from services.inventory.servers_service import ServerServicer
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    server_pb2,
    server_service_pb2_grpc,
)
from tests.support.platform import Clock, Platform, RecordingTrail, running_platform

__all__ = [
    "TEAM",
    "Fleet",
    "World",
    "agent_key_line",
    "build_world",
    "create_token",
    "enroll",
    "expect_error",
    "host_key_line",
    "running_fleet",
]

Stub = TypeVar("Stub")
TEAM = "acme"


@dataclass
class Fleet:
    """A started platform serving the fleet servicers under test, their accounts hub and
    audit trail, and ways to call them as people, agents or services."""

    platform: Platform
    hub: AccountsHub
    trail: RecordingTrail
    #: The fleet servicers' clock (auth keeps real time, so tokens stay valid).
    clock: Clock

    @property
    def database(self) -> Database:
        """Return the platform's database."""
        return self.platform.database

    @property
    def pin(self) -> bytes:
        """Return the SHA-256 of the platform CA (what enrollment tokens pin)."""
        return self.platform.pin

    def stub(self, stub_class: type[Stub], token: str | None = None) -> Stub:
        """Return `stub_class` on the public listener, as the bearer of `token` (if any)."""
        return self.platform.stub(stub_class, token)

    def as_service(self, stub_class: type[Stub], service: str) -> Stub:
        """Return `stub_class` on the internal listener, as platform service `service`."""
        return self.platform.as_service(stub_class, service)

    async def _token(self, kind: str, principal: str) -> str:
        # Shortcut: record the token the way TokenService would after checking a key
        # assertion; the authenticator that checks it on every call is the real one.
        token = new_access_token()
        token_hash = hash_access_token(token)
        assert token_hash is not None
        now = dt.datetime.now(dt.UTC)
        async with self.database.sessions.begin() as session:
            await auth_repository.create_access_token(
                session,
                token_hash=token_hash,
                kind=kind,
                team=TEAM,
                principal=principal,
                device_id=None,
                now=now,
                expire_time=now + dt.timedelta(hours=1),
            )
        return token

    async def user_token(self, user: str) -> str:
        """Return a bearer token for person `user` of the team."""
        return await self._token("user", f"teams/{TEAM}/users/{user}")

    async def agent_token(self, server_name: str) -> str:
        """Return a bearer token for the agent of server `server_name` (a resource name)."""
        return await self._token("server", server_name)

    def tokens(self, token: str) -> enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub:
        """Return an EnrollmentTokenService stub as `token`'s bearer."""
        return self.stub(enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub, token)

    def servers(self, token: str) -> server_service_pb2_grpc.ServerServiceStub:
        """Return a ServerService stub as `token`'s bearer."""
        return self.stub(server_service_pb2_grpc.ServerServiceStub, token)

    def agents(self, token: str | None = None) -> agent_service_pb2_grpc.AgentServiceStub:
        """Return an AgentService stub (anonymous without `token`)."""
        return self.stub(agent_service_pb2_grpc.AgentServiceStub, token)

    async def close_channels(self) -> None:
        """Close every channel handed out."""
        await self.platform.close_channels()


@asynccontextmanager
async def running_fleet(
    database_url: str, directory: Path, *, poll_interval: float = 0.2
) -> AsyncIterator[Fleet]:
    """Serve CA, auth and the inventory's fleet servicers on loopback; stop afterwards."""
    clock = Clock()
    trail = RecordingTrail()
    hubs: list[AccountsHub] = []

    def fleet_binding(database: Database, peers: Peers, _: Clock) -> ServiceBinding:
        hub = AccountsHub(database, clock, poll_interval=poll_interval)
        hubs.append(hub)
        shared: dict[str, Any] = {
            "roles": LocalRoles(database),
            "trail": trail,
            "hub": hub,
            "clock": clock,
        }
        bound = ServiceBinding.from_package(
            "inventory",
            "sft.inventory.v1",
            implementations={
                "ServerService": ServerServicer(database, peers, **shared),
                "EnrollmentTokenService": EnrollmentTokenServicer(database, peers, **shared),
                "AgentService": AgentServicer(database, peers, **shared),
            },
        )
        return dataclasses.replace(bound, closers=(hub.close,))

    async with running_platform(database_url, directory, inventory=fleet_binding) as platform:
        yield Fleet(platform, hubs[0], trail, clock)


@dataclass
class World:
    """Team acme: alice (team admin), bob (web user, db admin), carol (no grants),
    dave (disabled, web user); projects web and db with their CA authorities."""

    team: Team
    projects: dict[str, Project]
    users: dict[str, User]
    groups: dict[str, Group]


async def build_world(running: Fleet) -> World:
    """Create the team, people, groups, grants and projects (with authorities)."""
    async with running.database.sessions.begin() as session:
        team = Team(name=TEAM)
        session.add(team)
        await session.flush()
        users = {}
        for index, (name, admin, status) in enumerate(
            [
                ("alice", True, UserStatus.ACTIVE),
                ("bob", False, UserStatus.ACTIVE),
                ("carol", False, UserStatus.ACTIVE),
                ("dave", False, UserStatus.DISABLED),
            ]
        ):
            users[name] = User(
                team_id=team.id,
                name=name,
                unix_uid=60001 + index,
                unix_gid=63001 + index,
                windows_name=name,
                team_admin=admin,
                status=status,
                display_name=name.title(),
            )
            session.add(users[name])
        projects = {
            "web": Project(team_id=team.id, name="web", allowed_admin_account_names=["root"]),
            "db": Project(team_id=team.id, name="db"),
        }
        groups = {name: Group(team_id=team.id, name=name) for name in ("devs", "dbas")}
        session.add_all([*projects.values(), *groups.values()])
        await session.flush()
        session.add_all(
            [
                GroupMember(group_id=groups["devs"].id, user_id=users["bob"].id),
                GroupMember(group_id=groups["devs"].id, user_id=users["dave"].id),
                GroupMember(group_id=groups["dbas"].id, user_id=users["bob"].id),
                Grant(
                    project_id=projects["web"].id, group_id=groups["devs"].id, role=GrantRole.USER
                ),
                Grant(
                    project_id=projects["db"].id, group_id=groups["dbas"].id, role=GrantRole.ADMIN
                ),
            ]
        )
    ca = running.as_service(ca_service_pb2_grpc.CertificateAuthorityServiceStub, "inventory")
    for name in projects:
        await ca.CreateProjectAuthorities(
            ca_service_pb2.CreateProjectAuthoritiesRequest(project=f"teams/{TEAM}/projects/{name}")
        )
    return World(team, projects, users, groups)


def agent_key_line() -> tuple[ed25519.Ed25519PrivateKey, str]:
    """Return a fresh agent key and its OpenSSH public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return key, line


def host_key_line() -> str:
    """Return a fresh Ed25519 host public key line."""
    return agent_key_line()[1]


async def create_token(running: Fleet, project: str, **settings: Any) -> str:
    """Create an enrollment token of `project` as alice (team admin); return its string."""
    reply = await running.tokens(await running.user_token("alice")).CreateEnrollmentToken(
        enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
            parent=f"teams/{TEAM}/projects/{project}",
            enrollment_token=enrollment_token_pb2.EnrollmentToken(**settings),
        )
    )
    return str(reply.token)


async def enroll(
    running: Fleet,
    token: str,
    hostname: str,
    *,
    agent_key: str | None = None,
    host_keys: list[str] | None = None,
    os: server_pb2.OperatingSystem.ValueType = server_pb2.OPERATING_SYSTEM_WINDOWS,
    **facts: Any,
) -> agent_service_pb2.EnrollServerResponse:
    """Enroll a server (Windows without host keys by default: no SSH certificates)."""
    reply: agent_service_pb2.EnrollServerResponse = await running.agents().EnrollServer(
        agent_service_pb2.EnrollServerRequest(
            enrollment_token=token,
            agent_public_key=agent_key or agent_key_line()[1],
            host_public_keys=host_keys or [],
            facts=agent_pb2.ServerFacts(hostname=hostname, os=os, **facts),
        )
    )
    return reply


async def expect_error(code: grpc.StatusCode, call: Any) -> str:
    """Await `call`, expect it to fail with `code`, and return its message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())
