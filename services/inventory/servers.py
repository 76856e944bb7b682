"""Queries over enrolled servers and the names they answer to: who sees which project,
get, list, update, delete and the agent's heartbeat.

Takes a session and never commits (the servicer owns the transaction); no protobuf.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Select, delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import NotFound
from runtime.page_tokens import decode_page_token, encode_page_token, filter_digest, page_limit
from services.inventory.fleet_rules import (
    ServerChanges,
    ServerFacts,
    host_principals,
    server_names,
    server_resource,
)
from services.inventory.models import (
    Grant,
    GroupMember,
    Project,
    Server,
    ServerName,
    Team,
    User,
    UserStatus,
)

__all__ = [
    "ServerView",
    "Viewer",
    "agent_server",
    "apply_configured",
    "apply_reported",
    "bump_accounts_revision",
    "delete_server",
    "get_project",
    "get_server",
    "list_servers",
    "record_heartbeat",
    "servers_with_project",
    "sync_names",
    "team_revision",
    "update_server",
    "viewer_for",
]


async def get_project(session: AsyncSession, team: Team, name: str) -> Project:
    """Return project `name` of `team`, or raise NotFound."""
    project = await session.scalar(
        select(Project).where(Project.team_id == team.id, Project.name == name)
    )
    if project is None:
        raise NotFound(
            f"project {name!r} does not exist in team {team.name!r}; list projects with "
            "`sft admin project list`"
        )
    return project


async def team_revision(session: AsyncSession, team_id: str) -> int | None:
    """Return the team's accounts revision, or None if the team is gone."""
    return await session.scalar(select(Team.accounts_revision).where(Team.id == team_id))


async def bump_accounts_revision(session: AsyncSession, team_id: str) -> None:
    """Advance the team's accounts revision (in the caller's transaction)."""
    await session.execute(
        update(Team).where(Team.id == team_id).values(accounts_revision=Team.accounts_revision + 1)
    )


@dataclass(frozen=True)
class Viewer:
    """Which of a team's projects a caller may see: every one (None), or these ids."""

    project_ids: frozenset[str] | None

    def sees(self, project_id: str) -> bool:
        """Return whether servers of `project_id` are visible."""
        return self.project_ids is None or project_id in self.project_ids


async def viewer_for(session: AsyncSession, team: Team, user_name: str | None) -> Viewer:
    """Return what `user_name` may see (None: a platform service, which sees everything).

    Team admins see every project; other people the projects their groups are granted.
    """
    if user_name is None:
        return Viewer(None)
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == user_name))
    if user is None or user.status is not UserStatus.ACTIVE:
        return Viewer(frozenset())
    if user.team_admin:
        return Viewer(None)
    granted = await session.scalars(
        select(Grant.project_id)
        .join(GroupMember, GroupMember.group_id == Grant.group_id)
        .where(GroupMember.user_id == user.id)
        .distinct()
    )
    return Viewer(frozenset(granted))


@dataclass(frozen=True)
class ServerView:
    """A server row with the names of its team and project (what its resource name needs)."""

    row: Server
    team: str
    project: str

    @property
    def name(self) -> str:
        """Return the server's resource name."""
        return server_resource(self.team, self.project, self.row.id)

    @property
    def project_name(self) -> str:
        """Return the project's resource name."""
        return f"teams/{self.team}/projects/{self.project}"


def servers_with_project() -> Select[Server, str]:
    """Return a query for servers with their project's name."""
    return select(Server, Project.name).join(Project, Project.id == Server.project_id)


async def get_server(
    session: AsyncSession, team: Team, project: str, server_id: str, viewer: Viewer
) -> ServerView:
    """Return a server the viewer may see, or raise NotFound (also when it may not)."""
    found = (
        await session.execute(
            servers_with_project().where(
                Server.id == server_id.lower(),
                Server.team_id == team.id,
                Project.name == project,
            )
        )
    ).first()
    if found is None or not viewer.sees(found[0].project_id):
        raise NotFound(
            f"server {server_id!r} does not exist in project {project!r} (or you have no grant "
            "on that project); find servers with `sft list-servers`"
        )
    return ServerView(found[0], team.name, found[1])


async def agent_server(session: AsyncSession, team_name: str, server_id: str) -> ServerView:
    """Return the calling agent's server, or NotFound if it was deleted."""
    found = (
        await session.execute(
            servers_with_project()
            .join(Team, Team.id == Server.team_id)
            .where(Server.id == server_id, Team.name == team_name)
        )
    ).first()
    if found is None:
        raise NotFound(
            "this server is no longer enrolled (it was deleted); enroll it again with a new "
            "enrollment token from a project admin"
        )
    return ServerView(found[0], team_name, found[1])


