"""The inventory's directory (teams, users, groups, projects, grants, bastions) through
the real platform over gRPC on loopback, on SQLite and PostgreSQL: what each role may
do, what each change writes (and bumps), and what bad input is refused with.

The platform is started the way tests.support.platform starts it, except that the
inventory's binding is built here from the directory servicers, with an audit trail
and an accounts-changed hook that record what they are given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from runtime.database import Database
from runtime.peers import Peers
from runtime.server import ServiceBinding
from services.inventory import repository
from services.inventory.bastions_service import BastionServicer
from services.inventory.groups_service import GroupServicer
from services.inventory.models import Bastion, Grant, Group, GroupMember, Project, Server, Team
from services.inventory.models import User as UserRow
from services.inventory.projects_service import ProjectServicer
from services.inventory.roles import LocalRoles
from services.inventory.teams_service import TeamServicer
from services.inventory.users_service import CREATE_USER_ATTEMPTS, UserServicer
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    bastion_pb2,
    bastion_service_pb2,
    bastion_service_pb2_grpc,
    group_pb2,
    group_service_pb2,
    group_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    team_pb2,
    team_service_pb2,
    team_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from tests.support.platform import Clock, Platform, RecordingTrail, running_platform

Code = grpc.StatusCode
#: Not a page token any listing hands out.
DAMAGED = "%%"


@dataclass
class Directory:
    """A started platform, stubs for its directory services, and what they reported."""

    platform: Platform
    trail: RecordingTrail
    changed: list[str]
    token: str = ""

    def teams(self, token: str | None = None) -> team_service_pb2_grpc.TeamServiceStub:
        return self.platform.stub(team_service_pb2_grpc.TeamServiceStub, token)

    def users(self, token: str | None = None) -> user_service_pb2_grpc.UserServiceStub:
        return self.platform.stub(user_service_pb2_grpc.UserServiceStub, token)

    def groups(self, token: str | None = None) -> group_service_pb2_grpc.GroupServiceStub:
        return self.platform.stub(group_service_pb2_grpc.GroupServiceStub, token)

    def projects(self, token: str | None = None) -> project_service_pb2_grpc.ProjectServiceStub:
        return self.platform.stub(project_service_pb2_grpc.ProjectServiceStub, token)

    def bastions(self, token: str | None = None) -> bastion_service_pb2_grpc.BastionServiceStub:
        return self.platform.stub(bastion_service_pb2_grpc.BastionServiceStub, token)

    async def revision(self, team: str = "acme") -> int:
        """Return the team's accounts revision."""
        async with self.platform.database.sessions() as session:
            value = await session.scalar(select(Team.accounts_revision).where(Team.name == team))
        return int(value or 0)

    async def count(self, model: Any) -> int:
        """Return how many rows `model`'s table has."""
        async with self.platform.database.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def add_user(self, name: str, **fields: Any) -> user_pb2.User:
        """Create user `name` of acme as the team admin."""
        reply = await self.users(self.token).CreateUser(
            user_service_pb2.CreateUserRequest(
                parent="teams/acme", user_id=name, user=user_pb2.User(**fields)
            )
        )
        user: user_pb2.User = reply.user
        return user

    async def add_project(self, name: str, **fields: Any) -> project_pb2.Project:
        """Create project `name` of acme as the team admin."""
        reply = await self.projects(self.token).CreateProject(
            project_service_pb2.CreateProjectRequest(
                parent="teams/acme",
                project_id=name,
                project=project_pb2.Project(**fields) if fields else None,
            )
        )
        project: project_pb2.Project = reply.project
        return project

    async def grant(
        self, project: str, group: str, role: project_pb2.GrantRole.ValueType
    ) -> project_pb2.ProjectGrant:
        """Grant group `group` `role` on `project` as the team admin."""
        reply = await self.projects(self.token).CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent=f"teams/acme/projects/{project}",
                grant=project_pb2.ProjectGrant(group=f"teams/acme/groups/{group}", role=role),
            )
        )
        grant: project_pb2.ProjectGrant = reply.grant
        return grant

    async def add_group(self, name: str, *members: str) -> None:
        """Create group `name` with `members` as the team admin."""
        await self.groups(self.token).CreateGroup(
            group_service_pb2.CreateGroupRequest(parent="teams/acme", group_id=name)
        )
        for member in members:
            await self.groups(self.token).AddGroupMember(
                group_service_pb2.AddGroupMemberRequest(
                    group=f"teams/acme/groups/{name}", user=f"teams/acme/users/{member}"
                )
            )

    async def add_server(self, project: str, server_id: str = "srv-1") -> str:
        """Insert an enrolled server row into `project`; return its resource name."""
        async with self.platform.database.sessions.begin() as session:
            team = await session.scalar(select(Team).where(Team.name == "acme"))
            assert team is not None
            project_id = await session.scalar(
                select(Project.id).where(Project.team_id == team.id, Project.name == project)
            )
            assert project_id is not None
            session.add(
                Server(
                    id=server_id,
                    team_id=team.id,
                    project_id=project_id,
                    hostname="web-1",
                    canonical_name="web-1",
                    os="linux",
                    agent_public_key="ssh-ed25519 AAAA test",
                    agent_key_fingerprint=f"SHA256:{server_id}",
                )
            )
        return f"teams/acme/projects/{project}/servers/{server_id}"


