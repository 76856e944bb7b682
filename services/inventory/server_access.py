"""Which server a name means, and who may reach it: ResolveServer's lookup and the access
decision (role, account, bastion hops) behind IssueCredentials.

Takes a session and never commits; no protobuf.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from services.inventory.desired_accounts import DesiredAccount, own_account
from services.inventory.fleet_rules import MAX_NAME_CHARS
from services.inventory.models import (
    Bastion,
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    Server,
    ServerName,
    Team,
    User,
    UserStatus,
)
from services.inventory.servers import ServerView, Viewer, get_server, servers_with_project

__all__ = [
    "AccessDecision",
    "Ambiguous",
    "Hop",
    "bastion_hops",
    "check_server_access",
    "resolve_server",
]

_CLOSE_MATCH_POOL = 20_000
_MAX_CANDIDATES = 20


@dataclass(frozen=True)
class Ambiguous:
    """More than one server answers to a query (in its deciding tier)."""

    query: str
    candidates: tuple[ServerView, ...]

    def message(self) -> str:
        """Return the sentence that names the candidates and says how to pick one."""
        shown = ", ".join(
            f"{view.row.canonical_name} (project {view.project}, id {view.row.id})"
            for view in self.candidates[:5]
        )
        more = f" and {len(self.candidates) - 5} more" if len(self.candidates) > 5 else ""
        return (
            f"{self.query!r} names {len(self.candidates)} servers: {shown}{more}; use the "
            "server id, or narrow it with `--project`"
        )


def _tier(row: Server, query: str) -> int:
    """Return which ResolveServer tier `query` matches `row` in (5: an address)."""
    if row.canonical_name == query:
        return 2
    if row.hostname == query:
        return 3
    if query in row.alt_names:
        return 4
    return 5


async def resolve_server(
    session: AsyncSession,
    team: Team,
    query: str,
    *,
    viewer: Viewer,
    project: Project | None = None,
) -> ServerView | Ambiguous:
    """Return the one server `query` names among those the viewer may see, or Ambiguous.

    By id (or resource name) first, then by one indexed lookup of the ServerName table;
    the best tier (canonical name, hostname, alt name, address) decides. Raises NotFound
    with up to three close matches among the names the viewer may see.
    """
    text = query.strip()
    if not text:
        raise InvalidInput("query is required: a server name, alias, address or id")
    if len(text) > MAX_NAME_CHARS:
        raise InvalidInput(f"query is longer than {MAX_NAME_CHARS} characters")
    wanted = text.lower()
    server_id = wanted.rsplit("/servers/", 1)[-1] if wanted.startswith("teams/") else wanted

    def allowed(query: Select[Server, str]) -> Select[Server, str]:
        """Limit `query` to the team, the project asked for and what the viewer sees."""
        query = query.where(Server.team_id == team.id)
        if project is not None:
            query = query.where(Server.project_id == project.id)
        if viewer.project_ids is not None:
            query = query.where(Server.project_id.in_(sorted(viewer.project_ids)))
        return query

    by_id = (
        await session.execute(allowed(servers_with_project().where(Server.id == server_id)))
    ).first()
    if by_id is not None:
        return ServerView(by_id[0], team.name, by_id[1])
    named = (
        await session.execute(
            allowed(
                servers_with_project()
                .join(ServerName, ServerName.server_id == Server.id)
                .where(ServerName.team_id == team.id, ServerName.name == wanted)
            ).limit(500)
        )
    ).all()
    views = [ServerView(row, team.name, project_name) for row, project_name in named]
    if not views:
        raise NotFound(await _not_found_message(session, team, wanted, viewer, project))
    best = min(_tier(view.row, wanted) for view in views)
    chosen = sorted(
        (view for view in views if _tier(view.row, wanted) == best),
        key=lambda view: (view.project, view.row.canonical_name, view.row.id),
    )
    if len(chosen) == 1:
        return chosen[0]
    return Ambiguous(text, tuple(chosen[:_MAX_CANDIDATES]))


async def _not_found_message(
    session: AsyncSession, team: Team, wanted: str, viewer: Viewer, project: Project | None
) -> str:
    """Return the NOT_FOUND sentence, with up to three close visible names."""
    names = select(ServerName.name).where(ServerName.team_id == team.id)
    if project is not None or viewer.project_ids is not None:
        names = names.join(Server, Server.id == ServerName.server_id)
        if project is not None:
            names = names.where(Server.project_id == project.id)
        if viewer.project_ids is not None:
            names = names.where(Server.project_id.in_(sorted(viewer.project_ids)))
    pool = sorted(set(await session.scalars(names.limit(_CLOSE_MATCH_POOL))))
    close = difflib.get_close_matches(wanted, pool, n=3)
    where = f"project {project.name!r}" if project is not None else f"team {team.name!r}"
    message = f"no server you can see in {where} is called {wanted!r}"
    if close:
        return f"{message}; did you mean {', '.join(close)}?"
    return f"{message}; list servers with `sft list-servers`"


@dataclass(frozen=True)
class Hop:
    """One jump on the way to a server: an enrolled server or a plain address."""

    server: str
    address: str
    ssh_port: int


@dataclass(frozen=True)
class AccessDecision:
    """A user may reach a server: with which role, as which account, through which hops."""

    server: ServerView
    project: Project
    user: User
    role: GrantRole
    account: DesiredAccount
    hops: tuple[Hop, ...]


async def check_server_access(
    session: AsyncSession,
    team: Team,
    *,
    project: str,
    server_id: str,
    user_name: str,
    account_name: str,
) -> AccessDecision:
    """Decide whether `user_name` may reach the server, and as which account.

    Raises NotFound (no such server or user), FailedPrecondition (the user is disabled,
    or a named bastion does not exist) or PermissionDenied saying what is missing.
    """
    view = await get_server(session, team, project, server_id, Viewer(None))
    project_row = await session.get_one(Project, view.row.project_id)
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == user_name))
    if user is None:
        raise NotFound(f"user {user_name!r} does not exist in team {team.name!r}")
    if user.status is not UserStatus.ACTIVE:
        raise FailedPrecondition(
            f"user {user_name!r} is disabled in team {team.name!r}; a team admin can enable "
            "them again"
        )
    grants = (
        await session.execute(
            select(Group.name, Grant.role)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .join(Grant, Grant.group_id == Group.id)
            .where(GroupMember.user_id == user.id, Grant.project_id == project_row.id)
        )
    ).all()
    held = list(grants)
    if not held:
        raise PermissionDenied(
            f"user {user_name!r} has no grant on project {project_row.name!r}; a team admin "
            f"can grant one of their groups: `sft admin project grant GROUP {project_row.name}`"
        )
    role = GrantRole.ADMIN if any(r is GrantRole.ADMIN for _, r in held) else GrantRole.USER
    own = own_account(user, (group for group, _ in held), role is GrantRole.ADMIN)
    wanted = account_name.strip()
    if wanted in ("", user.name) or (view.row.os == "windows" and wanted == user.windows_name):
        account = own
    else:
        account = _admin_account(project_row, user, role, wanted)
    hops = await bastion_hops(session, team, project_row, view)
    return AccessDecision(view, project_row, user, role, account, hops)


def _admin_account(project: Project, user: User, role: GrantRole, name: str) -> DesiredAccount:
    """Return a shared admin account (e.g. root) if the user and project allow it."""
    allowed = list(project.allowed_admin_account_names or [])
    if role is not GrantRole.ADMIN:
        raise PermissionDenied(
            f"logging in as {name!r} needs an admin grant on project {project.name!r}; "
            f"user {user.name!r} holds a user grant only (log in as {user.name!r} instead)"
        )
    if name not in allowed:
        listed = ", ".join(repr(a) for a in allowed) if allowed else "none"
        raise PermissionDenied(
            f"project {project.name!r} does not allow logging in as {name!r} (allowed admin "
            f"account names: {listed}); a project admin can change that with "
            "`sft admin project update`"
        )
    return DesiredAccount(
        name=name,
        user=user.name,
        uid=0,
        gid=0,
        primary_group=name,
        supplementary_groups=(),
        admin=True,
        windows_name=name[:20],
        full_name=user.display_name,
    )


async def bastion_hops(
    session: AsyncSession, team: Team, project: Project, target: ServerView
) -> tuple[Hop, ...]:
    """Return the jumps before `target`: the project's required bastion, then its own."""
    hops: list[Hop] = []
    if project.required_bastion:
        hops.append(
            await _hop(session, team, project.required_bastion, f"project {project.name!r}")
        )
    if target.row.bastion:
        whose = f"server {target.row.canonical_name!r} (its sftd.yaml Bastion)"
        own = await _hop(session, team, target.row.bastion, whose, by_server_name=True)
        if own not in hops and own.server != target.name:
            hops.append(own)
    return tuple(hops)