async def list_servers(
    session: AsyncSession,
    team: Team,
    *,
    project: Project | None,
    viewer: Viewer,
    selector: Mapping[str, str],
    os: str,
    page_size: int,
    page_token: str,
) -> tuple[list[ServerView], str]:
    """Return one page of servers, newest first, and the next page token.

    Walks the (team|project, created_at, id) index backwards; labels and OS filter rows
    in the database, so a page costs one indexed range scan even with 100k servers.
    """
    size = page_limit(page_size)
    query = servers_with_project()
    if project is not None:
        query = query.where(Server.project_id == project.id)
    else:
        query = query.where(Server.team_id == team.id)
        if viewer.project_ids is not None:
            if not viewer.project_ids:
                return [], ""
            query = query.where(Server.project_id.in_(sorted(viewer.project_ids)))
    if os:
        query = query.where(Server.os == os)
    for key, value in sorted(selector.items()):
        query = query.where(Server.labels[key].as_string() == value)
    digest = filter_digest(
        "servers", team.id, project.id if project else "-", sorted(selector.items()), os
    )
    if page_token:
        after_time, after_id = decode_page_token(page_token, digest)
        query = query.where(
            # Row-value comparison: PostgreSQL uses the (…, created_at, id) index for it.
            tuple_(Server.created_at, Server.id) < (after_time, after_id)
        )
    ordered = query.order_by(Server.created_at.desc(), Server.id.desc()).limit(size + 1)
    rows = list(await session.execute(ordered))
    views = [ServerView(row, team.name, project_name) for row, project_name in rows[:size]]
    if len(rows) <= size:
        return views, ""
    last = views[-1].row
    return views, encode_page_token(last.created_at, last.id, digest)


async def sync_names(session: AsyncSession, row: Server) -> None:
    """Make the ServerName rows match the server's names (one row per name)."""
    wanted = server_names(row)
    existing = set(
        await session.scalars(select(ServerName.name).where(ServerName.server_id == row.id))
    )
    stale = existing - wanted
    if stale:
        await session.execute(
            delete(ServerName).where(ServerName.server_id == row.id, ServerName.name.in_(stale))
        )
    for name in sorted(wanted - existing):
        session.add(ServerName(server_id=row.id, name=name, team_id=row.team_id))
    await session.flush()


def apply_reported(row: Server, facts: ServerFacts) -> None:
    """Copy what only the agent knows (OS, addresses, ports, version) onto the row."""
    row.hostname = facts.hostname
    row.os = facts.os
    row.addresses = list(facts.addresses)
    row.ssh_port = facts.ssh_port
    row.broker_port = facts.broker_port
    row.agent_version = facts.agent_version


def apply_configured(row: Server, facts: ServerFacts) -> None:
    """Copy the sftd.yaml fields an admin may also set (names, labels, access, bastion)."""
    row.canonical_name = facts.canonical_name
    row.alt_names = list(facts.alt_names)
    row.labels = dict(facts.labels)
    row.access_address = facts.access_address
    row.bastion = facts.bastion


async def update_server(
    session: AsyncSession, view: ServerView, changes: ServerChanges, now: dt.datetime
) -> ServerView:
    """Apply an admin's (checked) changes and keep the server's names in sync."""
    row = view.row
    if changes.canonical_name is not None:
        row.canonical_name = changes.canonical_name
    if changes.alt_names is not None:
        row.alt_names = list(changes.alt_names)
    if changes.labels is not None:
        row.labels = dict(changes.labels)
    if changes.access_address is not None:
        row.access_address = changes.access_address
    if changes.bastion is not None:
        row.bastion = changes.bastion
    row.updated_at = now
    await session.flush()
    await sync_names(session, row)
    return view


async def delete_server(session: AsyncSession, view: ServerView) -> None:
    """Delete a server and its names, and bump the team's accounts revision.

    The bump is how every replica's WatchAccounts hub learns the server is gone, so its
    agent's account stream ends.
    """
    await session.execute(delete(ServerName).where(ServerName.server_id == view.row.id))
    await session.execute(delete(Server).where(Server.id == view.row.id))
    await bump_accounts_revision(session, view.row.team_id)


async def record_heartbeat(
    session: AsyncSession, view: ServerView, facts: ServerFacts, now: dt.datetime
) -> bool:
    """Store an agent's reported facts and its last-seen time.

    Returns whether the names clients dial changed (the host certificates need renewing).
    The sftd.yaml fields an admin can also set are not overwritten here: without a record
    of what the agent reported last, a heartbeat could not tell an sftd.yaml change from
    an admin's change, and the admin's would be lost within a minute.
    """
    row = view.row
    before = host_principals(row)
    apply_reported(row, facts)
    row.last_seen_at = now
    changed = host_principals(row) != before
    if changed:
        row.updated_at = now
        await sync_names(session, row)
    await session.flush()
    return changed