def _inventory_binding(
    database: Database, peers: Peers, trail: RecordingTrail, changed: list[str], clock: Clock
) -> ServiceBinding:
    roles = LocalRoles(database)
    options: dict[str, Any] = {
        "roles": roles,
        "trail": trail,
        "clock": clock,
        "on_accounts_changed": changed.append,
    }
    return ServiceBinding.from_package(
        "inventory",
        "sft.inventory.v1",
        implementations={
            "TeamService": TeamServicer(database, peers, **options),
            "UserService": UserServicer(database, peers, **options),
            "GroupService": GroupServicer(database, peers, **options),
            "ProjectService": ProjectServicer(database, peers, **options),
            "BastionService": BastionServicer(database, peers, **options),
        },
    )


@asynccontextmanager
async def running_directory(database_url: str, directory: Path) -> AsyncIterator[Directory]:
    """Serve CA + auth (as registered) + the directory servicers; acme/alice is team admin."""
    trail = RecordingTrail()
    changed: list[str] = []

    def inventory(database: Database, peers: Peers, clock: Clock) -> ServiceBinding:
        return _inventory_binding(database, peers, trail, changed, clock)

    async with running_platform(database_url, directory, inventory=inventory) as platform:
        await platform.create_team("acme", "alice")
        found = Directory(platform, trail, changed)
        found.token = await platform.login("acme", "alice")
        yield found


