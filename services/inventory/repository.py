"""Queries over the inventory's directory tables: teams, users, groups, memberships,
projects, grants and bastions. Takes a session; never commits (the servicer owns the
transaction). No protobuf here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, exists, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, FailedPrecondition, InvalidInput, NotFound
from runtime.page_tokens import page_limit
from services.inventory.models import (
    Bastion,
    EnrollmentTokenRow,
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    Server,
    Team,
    User,
    UserKind,
    UserStatus,
)
from services.inventory.names import (
    WINDOWS_NAME_LIMIT,
    check_team_name,
    check_user_name,
    check_windows_account_name,
)

__all__ = [
    "FIRST_GID",
    "FIRST_UID",
    "ListedBastion",
    "add_member",
    "admin_project_names",
    "bump_accounts_revision",
    "count_active_team_admins",
    "count_servers",
    "create_bastion",
    "create_grant",
    "create_group",
    "create_project",
    "create_team",
    "create_user",
    "delete_bastion",
    "delete_grant",
    "delete_group",
    "delete_project",
    "find_user",
    "get_bastion",
    "get_grant",
    "get_group",
    "get_project",
    "get_server",
    "get_team",
    "get_user",
    "group_exists",
    "is_member",
    "list_bastions",
    "list_grants",
    "list_groups",
    "list_members",
    "list_projects",
    "list_users",
    "member_count",
    "project_exists",
    "project_visible_to",
    "projects_requiring_bastion",
    "remove_member",
    "server_project_name",
    "update_row",
    "user_exists",
    "windows_name_taken",
]

# Platform-allocated ids start above the ranges distributions hand out locally.
FIRST_UID = 60001
FIRST_GID = 63001

_DAMAGED_PAGE = "page_token is not valid; pass next_page_token from the previous response unchanged"


# Teams -------------------------------------------------------------------------------------


async def get_team(session: AsyncSession, name: str) -> Team:
    """Return the team called `name`, or raise NotFound."""
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(f"team {name!r} does not exist")
    return team


async def create_team(session: AsyncSession, name: str) -> Team:
    """Create team `name`, refusing a name already taken."""
    check_team_name(name)
    if await session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise Conflict(f"team {name!r} already exists")
    team = Team(name=name)
    session.add(team)
    await session.flush()
    return team


async def bump_accounts_revision(session: AsyncSession, team: Team) -> None:
    """Add 1 to the team's accounts revision (in the caller's transaction).

    On PostgreSQL the UPDATE also row-locks the team until commit, so directory changes
    of one team that run it first are serialized: uid allocation and the last-admin
    check then read what the previous change committed.
    """
    await session.execute(
        update(Team)
        .where(Team.id == team.id)
        .values(accounts_revision=Team.accounts_revision + 1)
        .execution_options(synchronize_session=False)
    )


# Users -------------------------------------------------------------------------------------


async def get_user(session: AsyncSession, team: Team, name: str) -> User:
    """Return user `name` of `team`, or raise NotFound."""
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} does not exist in team {team.name!r}")
    return user


async def find_user(session: AsyncSession, team_name: str, name: str) -> User | None:
    """Return user `name` of the team called `team_name`, or None (one query)."""
    return await session.scalar(
        select(User)
        .join(Team, Team.id == User.team_id)
        .where(Team.name == team_name, User.name == name)
    )


async def user_exists(session: AsyncSession, team: Team, name: str) -> bool:
    """Return whether `team` has a user called `name`."""
    return bool(
        await session.scalar(select(exists().where(User.team_id == team.id, User.name == name)))
    )


async def windows_name_taken(
    session: AsyncSession, team: Team, name: str, *, other_than: str | None = None
) -> bool:
    """Return whether a user of `team` (other than user id `other_than`) has Windows name
    `name`, compared case-insensitively as Windows does."""
    query = select(User.id).where(
        User.team_id == team.id, func.lower(User.windows_name) == name.lower()
    )
    if other_than is not None:
        query = query.where(User.id != other_than)
    return await session.scalar(query.limit(1)) is not None


def _windows_candidates(name: str) -> Iterator[str]:
    yield name[:WINDOWS_NAME_LIMIT]
    for number in range(1, 10_000):
        suffix = str(number)
        yield name[: WINDOWS_NAME_LIMIT - len(suffix)] + suffix


async def _derive_windows_name(session: AsyncSession, team: Team, name: str) -> str:
    """Return `name` truncated to 20 characters, made unique in the team with a number."""
    for candidate in _windows_candidates(name):
        try:
            check_windows_account_name(candidate)
        except InvalidInput:
            continue
        if not await windows_name_taken(session, team, candidate):
            return candidate
    raise Conflict(f"no free Windows account name derives from {name!r}; set one explicitly")


async def create_user(
    session: AsyncSession,
    team: Team,
    name: str,
    *,
    team_admin: bool,
    kind: UserKind = UserKind.HUMAN,
    display_name: str = "",
    email: str = "",
    windows_name: str | None = None,
    now: dt.datetime | None = None,
) -> User:
    """Create a user with the next free unix uid/gid of the team.

    Concurrent creations race for the same id; the unique constraints make the loser's
    transaction fail (IntegrityError) rather than hand out one id twice, and the caller
    retries in a fresh transaction. Without `windows_name`, one is derived from `name`.
    """
    check_user_name(name)
    if await user_exists(session, team, name):
        raise Conflict(f"user {name!r} already exists in team {team.name!r}")
    if await group_exists(session, team, name):
        raise Conflict(
            f"team {team.name!r} has a group called {name!r}; a user's name is also its "
            "primary unix group on servers, so choose another user name"
        )
    if windows_name is None:
        windows_name = await _derive_windows_name(session, team, name)
    elif await windows_name_taken(session, team, windows_name):
        raise Conflict(
            f"Windows account name {windows_name!r} is already used in team {team.name!r}; "
            "choose another, or leave it empty to derive one"
        )
    highest_uid, highest_gid = (
        await session.execute(
            select(func.max(User.unix_uid), func.max(User.unix_gid)).where(User.team_id == team.id)
        )
    ).one()
    user = User(
        team_id=team.id,
        name=name,
        unix_uid=max(FIRST_UID, (highest_uid or 0) + 1),
        unix_gid=max(FIRST_GID, (highest_gid or 0) + 1),
        windows_name=windows_name,
        team_admin=team_admin,
        kind=kind,
        display_name=display_name,
        email=email,
    )
    if now is not None:
        user.created_at = now
    session.add(user)
    await session.flush()
    return user


async def list_users(
    session: AsyncSession,
    team: Team,
    *,
    status: UserStatus | None,
    kind: UserKind | None,
    page_size: int,
    page_token: str,
    digest: str,
) -> tuple[list[User], str]:
    """Return one page of `team`'s users (optionally of one status and kind), by name."""
    query = select(User).where(User.team_id == team.id)
    if status is not None:
        query = query.where(User.status == status)
    if kind is not None:
        query = query.where(User.kind == kind)
    rows, token = await _page_by_name(
        session, query, User.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [row[0] for row in rows], token


async def count_active_team_admins(session: AsyncSession, team: Team) -> int:
    """Return how many active people administer `team` (service users do not count)."""
    return int(
        await session.scalar(
            select(func.count())
            .select_from(User)
            .where(
                User.team_id == team.id,
                User.team_admin.is_(True),
                User.status == UserStatus.ACTIVE,
                User.kind == UserKind.HUMAN,
            )
        )
        or 0
    )


async def admin_project_names(session: AsyncSession, user_id: str) -> frozenset[str]:
    """Return the names of the projects where one of the user's groups has an ADMIN grant."""
    names = await session.scalars(
        select(Project.name)
        .join(Grant, Grant.project_id == Project.id)
        .join(GroupMember, GroupMember.group_id == Grant.group_id)
        .where(GroupMember.user_id == user_id, Grant.role == GrantRole.ADMIN)
        .distinct()
    )
    return frozenset(names)


def update_row(row: Any, changes: Mapping[str, object], now: dt.datetime) -> None:
    """Set `changes` (column → value) on a loaded user or project row and its update time."""
    for column, value in changes.items():
        setattr(row, column, value)
    row.updated_at = now


# Groups and memberships --------------------------------------------------------------------


async def group_exists(session: AsyncSession, team: Team, name: str) -> bool:
    """Return whether `team` has a group called `name`."""
    return bool(
        await session.scalar(select(exists().where(Group.team_id == team.id, Group.name == name)))
    )


async def get_group(session: AsyncSession, team: Team, name: str) -> Group:
    """Return group `name` of `team`, or raise NotFound."""
    group = await session.scalar(select(Group).where(Group.team_id == team.id, Group.name == name))
    if group is None:
        raise NotFound(f"group {name!r} does not exist in team {team.name!r}")
    return group


async def create_group(
    session: AsyncSession, team: Team, name: str, *, description: str, now: dt.datetime
) -> Group:
    """Create group `name` in `team`, refusing a name taken by a group or a user."""
    if await group_exists(session, team, name):
        raise Conflict(f"group {name!r} already exists in team {team.name!r}")
    if await user_exists(session, team, name):
        raise Conflict(
            f"team {team.name!r} has a user called {name!r}, whose primary unix group on "
            "servers has that name; choose another group name"
        )
    group = Group(team_id=team.id, name=name, description=description, created_at=now)
    session.add(group)
    await session.flush()
    return group


def _member_count() -> Any:
    return (
        select(func.count())
        .select_from(GroupMember)
        .where(GroupMember.group_id == Group.id)
        .scalar_subquery()
    )


async def member_count(session: AsyncSession, group: Group) -> int:
    """Return how many users belong to `group`."""
    return int(
        await session.scalar(
            select(func.count()).select_from(GroupMember).where(GroupMember.group_id == group.id)
        )
        or 0
    )


async def list_groups(
    session: AsyncSession, team: Team, *, page_size: int, page_token: str, digest: str
) -> tuple[list[tuple[Group, int]], str]:
    """Return one page of `team`'s groups with their member counts, by name."""
    query = select(Group, _member_count()).where(Group.team_id == team.id)
    rows, token = await _page_by_name(
        session, query, Group.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [(row[0], int(row[1])) for row in rows], token


async def delete_group(session: AsyncSession, group: Group) -> None:
    """Delete `group` with its memberships and grants."""
    await session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
    await session.execute(delete(Grant).where(Grant.group_id == group.id))
    await session.execute(delete(Group).where(Group.id == group.id))


async def add_member(
    session: AsyncSession, group: Group, user: User, *, now: dt.datetime
) -> tuple[GroupMember, bool]:
    """Add `user` to `group`; return the membership and whether it is new."""
    existing = await session.get(GroupMember, (group.id, user.id))
    if existing is not None:
        return existing, False
    member = GroupMember(group_id=group.id, user_id=user.id, created_at=now)
    session.add(member)
    await session.flush()
    return member, True


async def is_member(session: AsyncSession, group: Group, user: User) -> bool:
    """Return whether `user` is a member of `group`."""
    found = await session.scalar(
        select(GroupMember.user_id).where(
            GroupMember.group_id == group.id, GroupMember.user_id == user.id
        )
    )
    return found is not None


async def remove_member(session: AsyncSession, group: Group, user: User) -> None:
    """Remove `user` from `group` (nothing happens if it is not a member)."""
    await session.execute(
        delete(GroupMember).where(GroupMember.group_id == group.id, GroupMember.user_id == user.id)
    )


async def list_members(
    session: AsyncSession, group: Group, *, page_size: int, page_token: str, digest: str
) -> tuple[list[tuple[str, dt.datetime]], str]:
    """Return one page of `group`'s members as (user name, time added), by user name."""
    query = (
        select(User.name, GroupMember.created_at)
        .join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == group.id)
    )
    rows, token = await _page_by_name(
        session, query, User.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [(str(row[0]), row[1]) for row in rows], token


# Projects and grants -----------------------------------------------------------------------


async def project_exists(session: AsyncSession, team: Team, name: str) -> bool:
    """Return whether `team` has a project called `name`."""
    return bool(
        await session.scalar(
            select(exists().where(Project.team_id == team.id, Project.name == name))
        )
    )


async def get_project(session: AsyncSession, team: Team, name: str) -> Project:
    """Return project `name` of `team`, or raise NotFound."""
    project = await session.scalar(
        select(Project).where(Project.team_id == team.id, Project.name == name)
    )
    if project is None:
        raise NotFound(f"project {name!r} does not exist in team {team.name!r}")
    return project


async def create_project(
    session: AsyncSession,
    team: Team,
    name: str,
    settings: Mapping[str, object],
    *,
    now: dt.datetime,
) -> Project:
    """Create project `name` of `team` with `settings` (column → value)."""
    if await project_exists(session, team, name):
        raise Conflict(f"project {name!r} already exists in team {team.name!r}")
    project = Project(team_id=team.id, name=name, created_at=now, **settings)
    session.add(project)
    await session.flush()
    return project


def _granted_to(user_id: str) -> ColumnElement[bool]:
    return exists().where(
        Grant.project_id == Project.id,
        Grant.group_id == GroupMember.group_id,
        GroupMember.user_id == user_id,
    )


async def project_visible_to(session: AsyncSession, project: Project, user_id: str) -> bool:
    """Return whether one of the user's groups has a grant on `project`."""
    return bool(await session.scalar(select(_granted_to(user_id)).where(Project.id == project.id)))


async def list_projects(
    session: AsyncSession,
    team: Team,
    *,
    granted_to: str | None,
    page_size: int,
    page_token: str,
    digest: str,
) -> tuple[list[Project], str]:
    """Return one page of `team`'s projects, by name; with `granted_to` (a user id), only
    those one of that user's groups has a grant on."""
    query = select(Project).where(Project.team_id == team.id)
    if granted_to is not None:
        query = query.where(_granted_to(granted_to))
    rows, token = await _page_by_name(
        session, query, Project.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [row[0] for row in rows], token


async def count_servers(session: AsyncSession, project: Project) -> int:
    """Return how many servers are enrolled in `project`."""
    return int(
        await session.scalar(
            select(func.count()).select_from(Server).where(Server.project_id == project.id)
        )
        or 0
    )


async def delete_project(session: AsyncSession, project: Project) -> None:
    """Delete `project` with its grants and enrollment tokens; refuse while it has servers."""
    servers = await count_servers(session, project)
    if servers:
        raise FailedPrecondition(
            f"project {project.name!r} still has {servers} enrolled server(s); delete them "
            "first (`sft admin server delete`), then delete the project"
        )
    await session.execute(delete(Grant).where(Grant.project_id == project.id))
    await session.execute(
        delete(EnrollmentTokenRow).where(EnrollmentTokenRow.project_id == project.id)
    )
    await session.execute(delete(Project).where(Project.id == project.id))


async def create_grant(
    session: AsyncSession, project: Project, group: Group, role: GrantRole, *, now: dt.datetime
) -> Grant:
    """Grant `group` `role` on `project`; refuse a second grant for the same group."""
    taken = await session.scalar(
        select(Grant.role).where(Grant.project_id == project.id, Grant.group_id == group.id)
    )
    if taken is not None:
        raise Conflict(
            f"group {group.name!r} already has a {taken.value} grant on project "
            f"{project.name!r}; delete it first to change the role"
        )
    grant = Grant(project_id=project.id, group_id=group.id, role=role, created_at=now)
    session.add(grant)
    await session.flush()
    return grant


async def get_grant(session: AsyncSession, project: Project, group: Group) -> Grant:
    """Return `group`'s grant on `project`, or raise NotFound."""
    grant = await session.scalar(
        select(Grant).where(Grant.project_id == project.id, Grant.group_id == group.id)
    )
    if grant is None:
        raise NotFound(f"group {group.name!r} has no grant on project {project.name!r}")
    return grant


async def list_grants(
    session: AsyncSession, project: Project, *, page_size: int, page_token: str, digest: str
) -> tuple[list[tuple[Grant, str]], str]:
    """Return one page of `project`'s grants with their group names, by group name."""
    query = (
        select(Grant, Group.name)
        .join(Group, Group.id == Grant.group_id)
        .where(Grant.project_id == project.id)
    )
    rows, token = await _page_by_name(
        session, query, Group.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [(row[0], str(row[1])) for row in rows], token


async def delete_grant(session: AsyncSession, grant: Grant) -> None:
    """Delete `grant`."""
    await session.execute(delete(Grant).where(Grant.id == grant.id))


# Bastions ----------------------------------------------------------------------------------

#: A bastion and, when it is an enrolled server, that server's project name.
ListedBastion = tuple[Bastion, str | None]


async def get_server(session: AsyncSession, team: Team, project: str, server_id: str) -> Server:
    """Return server `server_id` of project `project` of `team`, or raise NotFound."""
    server = await session.scalar(
        select(Server)
        .join(Project, Project.id == Server.project_id)
        .where(Server.team_id == team.id, Project.name == project, Server.id == server_id)
    )
    if server is None:
        raise NotFound(
            f"server {server_id!r} is not enrolled in project {project!r} of team {team.name!r}"
        )
    return server


async def get_bastion(session: AsyncSession, team: Team, name: str) -> Bastion:
    """Return bastion `name` of `team`, or raise NotFound."""
    bastion = await session.scalar(
        select(Bastion).where(Bastion.team_id == team.id, Bastion.name == name)
    )
    if bastion is None:
        raise NotFound(f"bastion {name!r} does not exist in team {team.name!r}")
    return bastion


async def create_bastion(
    session: AsyncSession,
    team: Team,
    name: str,
    *,
    server_id: str | None,
    address: str,
    ssh_port: int,
    description: str,
    now: dt.datetime,
) -> Bastion:
    """Create bastion `name` of `team` (an enrolled server, or an address)."""
    taken = await session.scalar(
        select(exists().where(Bastion.team_id == team.id, Bastion.name == name))
    )
    if taken:
        raise Conflict(f"bastion {name!r} already exists in team {team.name!r}")
    bastion = Bastion(
        team_id=team.id,
        name=name,
        server_id=server_id,
        address=address,
        ssh_port=ssh_port,
        description=description,
        created_at=now,
    )
    session.add(bastion)
    await session.flush()
    return bastion


async def list_bastions(
    session: AsyncSession, team: Team, *, page_size: int, page_token: str, digest: str
) -> tuple[list[ListedBastion], str]:
    """Return one page of `team`'s bastions (with server bastions' project names), by name."""
    query = (
        select(Bastion, Project.name)
        .outerjoin(Server, Server.id == Bastion.server_id)
        .outerjoin(Project, Project.id == Server.project_id)
        .where(Bastion.team_id == team.id)
    )
    rows, token = await _page_by_name(
        session, query, Bastion.name, page_size=page_size, page_token=page_token, digest=digest
    )
    return [(row[0], row[1]) for row in rows], token


async def server_project_name(session: AsyncSession, server_id: str) -> str | None:
    """Return the name of the project server `server_id` is enrolled in, if any."""
    return await session.scalar(
        select(Project.name)
        .join(Server, Server.project_id == Project.id)
        .where(Server.id == server_id)
    )


async def projects_requiring_bastion(session: AsyncSession, team: Team, name: str) -> list[str]:
    """Return the names of `team`'s projects whose required bastion is `name`."""
    names = await session.scalars(
        select(Project.name)
        .where(Project.team_id == team.id, Project.required_bastion == name)
        .order_by(Project.name)
    )
    return list(names)


async def delete_bastion(session: AsyncSession, bastion: Bastion) -> None:
    """Delete `bastion`."""
    await session.execute(delete(Bastion).where(Bastion.id == bastion.id))


# Paging by name ----------------------------------------------------------------------------


def _encode_after(name: str, digest: str) -> str:
    payload = json.dumps({"a": name, "f": digest})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_after(token: str, digest: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, token_digest = payload["a"], payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInput(_DAMAGED_PAGE) from None
    if not isinstance(after, str) or token_digest != digest:
        raise InvalidInput(
            "page_token was made for a different listing or filters; repeat the request "
            "with the same parent and filters, or start again without a page_token"
        )
    return after


async def _page_by_name(
    session: AsyncSession,
    query: Select[*tuple[Any, ...]],
    key: Any,
    *,
    page_size: int,
    page_token: str,
    digest: str,
) -> tuple[Sequence[Row[*tuple[Any, ...]]], str]:
    """Return one page of `query` ordered by the unique-in-scope column `key`, and the
    token for the next page (bound to `digest`, the listing's scope and filters)."""
    limit = page_limit(page_size)
    if page_token:
        query = query.where(key > _decode_after(page_token, digest))
    rows = (await session.execute(query.add_columns(key).order_by(key).limit(limit + 1))).all()
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], _encode_after(str(rows[limit - 1][-1]), digest)