def _server_hop(view: ServerView) -> Hop:
    """Return the hop for an enrolled bastion server: its access address and sshd port."""
    row = view.row
    address = row.access_address or (row.addresses[0] if row.addresses else row.canonical_name)
    return Hop(view.name, address, row.ssh_port)


async def _hop(
    session: AsyncSession, team: Team, name: str, whose: str, *, by_server_name: bool = False
) -> Hop:
    """Return the hop a bastion name stands for (a Bastion, or a server's own name)."""
    bastion = await session.scalar(
        select(Bastion).where(Bastion.team_id == team.id, Bastion.name == name)
    )
    if bastion is not None:
        if bastion.server_id is None:
            return Hop("", bastion.address, bastion.ssh_port or 22)
        found = (
            await session.execute(servers_with_project().where(Server.id == bastion.server_id))
        ).first()
        if found is not None:
            return _server_hop(ServerView(found[0], team.name, found[1]))
    elif by_server_name:
        try:
            resolved = await resolve_server(session, team, name, viewer=Viewer(None))
        except NotFound:
            resolved = None
        if isinstance(resolved, ServerView):
            return _server_hop(resolved)
    raise FailedPrecondition(
        f"{whose} names bastion {name!r}, which does not exist in team {team.name!r}; a team "
        "admin can create it (`sft admin bastion create`) or clear the setting"
    )