@pytest.fixture
async def directory(database_url: str, tmp_path: Path) -> AsyncIterator[Directory]:
    """A running platform with the directory servicers; acme/alice is team admin."""
    async with running_directory(database_url, tmp_path) as found:
        yield found


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """Await `call`, which must fail with `code`; return its message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())


def mask(*paths: str) -> FieldMask:
    """Return a FieldMask of `paths`."""
    return FieldMask(paths=list(paths))


# Teams and users ---------------------------------------------------------------------------


async def test_team_admin_creates_lists_updates_disables_and_enables_users(
    directory: Directory,
) -> None:
    d = directory
    team = (await d.teams(d.token).GetTeam(team_service_pb2.GetTeamRequest(name="teams/acme"))).team
    assert team.name == "teams/acme"
    listed = await d.teams(d.token).ListTeams(team_service_pb2.ListTeamsRequest())
    assert [t.name for t in listed.teams] == ["teams/acme"]
    message = await refused(
        d.teams(d.token).CreateTeam(team_service_pb2.CreateTeamRequest(team_id="other")),
        Code.PERMISSION_DENIED,
    )
    assert "sft-platform init" in message
    updated = await d.teams(d.token).UpdateTeam(
        team_service_pb2.UpdateTeamRequest(
            team=team_pb2.Team(name="teams/acme", display_name="Acme Corp"),
            update_mask=mask("display_name"),
        )
    )
    assert updated.team.display_name == "Acme Corp"
    again = await d.teams(d.token).GetTeam(team_service_pb2.GetTeamRequest(name="teams/acme"))
    assert again.team.display_name == "Acme Corp"

    before = await d.revision()
    bob = await d.add_user("bob", display_name="Bob B", email="bob@example.com")
    assert bob.name == "teams/acme/users/bob"
    assert bob.status == user_pb2.USER_STATUS_ACTIVE
    assert bob.kind == user_pb2.USER_KIND_HUMAN
    assert bob.unix_uid >= 60001 and bob.unix_gid >= 63001
    assert bob.windows_account_name == "bob"
    assert await d.revision() == before + 1
    long_name = "a" + "b" * 25
    carol = await d.add_user(long_name)
    assert carol.windows_account_name == long_name[:20]
    dave = await d.add_user(long_name[:22])  # truncates to the same 20: made unique
    assert dave.windows_account_name == long_name[:19] + "1"

    got = await d.users(d.token).GetUser(
        user_service_pb2.GetUserRequest(name="teams/acme/users/bob")
    )
    assert got.user == bob
    page = await d.users(d.token).ListUsers(
        user_service_pb2.ListUsersRequest(parent="teams/acme", page_size=2)
    )
    assert [u.name.rsplit("/", 1)[1] for u in page.users] == [long_name[:22], long_name]
    rest = await d.users(d.token).ListUsers(
        user_service_pb2.ListUsersRequest(
            parent="teams/acme", page_size=2, page_token=page.next_page_token
        )
    )
    assert [u.name.rsplit("/", 1)[1] for u in rest.users] == ["alice", "bob"]
    assert rest.next_page_token == ""
    await refused(
        d.users(d.token).ListUsers(
            user_service_pb2.ListUsersRequest(
                parent="teams/acme",
                page_token=page.next_page_token,
                status=user_pb2.USER_STATUS_ACTIVE,
            )
        ),
        Code.INVALID_ARGUMENT,
    )

    updated = await d.users(d.token).UpdateUser(
        user_service_pb2.UpdateUserRequest(
            user=user_pb2.User(
                name="teams/acme/users/bob",
                display_name="Robert",
                windows_account_name="Robert.B",
                team_admin=True,
            ),
            update_mask=mask("display_name", "windows_account_name", "team_admin"),
        )
    )
    assert (updated.user.display_name, updated.user.windows_account_name) == ("Robert", "Robert.B")
    assert updated.user.team_admin and updated.user.email == "bob@example.com"
    message = await refused(
        d.users(d.token).UpdateUser(
            user_service_pb2.UpdateUserRequest(
                user=user_pb2.User(name="teams/acme/users/bob", unix_uid=1),
                update_mask=mask("unix_uid"),
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "unix_uid" in message

    revision = await d.revision()
    disabled = await d.users(d.token).DisableUser(
        user_service_pb2.DisableUserRequest(name="teams/acme/users/bob")
    )
    assert disabled.user.status == user_pb2.USER_STATUS_DISABLED
    assert await d.revision() == revision + 1
    only_disabled = await d.users(d.token).ListUsers(
        user_service_pb2.ListUsersRequest(parent="teams/acme", status=user_pb2.USER_STATUS_DISABLED)
    )
    assert [u.name for u in only_disabled.users] == ["teams/acme/users/bob"]
    enabled = await d.users(d.token).EnableUser(
        user_service_pb2.EnableUserRequest(name="teams/acme/users/bob")
    )
    assert enabled.user.status == user_pb2.USER_STATUS_ACTIVE

    assert d.trail.actions() == [
        "team.update",
        "user.create",
        "user.create",
        "user.create",
        "user.update",
        "user.disable",
        "user.enable",
    ]
    team_name, first = d.trail.events[1]
    assert team_name == "acme"
    assert first.resource == "teams/acme/users/bob"
    assert first.actor == "teams/acme/users/alice"
    assert d.changed and len(set(d.changed)) == 1


async def test_the_last_active_team_admin_can_be_neither_disabled_nor_demoted(
    directory: Directory,
) -> None:
    d = directory
    message = await refused(
        d.users(d.token).DisableUser(
            user_service_pb2.DisableUserRequest(name="teams/acme/users/alice")
        ),
        Code.FAILED_PRECONDITION,
    )
    assert "last active team admin" in message
    demote = user_service_pb2.UpdateUserRequest(
        user=user_pb2.User(name="teams/acme/users/alice", team_admin=False),
        update_mask=mask("team_admin"),
    )
    message = await refused(d.users(d.token).UpdateUser(demote), Code.FAILED_PRECONDITION)
    assert "make another user team admin first" in message
    # A disabled admin does not count; an active second admin does.
    await d.add_user("bob", team_admin=True)
    await d.users(d.token).DisableUser(
        user_service_pb2.DisableUserRequest(name="teams/acme/users/bob")
    )
    await refused(d.users(d.token).UpdateUser(demote), Code.FAILED_PRECONDITION)
    await d.users(d.token).EnableUser(
        user_service_pb2.EnableUserRequest(name="teams/acme/users/bob")
    )
    demoted = await d.users(d.token).UpdateUser(demote)
    assert not demoted.user.team_admin


async def test_concurrent_user_creation_allocates_distinct_uids_and_gids(
    directory: Directory,
) -> None:
    d = directory
    stub = d.users(d.token)
    replies = await asyncio.gather(
        *(
            stub.CreateUser(
                user_service_pb2.CreateUserRequest(parent="teams/acme", user_id=f"user{i}")
            )
            for i in range(20)
        )
    )
    uids = [reply.user.unix_uid for reply in replies]
    gids = [reply.user.unix_gid for reply in replies]
    assert len(set(uids)) == 20 and len(set(gids)) == 20
    assert min(uids) >= 60001 and min(gids) >= 63001
    async with d.platform.database.sessions() as session:
        stored = (await session.execute(select(UserRow.unix_uid, UserRow.unix_gid))).all()
    assert len({uid for uid, _ in stored}) == len(stored) == 21
    assert len({gid for _, gid in stored}) == 21


async def test_a_uid_collision_is_retried_in_a_fresh_transaction_a_bounded_number_of_times(
    directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = directory
    real_create_user = repository.create_user
    collisions = 3

    async def colliding(*args: Any, **kwargs: Any) -> UserRow:
        nonlocal collisions
        user = await real_create_user(*args, **kwargs)
        if collisions:
            collisions -= 1
            # What the unique constraint raises when a concurrent creation won the uid.
            raise IntegrityError("INSERT INTO inventory_users", {}, Exception("unique uid"))
        return user

    monkeypatch.setattr(repository, "create_user", colliding)
    revision = await d.revision()
    bob = await d.add_user("bob")
    assert collisions == 0 and bob.unix_uid == 60002
    assert await d.revision() == revision + 1  # the failed attempts left nothing behind
    assert await d.count(UserRow) == 2

    collisions = CREATE_USER_ATTEMPTS
    message = await refused(d.add_user("carol"), Code.UNAVAILABLE)
    assert "try again" in message
    assert await d.count(UserRow) == 2


async def test_auth_creates_service_users_and_reads_users(directory: Directory) -> None:
    d = directory
    as_auth = d.platform.as_service(user_service_pb2_grpc.UserServiceStub, "auth")
    created = await as_auth.CreateUser(
        user_service_pb2.CreateUserRequest(
            parent="teams/acme",
            user_id="ci-bot",
            user=user_pb2.User(kind=user_pb2.USER_KIND_SERVICE),
        )
    )
    assert created.user.kind == user_pb2.USER_KIND_SERVICE
    got = await as_auth.GetUser(user_service_pb2.GetUserRequest(name="teams/acme/users/alice"))
    assert got.user.team_admin
    message = await refused(
        d.users(d.token).CreateUser(
            user_service_pb2.CreateUserRequest(
                parent="teams/acme",
                user_id="bot2",
                user=user_pb2.User(kind=user_pb2.USER_KIND_SERVICE),
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "service-user" in message
    services = await d.users(d.token).ListUsers(
        user_service_pb2.ListUsersRequest(parent="teams/acme", kind=user_pb2.USER_KIND_SERVICE)
    )
    assert [u.name for u in services.users] == ["teams/acme/users/ci-bot"]
    # Another platform service may not create users.
    as_ca = d.platform.as_service(user_service_pb2_grpc.UserServiceStub, "ca")
    await refused(
        as_ca.CreateUser(user_service_pb2.CreateUserRequest(parent="teams/acme", user_id="sneaky")),
        Code.PERMISSION_DENIED,
    )


# Groups, projects, grants ------------------------------------------------------------------


async def test_groups_memberships_and_grants_bump_the_accounts_revision(
    directory: Directory,
) -> None:
    d = directory
    await d.add_user("bob")
    await d.add_project("web")
    created = await d.groups(d.token).CreateGroup(
        group_service_pb2.CreateGroupRequest(
            parent="teams/acme", group_id="ops", group=group_pb2.Group(description="on call")
        )
    )
    assert (created.group.name, created.group.member_count) == ("teams/acme/groups/ops", 0)
    changes = len(d.changed)

    revision = await d.revision()
    add = group_service_pb2.AddGroupMemberRequest(
        group="teams/acme/groups/ops", user="teams/acme/users/bob"
    )
    member = (await d.groups(d.token).AddGroupMember(add)).member
    assert member.name == "teams/acme/groups/ops/members/bob"
    assert member.user == "teams/acme/users/bob"
    assert await d.revision() == revision + 1
    again = (await d.groups(d.token).AddGroupMember(add)).member
    assert again == member
    assert d.trail.actions().count("group.member.add") == 1
    group = await d.groups(d.token).GetGroup(
        group_service_pb2.GetGroupRequest(name="teams/acme/groups/ops")
    )
    assert group.group.member_count == 1
    listed = await d.groups(d.token).ListGroups(
        group_service_pb2.ListGroupsRequest(parent="teams/acme")
    )
    assert [(g.name, g.member_count) for g in listed.groups] == [("teams/acme/groups/ops", 1)]
    members = await d.groups(d.token).ListGroupMembers(
        group_service_pb2.ListGroupMembersRequest(parent="teams/acme/groups/ops")
    )
    assert [m.user for m in members.members] == ["teams/acme/users/bob"]

    revision = await d.revision()
    grant = await d.grant("web", "ops", project_pb2.GRANT_ROLE_ADMIN)
    assert grant.name == "teams/acme/projects/web/grants/ops"
    assert grant.group == "teams/acme/groups/ops"
    assert await d.revision() == revision + 1
    message = await refused(d.grant("web", "ops", project_pb2.GRANT_ROLE_USER), Code.ALREADY_EXISTS)
    assert "delete it first" in message
    assert await d.revision() == revision + 1
    grants = await d.projects(d.token).ListGrants(
        project_service_pb2.ListGrantsRequest(parent="teams/acme/projects/web")
    )
    assert [(g.name, g.role) for g in grants.grants] == [
        ("teams/acme/projects/web/grants/ops", project_pb2.GRANT_ROLE_ADMIN)
    ]

    revision = await d.revision()
    remove = group_service_pb2.RemoveGroupMemberRequest(
        group="teams/acme/groups/ops", user="teams/acme/users/bob"
    )
    await d.groups(d.token).RemoveGroupMember(remove)
    assert await d.revision() == revision + 1
    # Idempotent: removing a non-member succeeds and changes nothing.
    await d.groups(d.token).RemoveGroupMember(remove)
    assert await d.revision() == revision + 1
    await d.projects(d.token).DeleteGrant(
        project_service_pb2.DeleteGrantRequest(name="teams/acme/projects/web/grants/ops")
    )
    assert await d.revision() == revision + 2
    await d.groups(d.token).DeleteGroup(
        group_service_pb2.DeleteGroupRequest(name="teams/acme/groups/ops")
    )
    assert await d.revision() == revision + 3
    assert await d.count(Group) == 0 and await d.count(GroupMember) == 0
    assert len(d.changed) == changes + 5
    assert d.trail.actions()[-5:] == [
        "group.member.add",
        "grant.create",
        "group.member.remove",
        "grant.delete",
        "group.delete",
    ]


async def test_create_project_makes_its_authorities_and_fills_in_defaults(
    directory: Directory,
) -> None:
    d = directory
    project = await d.add_project("web")
    assert project.name == "teams/acme/projects/web"
    assert (project.certificate_ttl_seconds, project.certificate_max_ttl_seconds) == (600, 3600)
    assert project.create_server_users and project.rdp_enabled
    assert not project.permit_port_forwarding and not project.permit_agent_forwarding
    # The switches that default to on are `optional`: unset means on, false means off.
    db = await d.add_project(
        "db", description="web tier", create_server_users=False, certificate_ttl_seconds=7200
    )
    assert (db.description, db.create_server_users, db.rdp_enabled) == ("web tier", False, True)
    assert (db.certificate_ttl_seconds, db.certificate_max_ttl_seconds) == (7200, 7200)
    anchors = await d.platform.stub(
        ca_service_pb2_grpc.CertificateAuthorityServiceStub
    ).GetAuthorities(ca_service_pb2.GetAuthoritiesRequest(project="teams/acme/projects/web"))
    assert anchors.trusted_user_ca_keys.startswith("ssh-")
    assert "-----BEGIN CERTIFICATE-----" in anchors.x509_ca_bundle_pem
    assert len(anchors.authorities) == 3
    await refused(d.add_project("web"), Code.ALREADY_EXISTS)
    assert d.trail.actions() == ["project.create", "project.create"]

    revision = await d.revision()
    updated = await d.projects(d.token).UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=project_pb2.Project(
                name="teams/acme/projects/web",
                certificate_ttl_seconds=300,
                allowed_admin_account_names=["root", "Administrator"],
                create_server_users=False,
            ),
            update_mask=mask(
                "certificate_ttl_seconds", "allowed_admin_account_names", "create_server_users"
            ),
        )
    )
    assert updated.project.certificate_ttl_seconds == 300
    assert list(updated.project.allowed_admin_account_names) == ["root", "Administrator"]
    assert not updated.project.create_server_users
    assert updated.project.rdp_enabled  # not in the mask: unchanged
    assert await d.revision() == revision + 1
    got = await d.projects(d.token).GetProject(
        project_service_pb2.GetProjectRequest(name="teams/acme/projects/web")
    )
    assert got.project == updated.project
    for paths in (("name",), ("colour",), ()):
        await refused(
            d.projects(d.token).UpdateProject(
                project_service_pb2.UpdateProjectRequest(
                    project=project_pb2.Project(name="teams/acme/projects/web"),
                    update_mask=mask(*paths),
                )
            ),
            Code.INVALID_ARGUMENT,
        )

    await d.add_server("web")
    delete = project_service_pb2.DeleteProjectRequest(name="teams/acme/projects/web")
    message = await refused(d.projects(d.token).DeleteProject(delete), Code.FAILED_PRECONDITION)
    assert "server" in message
    async with d.platform.database.sessions.begin() as session:
        server = await session.get(Server, "srv-1")
        await session.delete(server)
    await d.projects(d.token).DeleteProject(delete)
    assert await d.count(Project) == 1
    assert d.trail.actions()[-1] == "project.delete"


async def test_bastions_by_address_or_server_and_required_ones_stay(
    directory: Directory,
) -> None:
    d = directory
    await d.add_project("web")
    server = await d.add_server("web")
    by_address = await d.bastions(d.token).CreateBastion(
        bastion_service_pb2.CreateBastionRequest(
            parent="teams/acme/projects/web",
            bastion_id="jump",
            bastion=bastion_pb2.Bastion(address="jump.example.com", ssh_port=2222),
        )
    )
    assert by_address.bastion.name == "teams/acme/bastions/jump"
    assert (by_address.bastion.address, by_address.bastion.ssh_port) == ("jump.example.com", 2222)
    by_server = await d.bastions(d.token).CreateBastion(
        bastion_service_pb2.CreateBastionRequest(
            parent="teams/acme",
            bastion_id="edge",
            bastion=bastion_pb2.Bastion(server=server),
        )
    )
    assert (by_server.bastion.server, by_server.bastion.ssh_port) == (server, 22)
    listed = await d.bastions(d.token).ListBastions(
        bastion_service_pb2.ListBastionsRequest(parent="teams/acme/projects/web")
    )
    assert [(b.name, b.WhichOneof("target")) for b in listed.bastions] == [
        ("teams/acme/bastions/edge", "server"),
        ("teams/acme/bastions/jump", "address"),
    ]
    assert listed.bastions[0].server == server
    await refused(
        d.bastions(d.token).CreateBastion(
            bastion_service_pb2.CreateBastionRequest(
                parent="teams/acme",
                bastion_id="ghost",
                bastion=bastion_pb2.Bastion(server="teams/acme/projects/web/servers/nope"),
            )
        ),
        Code.NOT_FOUND,
    )

    await d.projects(d.token).UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=project_pb2.Project(
                name="teams/acme/projects/web", required_bastion="teams/acme/bastions/jump"
            ),
            update_mask=mask("required_bastion"),
        )
    )
    delete = bastion_service_pb2.DeleteBastionRequest(name="teams/acme/bastions/jump")
    message = await refused(d.bastions(d.token).DeleteBastion(delete), Code.FAILED_PRECONDITION)
    assert "web" in message
    await d.projects(d.token).UpdateProject(
        project_service_pb2.UpdateProjectRequest(
            project=project_pb2.Project(name="teams/acme/projects/web"),
            update_mask=mask("required_bastion"),
        )
    )
    await d.bastions(d.token).DeleteBastion(delete)
    assert await d.count(Bastion) == 1
    assert d.trail.actions().count("bastion.delete") == 1


# Who may do what ---------------------------------------------------------------------------


async def test_each_role_is_held_to_what_it_may_do(directory: Directory) -> None:
    d = directory
    await d.add_user("bob")
    await d.add_project("web")
    await d.add_project("db")
    await d.add_group("devs", "bob")
    await d.grant("web", "devs", project_pb2.GRANT_ROLE_USER)
    bob = await d.platform.login("acme", "bob")

    # A member reads the directory, sees only granted projects, and changes nothing.
    await d.users(bob).GetUser(user_service_pb2.GetUserRequest(name="teams/acme/users/alice"))
    await d.groups(bob).ListGroups(group_service_pb2.ListGroupsRequest(parent="teams/acme"))
    visible = await d.projects(bob).ListProjects(
        project_service_pb2.ListProjectsRequest(parent="teams/acme")
    )
    assert [p.name for p in visible.projects] == ["teams/acme/projects/web"]
    every = await d.projects(d.token).ListProjects(
        project_service_pb2.ListProjectsRequest(parent="teams/acme")
    )
    assert [p.name for p in every.projects] == ["teams/acme/projects/db", "teams/acme/projects/web"]
    await refused(
        d.projects(bob).GetProject(
            project_service_pb2.GetProjectRequest(name="teams/acme/projects/db")
        ),
        Code.NOT_FOUND,
    )
    message = await refused(
        d.users(bob).CreateUser(
            user_service_pb2.CreateUserRequest(parent="teams/acme", user_id="eve")
        ),
        Code.PERMISSION_DENIED,
    )
    assert "team admin" in message
    update_web = project_service_pb2.UpdateProjectRequest(
        project=project_pb2.Project(name="teams/acme/projects/web", description="mine"),
        update_mask=mask("description"),
    )
    message = await refused(d.projects(bob).UpdateProject(update_web), Code.PERMISSION_DENIED)
    assert "admin grant" in message
    await refused(
        d.projects(bob).ListGrants(
            project_service_pb2.ListGrantsRequest(parent="teams/acme/projects/web")
        ),
        Code.PERMISSION_DENIED,
    )

    # A project admin updates that project (only) and lists its grants, but grants nothing.
    await d.add_group("web-admins", "bob")
    await d.grant("web", "web-admins", project_pb2.GRANT_ROLE_ADMIN)
    await d.projects(bob).UpdateProject(update_web)
    await d.projects(bob).ListGrants(
        project_service_pb2.ListGrantsRequest(parent="teams/acme/projects/web")
    )
    await refused(
        d.projects(bob).UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=project_pb2.Project(name="teams/acme/projects/db", description="x"),
                update_mask=mask("description"),
            )
        ),
        Code.PERMISSION_DENIED,
    )
    message = await refused(
        d.projects(bob).CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent="teams/acme/projects/web",
                grant=project_pb2.ProjectGrant(
                    group="teams/acme/groups/devs", role=project_pb2.GRANT_ROLE_ADMIN
                ),
            )
        ),
        Code.PERMISSION_DENIED,
    )
    assert "team admin" in message

    # Another team's admin cannot reach acme; no token at all is unauthenticated.
    await d.platform.create_team("other", "oscar")
    oscar = await d.platform.login("other", "oscar")
    message = await refused(
        d.users(oscar).GetUser(user_service_pb2.GetUserRequest(name="teams/acme/users/alice")),
        Code.PERMISSION_DENIED,
    )
    assert "belongs to team 'acme'" in message
    teams = await d.teams(oscar).ListTeams(team_service_pb2.ListTeamsRequest())
    assert [t.name for t in teams.teams] == ["teams/other"]
    await refused(
        d.groups().ListGroups(group_service_pb2.ListGroupsRequest(parent="teams/acme")),
        Code.UNAUTHENTICATED,
    )
    await refused(d.teams().ListTeams(team_service_pb2.ListTeamsRequest()), Code.UNAUTHENTICATED)

    # A disabled user's token stops working at once.
    await d.users(d.token).DisableUser(
        user_service_pb2.DisableUserRequest(name="teams/acme/users/bob")
    )
    message = await refused(
        d.groups(bob).ListGroups(group_service_pb2.ListGroupsRequest(parent="teams/acme")),
        Code.PERMISSION_DENIED,
    )
    assert "disabled" in message


# Bad input ---------------------------------------------------------------------------------


async def test_bad_requests_are_refused_and_write_nothing(directory: Directory) -> None:
    d = directory
    await d.add_user("bob")
    await d.add_project("web")
    await d.add_group("ops")
    counts = [await d.count(model) for model in (UserRow, Group, GroupMember, Project, Grant)]
    counts.append(await d.count(Bastion))
    revision = await d.revision()
    audited = len(d.trail.events)
    users, groups, projects, bastions = (
        d.users(d.token),
        d.groups(d.token),
        d.projects(d.token),
        d.bastions(d.token),
    )
    new_user = user_service_pb2.CreateUserRequest
    new_project = project_service_pb2.CreateProjectRequest
    bad: list[Awaitable[Any]] = [
        users.CreateUser(new_user(parent="teams/acme", user_id="Bob")),
        users.CreateUser(new_user(parent="teams/acme", user_id="root")),
        users.CreateUser(new_user(parent="teams/acme", user_id="x" * 33)),
        users.CreateUser(new_user(parent="teams/acme", user_id="")),
        users.CreateUser(
            new_user(parent="teams/acme", user_id="eve", user=user_pb2.User(email="not-an-email"))
        ),
        users.CreateUser(
            new_user(
                parent="teams/acme",
                user_id="eve",
                user=user_pb2.User(windows_account_name="w" * 21),
            )
        ),
        users.CreateUser(
            new_user(parent="teams/acme", user_id="eve", user=user_pb2.User(display_name="d" * 201))
        ),
        users.CreateUser(new_user(parent="teams/acme/users/x", user_id="eve")),
        users.ListUsers(user_service_pb2.ListUsersRequest(parent="teams/acme", page_size=-1)),
        users.ListUsers(user_service_pb2.ListUsersRequest(parent="teams/acme", page_token=DAMAGED)),
        users.UpdateUser(
            user_service_pb2.UpdateUserRequest(
                user=user_pb2.User(name="teams/acme/users/bob", display_name="B")
            )
        ),
        users.UpdateUser(
            user_service_pb2.UpdateUserRequest(
                user=user_pb2.User(
                    name="teams/acme/users/bob", status=user_pb2.USER_STATUS_DISABLED
                ),
                update_mask=mask("status"),
            )
        ),
        groups.CreateGroup(
            group_service_pb2.CreateGroupRequest(parent="teams/acme", group_id="9lives")
        ),
        groups.CreateGroup(
            group_service_pb2.CreateGroupRequest(parent="teams/acme", group_id="sudo")
        ),
        groups.AddGroupMember(
            group_service_pb2.AddGroupMemberRequest(
                group="teams/acme/groups/ops", user="teams/other/users/bob"
            )
        ),
        projects.CreateProject(new_project(parent="teams/acme", project_id="Web")),
        projects.CreateProject(new_project(parent="teams/acme", project_id="web-")),
        projects.CreateProject(
            new_project(
                parent="teams/acme",
                project_id="api",
                project=project_pb2.Project(certificate_ttl_seconds=30),
            )
        ),
        projects.CreateProject(
            new_project(
                parent="teams/acme",
                project_id="api",
                project=project_pb2.Project(certificate_max_ttl_seconds=86401),
            )
        ),
        projects.CreateProject(
            new_project(
                parent="teams/acme",
                project_id="api",
                project=project_pb2.Project(
                    certificate_ttl_seconds=7200, certificate_max_ttl_seconds=3600
                ),
            )
        ),
        projects.CreateProject(
            new_project(
                parent="teams/acme",
                project_id="api",
                project=project_pb2.Project(allowed_admin_account_names=["bad name"]),
            )
        ),
        projects.CreateProject(
            new_project(
                parent="teams/acme",
                project_id="api",
                project=project_pb2.Project(allowed_admin_account_names=["root"] * 2),
            )
        ),
        projects.CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent="teams/acme/projects/web",
                grant=project_pb2.ProjectGrant(group="teams/acme/groups/ops"),
            )
        ),
        projects.CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent="teams/acme/projects/web",
                grant=project_pb2.ProjectGrant(group="ops", role=project_pb2.GRANT_ROLE_USER),
            )
        ),
        projects.UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=project_pb2.Project(
                    name="teams/acme/projects/web", certificate_ttl_seconds=4000
                ),
                update_mask=mask("certificate_ttl_seconds"),
            )
        ),
        bastions.CreateBastion(
            bastion_service_pb2.CreateBastionRequest(parent="teams/acme", bastion_id="b")
        ),
        bastions.CreateBastion(
            bastion_service_pb2.CreateBastionRequest(
                parent="teams/acme",
                bastion_id="b",
                bastion=bastion_pb2.Bastion(address="host:22"),
            )
        ),
        bastions.CreateBastion(
            bastion_service_pb2.CreateBastionRequest(
                parent="teams/acme",
                bastion_id="b",
                bastion=bastion_pb2.Bastion(address="10.0.0.1", ssh_port=70000),
            )
        ),
        bastions.CreateBastion(
            bastion_service_pb2.CreateBastionRequest(
                parent="teams/acme",
                bastion_id="B_1",
                bastion=bastion_pb2.Bastion(address="10.0.0.1"),
            )
        ),
    ]
    messages = [await refused(call, Code.INVALID_ARGUMENT) for call in bad]
    assert all(message and "\n" not in message for message in messages)
    after = [await d.count(model) for model in (UserRow, Group, GroupMember, Project, Grant)]
    after.append(await d.count(Bastion))
    assert after == counts
    assert await d.revision() == revision
    assert len(d.trail.events) == audited
