"""The inventory's directory servicers: teams, users, groups, projects with their grants,
and bastions.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction →
protobuf (services.inventory.views) → audit after commit. No SQL here: queries live in
services.inventory.repository. A change that can alter some server's desired accounts
bumps the team's accounts revision in its own transaction, and after commit tells
`on_accounts_changed`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
import structlog
from sqlalchemy.exc import IntegrityError

from runtime.audit import AuditTrail, audit_event
from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_project_name, split_server_name, split_team_name
from runtime.cert_uris import split_user_name as split_user_resource
from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.errors import (
    Conflict,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from runtime.identity import CallerKind, Identity, current_identity
from runtime.page_tokens import filter_digest
from runtime.peers import Peers, relay
from services.inventory import repository
from services.inventory.models import Project, Team, User, UserKind, UserStatus
from services.inventory.names import (
    MAX_ADMIN_ACCOUNT_NAMES,
    check_account_name,
    check_bastion_name,
    check_description,
    check_display_name,
    check_email,
    check_group_name,
    check_host_address,
    check_project_name,
    check_user_name,
    check_windows_account_name,
    split_bastion_name,
    split_grant_name,
    split_group_name,
)
from services.inventory.views import (
    GRANT_ROLE_FROM_PROTO,
    USER_KIND_FROM_PROTO,
    USER_STATUS_FROM_PROTO,
    bastion_message,
    bastion_resource,
    grant_message,
    grant_resource,
    group_message,
    group_resource,
    member_message,
    member_resource,
    project_message,
    project_resource,
    team_message,
    user_message,
    user_resource,
)
from sft.ca.v1 import ca_service_pb2, ca_service_pb2_grpc
from sft.inventory.v1 import (
    bastion_service_pb2,
    bastion_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    team_service_pb2,
    team_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)

__all__ = [
    "CREATE_USER_ATTEMPTS",
    "BastionServicer",
    "GroupServicer",
    "ProjectServicer",
    "TeamServicer",
    "UserServicer",
]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information
#: Called with a team's id after a change to its desired accounts commits; may be async.
AccountsChanged = Callable[[str], object]

log = structlog.get_logger("sft.inventory")

#: Fresh transactions CreateUser tries when a concurrent creation took the same uid.
CREATE_USER_ATTEMPTS = 10
#: How long CreateProject waits for the CA to make the project's authorities.
CA_TIMEOUT_SECONDS = 30.0

DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_TTL_SECONDS = 3600
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86400
DEFAULT_SSH_PORT = 22

_USER_MUTABLE = ("display_name", "email", "windows_account_name", "team_admin")
_USER_FIXED = {
    "name": "the user id is the server account name and cannot change; create a new user",
    "unix_uid": "unix_uid is allocated by the platform and never changes",
    "unix_gid": "unix_gid is allocated by the platform and never changes",
    "kind": "kind is set at creation and cannot change",
    "status": "status changes with DisableUser and EnableUser, not UpdateUser",
    "create_time": "create_time is output only",
    "update_time": "update_time is output only",
}
_PROJECT_MUTABLE = (
    "description",
    "certificate_ttl_seconds",
    "certificate_max_ttl_seconds",
    "create_server_users",
    "permit_port_forwarding",
    "permit_agent_forwarding",
    "rdp_enabled",
    "required_bastion",
    "allowed_admin_account_names",
)
_PROJECT_FIXED = {
    "name": "the project id cannot change; create a new project",
    "create_time": "create_time is output only",
    "update_time": "update_time is output only",
}


# Request checks (pure) ---------------------------------------------------------------------


def _mask_paths(
    mask_paths: Iterable[str], has_mask: bool, mutable: Iterable[str], fixed: Mapping[str, str]
) -> list[str]:
    """Return the update_mask paths, refusing an empty mask and fixed or unknown fields."""
    paths = list(mask_paths)
    allowed = list(mutable)
    if not has_mask or not paths:
        raise InvalidInput(
            f"update_mask is required; name the fields to change (any of {', '.join(allowed)})"
        )
    for path in paths:
        if path in fixed:
            raise InvalidInput(f"update_mask names {path!r}: {fixed[path]}")
        if path not in allowed:
            raise InvalidInput(
                f"update_mask names {path[:80]!r}, which is not a field that can change; "
                f"use any of {', '.join(allowed)}"
            )
    return list(dict.fromkeys(paths))


def _same_team(resource: str, team: str, what: str) -> None:
    if resource != team:
        raise InvalidInput(
            f"{what} belongs to team {resource!r}, not {team!r}; name one of team {team!r}"
        )


def _check_ttls(ttl: int, max_ttl: int) -> None:
    if not MIN_TTL_SECONDS <= max_ttl <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"certificate_max_ttl_seconds is {max_ttl}; use {MIN_TTL_SECONDS} to "
            f"{MAX_TTL_SECONDS} (one day), or 0 at creation for {DEFAULT_MAX_TTL_SECONDS}"
        )
    if not MIN_TTL_SECONDS <= ttl <= max_ttl:
        raise InvalidInput(
            f"certificate_ttl_seconds is {ttl}; use {MIN_TTL_SECONDS} to "
            f"certificate_max_ttl_seconds ({max_ttl}), or 0 at creation for "
            f"{DEFAULT_TTL_SECONDS}"
        )


def _check_admin_accounts(names: Iterable[str]) -> list[str]:
    accounts = list(names)
    if len(accounts) > MAX_ADMIN_ACCOUNT_NAMES:
        raise InvalidInput(
            f"allowed_admin_account_names has {len(accounts)} names; at most "
            f"{MAX_ADMIN_ACCOUNT_NAMES} are allowed"
        )
    for name in accounts:
        check_account_name(name)
    if len(set(accounts)) != len(accounts):
        raise InvalidInput("allowed_admin_account_names lists a name twice; list each once")
    return accounts


def _required_bastion(value: str, team: str) -> str:
    """Return the bastion id a project's required_bastion names ("" for none)."""
    if not value:
        return ""
    bastion_team, bastion = split_bastion_name(value)
    _same_team(bastion_team, team, "required_bastion")
    return bastion


def _user_status(value: int) -> UserStatus | None:
    if value == user_pb2.USER_STATUS_UNSPECIFIED:
        return None
    if value not in USER_STATUS_FROM_PROTO:
        raise InvalidInput(f"status {value} is not a UserStatus; use ACTIVE or DISABLED")
    return USER_STATUS_FROM_PROTO[value]  # type: ignore[index]


def _user_kind(value: int) -> UserKind | None:
    if value == user_pb2.USER_KIND_UNSPECIFIED:
        return None
    if value not in USER_KIND_FROM_PROTO:
        raise InvalidInput(f"kind {value} is not a UserKind; use HUMAN or SERVICE")
    return USER_KIND_FROM_PROTO[value]  # type: ignore[index]


def _caller() -> Identity:
    return current_identity.get()


def _details(changes: Mapping[str, object]) -> dict[str, str]:
    """Return audit details for changed fields: lists comma-joined, booleans lowercase."""
    details = {}
    for key, value in changes.items():
        if isinstance(value, bool):
            details[key] = str(value).lower()
        elif isinstance(value, list):
            details[key] = ",".join(value)
        else:
            details[key] = str(value)
    return details


# What every directory servicer shares ------------------------------------------------------


class _Directory:
    """The database, peers, role resolver, audit trail, clock and change hook of a servicer."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        clock: Clock = utc_now,
        on_accounts_changed: AccountsChanged = lambda team_id: None,
    ) -> None:
        self._database = database
        self._peers = peers
        self.roles = roles
        self._trail = trail
        self._clock = clock
        self._on_accounts_changed = on_accounts_changed

    async def _committed(
        self,
        team: Team,
        action: str,
        resource: str,
        details: Mapping[str, str] | None = None,
        *,
        accounts_changed: bool = False,
    ) -> None:
        """After a commit: tell the account watchers (if asked), then audit the change."""
        if accounts_changed:
            try:
                result = self._on_accounts_changed(team.id)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The change is committed; watchers also poll the revision, so they
                # catch up even if this nudge failed.
                log.exception("accounts-changed hook failed", team=team.name, action=action)
        await self._trail.record(team.name, audit_event(action, resource, details=details))

    async def _visible_to(self, session: Any, team: Team) -> str | None:
        """Return the caller's user id when their project view is limited by grants, or
        None when they see every project (team admins)."""
        identity = _caller()
        user = await repository.find_user(session, team.name, identity.name)
        if user is None:
            raise PermissionDenied(f"user {identity.name!r} is unknown in team {team.name!r}")
        return None if user.team_admin else user.id


# Teams -------------------------------------------------------------------------------------


class TeamServicer(_Directory, team_service_pb2_grpc.TeamServiceServicer):
    """Serves sft.inventory.v1.TeamService: a caller sees and edits only its own team."""

    @requires(Need.MEMBER, resource="name")
    async def GetTeam(
        self, request: team_service_pb2.GetTeamRequest, context: Context
    ) -> team_service_pb2.GetTeamResponse:
        """Return the caller's team."""
        name = split_team_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, name)
        return team_service_pb2.GetTeamResponse(team=team_message(team))

    @requires(Need.MEMBER)
    async def ListTeams(
        self, request: team_service_pb2.ListTeamsRequest, context: Context
    ) -> team_service_pb2.ListTeamsResponse:
        """List the teams the caller may see: its own."""
        repository.page_limit(request.page_size)
        if request.page_token:
            raise InvalidInput(
                "page_token is not valid: this listing has one page; call again without it"
            )
        async with self._database.sessions() as session:
            team = await repository.get_team(session, str(_caller().team))
        return team_service_pb2.ListTeamsResponse(teams=[team_message(team)])

    @requires(Need.TEAM_ADMIN)
    async def CreateTeam(
        self, request: team_service_pb2.CreateTeamRequest, context: Context
    ) -> team_service_pb2.CreateTeamResponse:
        """Refuse: teams are made by the platform operator, not over the API."""
        raise PermissionDenied(
            "teams are created by the platform operator with `sft-platform init --team NAME "
            "--admin USER`; ask them for a new team"
        )

    @requires(Need.TEAM_ADMIN, resource="team.name")
    async def UpdateTeam(
        self, request: team_service_pb2.UpdateTeamRequest, context: Context
    ) -> team_service_pb2.UpdateTeamResponse:
        """Change the team's display name."""
        name = split_team_name(request.team.name)
        _mask_paths(
            request.update_mask.paths,
            request.HasField("update_mask"),
            ["display_name"],
            {"name": "the team id cannot change", "create_time": "create_time is output only"},
        )
        display_name = check_display_name(request.team.display_name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, name)
            team.display_name = display_name
            team.updated_at = self._clock()
            message = team_message(team)
        await self._committed(team, "team.update", message.name, {"display_name": display_name})
        return team_service_pb2.UpdateTeamResponse(team=message)


# Users -------------------------------------------------------------------------------------


class UserServicer(_Directory, user_service_pb2_grpc.UserServiceServicer):
    """Serves sft.inventory.v1.UserService."""

    @requires(Need.TEAM_ADMIN, resource="parent", services=("auth",))
    async def CreateUser(
        self, request: user_service_pb2.CreateUserRequest, context: Context
    ) -> user_service_pb2.CreateUserResponse:
        """Create a user with the team's next free uid and gid."""
        team_name = split_team_name(request.parent)
        name = check_user_name(request.user_id)
        fields = request.user
        display_name = check_display_name(fields.display_name)
        email = check_email(fields.email)
        windows_name = (
            check_windows_account_name(fields.windows_account_name)
            if fields.windows_account_name
            else None
        )
        kind = _user_kind(fields.kind) or UserKind.HUMAN
        caller = _caller()
        if kind is UserKind.SERVICE and not (
            caller.kind is CallerKind.PLATFORM_SERVICE and caller.name == "auth"
        ):
            raise InvalidInput(
                "service users are created through the auth service (with their API key); "
                "use `sft admin service-user create`"
            )
        for attempt in range(1, CREATE_USER_ATTEMPTS + 1):
            try:
                async with self._database.sessions.begin() as session:
                    team = await repository.get_team(session, team_name)
                    await repository.bump_accounts_revision(session, team)
                    user = await repository.create_user(
                        session,
                        team,
                        name,
                        team_admin=fields.team_admin,
                        kind=kind,
                        display_name=display_name,
                        email=email,
                        windows_name=windows_name,
                        now=self._clock(),
                    )
                break
            except IntegrityError:
                # Another creation took the same uid/gid (or name) first; a fresh
                # transaction sees it and picks the next free one (or refuses the name).
                log.info("user creation raced another; retrying", attempt=attempt, team=team_name)
        else:
            raise Unavailable(
                f"could not allocate a uid for {name!r}: {CREATE_USER_ATTEMPTS} concurrent "
                "creations got there first; try again"
            )
        resource = user_resource(team_name, name)
        details = {
            "kind": user.kind.value,
            "team_admin": str(user.team_admin).lower(),
            "unix_uid": str(user.unix_uid),
            "unix_gid": str(user.unix_gid),
            "windows_account_name": user.windows_name,
        }
        await self._committed(team, "user.create", resource, details, accounts_changed=True)
        return user_service_pb2.CreateUserResponse(user=user_message(team_name, user))

    @requires(Need.MEMBER, resource="name", services=("auth",))
    async def GetUser(
        self, request: user_service_pb2.GetUserRequest, context: Context
    ) -> user_service_pb2.GetUserResponse:
        """Return one user of the caller's team."""
        team_name, name = split_user_resource(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            user = await repository.get_user(session, team, name)
        return user_service_pb2.GetUserResponse(user=user_message(team_name, user))

    @requires(Need.MEMBER, resource="parent")
    async def ListUsers(
        self, request: user_service_pb2.ListUsersRequest, context: Context
    ) -> user_service_pb2.ListUsersResponse:
        """List the team's users by user id, optionally of one status and kind."""
        team_name = split_team_name(request.parent)
        repository.page_limit(request.page_size)
        status = _user_status(request.status)
        kind = _user_kind(request.kind)
        digest = filter_digest("users", team_name, request.status, request.kind)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            users, token = await repository.list_users(
                session,
                team,
                status=status,
                kind=kind,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=digest,
            )
        return user_service_pb2.ListUsersResponse(
            users=[user_message(team_name, user) for user in users], next_page_token=token
        )

    @requires(Need.TEAM_ADMIN, resource="user.name")
    async def UpdateUser(
        self, request: user_service_pb2.UpdateUserRequest, context: Context
    ) -> user_service_pb2.UpdateUserResponse:
        """Change a user's display name, email, Windows account name or team admin role."""
        team_name, name = split_user_resource(request.user.name)
        paths = _mask_paths(
            request.update_mask.paths,
            request.HasField("update_mask"),
            _USER_MUTABLE,
            _USER_FIXED,
        )
        given = request.user
        changes: dict[str, object] = {}
        for path in paths:
            if path == "display_name":
                changes["display_name"] = check_display_name(given.display_name)
            elif path == "email":
                changes["email"] = check_email(given.email)
            elif path == "windows_account_name":
                changes["windows_name"] = check_windows_account_name(given.windows_account_name)
            else:
                changes["team_admin"] = given.team_admin
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            user = await repository.get_user(session, team, name)
            windows_name = changes.get("windows_name")
            if isinstance(windows_name, str) and await repository.windows_name_taken(
                session, team, windows_name, other_than=user.id
            ):
                raise Conflict(
                    f"Windows account name {windows_name!r} is already used in team "
                    f"{team_name!r}; choose another"
                )
            if changes.get("team_admin") is False and user.team_admin:
                await self._keep_an_admin(session, team, user, "remove the team admin role of")
            repository.update_row(user, changes, self._clock())
        details = _details({path: getattr(given, path) for path in paths})
        await self._committed(
            team, "user.update", user_resource(team_name, name), details, accounts_changed=True
        )
        return user_service_pb2.UpdateUserResponse(user=user_message(team_name, user))

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DisableUser(
        self, request: user_service_pb2.DisableUserRequest, context: Context
    ) -> user_service_pb2.DisableUserResponse:
        """Disable a user: no new tokens or credentials; its accounts leave the servers."""
        user = await self._set_status(request.name, UserStatus.DISABLED, "user.disable")
        return user_service_pb2.DisableUserResponse(user=user)

    @requires(Need.TEAM_ADMIN, resource="name")
    async def EnableUser(
        self, request: user_service_pb2.EnableUserRequest, context: Context
    ) -> user_service_pb2.EnableUserResponse:
        """Enable a disabled user again."""
        user = await self._set_status(request.name, UserStatus.ACTIVE, "user.enable")
        return user_service_pb2.EnableUserResponse(user=user)

    async def _set_status(self, resource: str, status: UserStatus, action: str) -> user_pb2.User:
        team_name, name = split_user_resource(resource)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            user = await repository.get_user(session, team, name)
            changed = user.status is not status
            if changed:
                if status is UserStatus.DISABLED and user.team_admin:
                    await self._keep_an_admin(session, team, user, "disable")
                repository.update_row(user, {"status": status}, self._clock())
        await self._committed(
            team, action, resource, {"changed": str(changed).lower()}, accounts_changed=changed
        )
        return user_message(team_name, user)

    async def _keep_an_admin(self, session: Any, team: Team, user: User, verb: str) -> None:
        """Refuse to leave the team without an active person who administers it.

        Runs after bump_accounts_revision, whose row lock serializes two admins demoting
        each other at once.
        """
        if user.kind is not UserKind.HUMAN or user.status is not UserStatus.ACTIVE:
            return
        if await repository.count_active_team_admins(session, team) <= 1:
            raise FailedPrecondition(
                f"cannot {verb} {user.name!r}: they are the last active team admin of "
                f"{team.name!r}, and a team needs one; make another user team admin first"
            )


# Groups ------------------------------------------------------------------------------------


class GroupServicer(_Directory, group_service_pb2_grpc.GroupServiceServicer):
    """Serves sft.inventory.v1.GroupService."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateGroup(
        self, request: group_service_pb2.CreateGroupRequest, context: Context
    ) -> group_service_pb2.CreateGroupResponse:
        """Create an empty group."""
        team_name = split_team_name(request.parent)
        name = check_group_name(request.group_id)
        description = check_description(request.group.description)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.create_group(
                session, team, name, description=description, now=self._clock()
            )
        await self._committed(team, "group.create", group_resource(team_name, name))
        return group_service_pb2.CreateGroupResponse(group=group_message(team_name, group, 0))

    @requires(Need.MEMBER, resource="name")
    async def GetGroup(
        self, request: group_service_pb2.GetGroupRequest, context: Context
    ) -> group_service_pb2.GetGroupResponse:
        """Return one group with its member count."""
        team_name, name = split_group_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, name)
            count = await repository.member_count(session, group)
        return group_service_pb2.GetGroupResponse(group=group_message(team_name, group, count))

    @requires(Need.MEMBER, resource="parent")
    async def ListGroups(
        self, request: group_service_pb2.ListGroupsRequest, context: Context
    ) -> group_service_pb2.ListGroupsResponse:
        """List the team's groups by group id."""
        team_name = split_team_name(request.parent)
        repository.page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            rows, token = await repository.list_groups(
                session,
                team,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("groups", team_name),
            )
        return group_service_pb2.ListGroupsResponse(
            groups=[group_message(team_name, group, count) for group, count in rows],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteGroup(
        self, request: group_service_pb2.DeleteGroupRequest, context: Context
    ) -> group_service_pb2.DeleteGroupResponse:
        """Delete a group with its memberships and grants."""
        team_name, name = split_group_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            group = await repository.get_group(session, team, name)
            await repository.delete_group(session, group)
        await self._committed(team, "group.delete", request.name, accounts_changed=True)
        return group_service_pb2.DeleteGroupResponse()

    @requires(Need.TEAM_ADMIN, resource="group")
    async def AddGroupMember(
        self, request: group_service_pb2.AddGroupMemberRequest, context: Context
    ) -> group_service_pb2.AddGroupMemberResponse:
        """Add a user to a group; adding a member again returns the membership."""
        team_name, group_name, user_name = _membership(request.group, request.user)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            group = await repository.get_group(session, team, group_name)
            user = await repository.get_user(session, team, user_name)
            member, added = await repository.add_member(session, group, user, now=self._clock())
        if added:
            await self._committed(
                team,
                "group.member.add",
                member_resource(team_name, group_name, user_name),
                {"user": request.user},
                accounts_changed=True,
            )
        return group_service_pb2.AddGroupMemberResponse(
            member=member_message(team_name, group_name, user_name, member.created_at)
        )

    @requires(Need.TEAM_ADMIN, resource="group")
    async def RemoveGroupMember(
        self, request: group_service_pb2.RemoveGroupMemberRequest, context: Context
    ) -> group_service_pb2.RemoveGroupMemberResponse:
        """Remove a user from a group; idempotent (a non-member is not an error)."""
        team_name, group_name, user_name = _membership(request.group, request.user)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, group_name)
            user = await repository.get_user(session, team, user_name)
            if not await repository.is_member(session, group, user):
                return group_service_pb2.RemoveGroupMemberResponse()
            await repository.bump_accounts_revision(session, team)
            await repository.remove_member(session, group, user)
        await self._committed(
            team,
            "group.member.remove",
            member_resource(team_name, group_name, user_name),
            {"user": request.user},
            accounts_changed=True,
        )
        return group_service_pb2.RemoveGroupMemberResponse()

    @requires(Need.MEMBER, resource="parent")
    async def ListGroupMembers(
        self, request: group_service_pb2.ListGroupMembersRequest, context: Context
    ) -> group_service_pb2.ListGroupMembersResponse:
        """List a group's members by user id."""
        team_name, group_name = split_group_name(request.parent)
        repository.page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            group = await repository.get_group(session, team, group_name)
            rows, token = await repository.list_members(
                session,
                group,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("members", team_name, group_name),
            )
        return group_service_pb2.ListGroupMembersResponse(
            members=[member_message(team_name, group_name, user, added) for user, added in rows],
            next_page_token=token,
        )


def _membership(group: str, user: str) -> tuple[str, str, str]:
    """Return (team, group, user) of a membership request; both of one team."""
    team_name, group_name = split_group_name(group)
    user_team, user_name = split_user_resource(user)
    _same_team(user_team, team_name, "user")
    return team_name, group_name, user_name


# Projects and grants -----------------------------------------------------------------------


def _new_project_settings(project: project_pb2.Project, team: str) -> dict[str, object]:
    """Return the columns of a project created with `project`'s settings.

    TTLs of 0 mean the defaults. The two switches that default to on are proto3
    `optional`, so an unset one is told from false: unset means on.
    """
    ttl = project.certificate_ttl_seconds or DEFAULT_TTL_SECONDS
    max_ttl = project.certificate_max_ttl_seconds or DEFAULT_MAX_TTL_SECONDS
    if project.certificate_ttl_seconds and not project.certificate_max_ttl_seconds:
        max_ttl = max(max_ttl, ttl)
    _check_ttls(ttl, max_ttl)
    return {
        "description": check_description(project.description),
        "certificate_ttl_seconds": ttl,
        "certificate_max_ttl_seconds": max_ttl,
        "create_server_users": (
            project.create_server_users if project.HasField("create_server_users") else True
        ),
        "permit_port_forwarding": project.permit_port_forwarding,
        "permit_agent_forwarding": project.permit_agent_forwarding,
        "rdp_enabled": project.rdp_enabled if project.HasField("rdp_enabled") else True,
        "required_bastion": _required_bastion(project.required_bastion, team),
        "allowed_admin_account_names": _check_admin_accounts(project.allowed_admin_account_names),
    }


def _project_changes(
    given: project_pb2.Project, paths: list[str], current: Project, team: str
) -> dict[str, object]:
    """Return the columns UpdateProject changes, checked together with the unchanged ones."""
    changes: dict[str, object] = {}
    for path in paths:
        if path == "description":
            changes[path] = check_description(given.description)
        elif path == "required_bastion":
            changes[path] = _required_bastion(given.required_bastion, team)
        elif path == "allowed_admin_account_names":
            changes[path] = _check_admin_accounts(given.allowed_admin_account_names)
        else:
            changes[path] = getattr(given, path)
    ttl = changes.get("certificate_ttl_seconds", current.certificate_ttl_seconds)
    max_ttl = changes.get("certificate_max_ttl_seconds", current.certificate_max_ttl_seconds)
    assert isinstance(ttl, int) and isinstance(max_ttl, int)
    _check_ttls(ttl, max_ttl)
    return changes


class ProjectServicer(_Directory, project_service_pb2_grpc.ProjectServiceServicer):
    """Serves sft.inventory.v1.ProjectService."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateProject(
        self, request: project_service_pb2.CreateProjectRequest, context: Context
    ) -> project_service_pb2.CreateProjectResponse:
        """Create a project and (first) its certificate authorities at the CA."""
        team_name = split_team_name(request.parent)
        name = check_project_name(request.project_id)
        settings = _new_project_settings(request.project, team_name)
        resource = project_resource(team_name, name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            if await repository.project_exists(session, team, name):
                raise Conflict(f"project {name!r} already exists in team {team_name!r}")
            if settings["required_bastion"]:
                await repository.get_bastion(session, team, str(settings["required_bastion"]))
        # Authorities first: the CA's create is idempotent, so a project row never exists
        # without them, and a retry after a failure here simply tries again.
        await self._create_authorities(resource)
        try:
            async with self._database.sessions.begin() as session:
                team = await repository.get_team(session, team_name)
                if settings["required_bastion"]:
                    await repository.get_bastion(session, team, str(settings["required_bastion"]))
                project = await repository.create_project(
                    session, team, name, settings, now=self._clock()
                )
        except IntegrityError:
            raise Conflict(f"project {name!r} already exists in team {team_name!r}") from None
        await self._committed(team, "project.create", resource, _details(settings))
        return project_service_pb2.CreateProjectResponse(
            project=project_message(team_name, project)
        )

    async def _create_authorities(self, project: str) -> None:
        stub = ca_service_pb2_grpc.CertificateAuthorityServiceStub(self._peers.channel("ca"))
        try:
            await stub.CreateProjectAuthorities(
                ca_service_pb2.CreateProjectAuthoritiesRequest(project=project),
                timeout=CA_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise relay(error, "ca") from None

    @requires(Need.MEMBER, resource="name")
    async def GetProject(
        self, request: project_service_pb2.GetProjectRequest, context: Context
    ) -> project_service_pb2.GetProjectResponse:
        """Return a project the caller may see (team admins: all; others: granted ones)."""
        team_name, name = split_project_name(request.name)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, name)
            viewer = await self._visible_to(session, team)
            if viewer is not None and not await repository.project_visible_to(
                session, project, viewer
            ):
                raise NotFound(
                    f"project {name!r} does not exist in team {team_name!r}, or none of your "
                    "groups is granted it; ask a team admin"
                )
        return project_service_pb2.GetProjectResponse(project=project_message(team_name, project))

    @requires(Need.MEMBER, resource="parent")
    async def ListProjects(
        self, request: project_service_pb2.ListProjectsRequest, context: Context
    ) -> project_service_pb2.ListProjectsResponse:
        """List the projects the caller may see, by project id."""
        team_name = split_team_name(request.parent)
        repository.page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            viewer = await self._visible_to(session, team)
            projects, token = await repository.list_projects(
                session,
                team,
                granted_to=viewer,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("projects", team_name, viewer),
            )
        return project_service_pb2.ListProjectsResponse(
            projects=[project_message(team_name, project) for project in projects],
            next_page_token=token,
        )

    @requires(Need.PROJECT_ADMIN, resource="project.name")
    async def UpdateProject(
        self, request: project_service_pb2.UpdateProjectRequest, context: Context
    ) -> project_service_pb2.UpdateProjectResponse:
        """Change the project's settings named in update_mask."""
        team_name, name = split_project_name(request.project.name)
        paths = _mask_paths(
            request.update_mask.paths,
            request.HasField("update_mask"),
            _PROJECT_MUTABLE,
            _PROJECT_FIXED,
        )
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, name)
            changes = _project_changes(request.project, paths, project, team_name)
            bastion = changes.get("required_bastion")
            if bastion:
                await repository.get_bastion(session, team, str(bastion))
            accounts_changed = (
                "create_server_users" in changes
                and changes["create_server_users"] != project.create_server_users
            )
            if accounts_changed:
                await repository.bump_accounts_revision(session, team)
            repository.update_row(project, changes, self._clock())
        await self._committed(
            team,
            "project.update",
            request.project.name,
            _details(changes),
            accounts_changed=accounts_changed,
        )
        return project_service_pb2.UpdateProjectResponse(
            project=project_message(team_name, project)
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteProject(
        self, request: project_service_pb2.DeleteProjectRequest, context: Context
    ) -> project_service_pb2.DeleteProjectResponse:
        """Delete a project without servers, with its grants and enrollment tokens."""
        team_name, name = split_project_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, name)
            await repository.delete_project(session, project)
        await self._committed(team, "project.delete", request.name, accounts_changed=True)
        return project_service_pb2.DeleteProjectResponse()

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateGrant(
        self, request: project_service_pb2.CreateGrantRequest, context: Context
    ) -> project_service_pb2.CreateGrantResponse:
        """Grant a group USER or ADMIN access to a project."""
        team_name, project_name = split_project_name(request.parent)
        group_team, group_name = split_group_name(request.grant.group)
        _same_team(group_team, team_name, "grant.group")
        role = GRANT_ROLE_FROM_PROTO.get(request.grant.role)
        if role is None:
            raise InvalidInput("grant.role must be GRANT_ROLE_USER or GRANT_ROLE_ADMIN")
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, project_name)
            group = await repository.get_group(session, team, group_name)
            grant = await repository.create_grant(session, project, group, role, now=self._clock())
        await self._committed(
            team,
            "grant.create",
            grant_resource(team_name, project_name, group_name),
            {"group": request.grant.group, "role": role.value},
            accounts_changed=True,
        )
        return project_service_pb2.CreateGrantResponse(
            grant=grant_message(team_name, project_name, group_name, grant)
        )

    @requires(Need.PROJECT_ADMIN, resource="parent")
    async def ListGrants(
        self, request: project_service_pb2.ListGrantsRequest, context: Context
    ) -> project_service_pb2.ListGrantsResponse:
        """List a project's grants by group id."""
        team_name, project_name = split_project_name(request.parent)
        repository.page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            project = await repository.get_project(session, team, project_name)
            rows, token = await repository.list_grants(
                session,
                project,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("grants", team_name, project_name),
            )
        return project_service_pb2.ListGrantsResponse(
            grants=[grant_message(team_name, project_name, group, grant) for grant, group in rows],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteGrant(
        self, request: project_service_pb2.DeleteGrantRequest, context: Context
    ) -> project_service_pb2.DeleteGrantResponse:
        """Remove a group's grant on a project."""
        team_name, project_name, group_name = split_grant_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            await repository.bump_accounts_revision(session, team)
            project = await repository.get_project(session, team, project_name)
            group = await repository.get_group(session, team, group_name)
            grant = await repository.get_grant(session, project, group)
            await repository.delete_grant(session, grant)
        await self._committed(
            team,
            "grant.delete",
            request.name,
            {"role": grant.role.value},
            accounts_changed=True,
        )
        return project_service_pb2.DeleteGrantResponse()


# Bastions ----------------------------------------------------------------------------------


def _bastion_parent(parent: str) -> tuple[str, str | None]:
    """Return (team, project or None) of a bastion listing's parent: a project or a team."""
    if "/projects/" in parent:
        return split_project_name(parent)
    return split_team_name(parent), None


def _server_resource(team: str, project: str | None, server_id: str | None) -> str:
    if project is None or server_id is None:
        return ""
    return f"{project_resource(team, project)}/servers/{server_id}"


class BastionServicer(_Directory, bastion_service_pb2_grpc.BastionServiceServicer):
    """Serves sft.inventory.v1.BastionService. Bastions belong to the team: any project
    may use one, so a project parent only scopes the call, not the bastion."""

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateBastion(
        self, request: bastion_service_pb2.CreateBastionRequest, context: Context
    ) -> bastion_service_pb2.CreateBastionResponse:
        """Create a bastion: an enrolled server of the team, or a host address."""
        team_name, project_name = _bastion_parent(request.parent)
        name = check_bastion_name(request.bastion_id)
        given = request.bastion
        description = check_description(given.description)
        if given.ssh_port > 65535:
            raise InvalidInput(f"ssh_port {given.ssh_port} is not a TCP port; use 1 to 65535")
        ssh_port = given.ssh_port or DEFAULT_SSH_PORT
        target = given.WhichOneof("target")
        server: tuple[str, str] | None = None
        address = ""
        if target == "server":
            server_team, server_project, enrolled_id = split_server_name(given.server)
            _same_team(server_team, team_name, "bastion.server")
            server = (server_project, enrolled_id)
        elif target == "address":
            address = check_host_address(given.address)
        else:
            raise InvalidInput(
                "bastion needs a target: set bastion.server (an enrolled server's resource "
                "name) or bastion.address (a host name or IP address)"
            )
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            if project_name is not None:
                await repository.get_project(session, team, project_name)
            server_id: str | None = None
            if server is not None:
                server_id = (await repository.get_server(session, team, *server)).id
            bastion = await repository.create_bastion(
                session,
                team,
                name,
                server_id=server_id,
                address=address,
                ssh_port=ssh_port,
                description=description,
                now=self._clock(),
            )
        details = {"server": given.server} if server else {"address": address}
        details["ssh_port"] = str(ssh_port)
        await self._committed(team, "bastion.create", bastion_resource(team_name, name), details)
        return bastion_service_pb2.CreateBastionResponse(
            bastion=bastion_message(team_name, bastion, given.server if server else "")
        )

    @requires(Need.MEMBER, resource="parent")
    async def ListBastions(
        self, request: bastion_service_pb2.ListBastionsRequest, context: Context
    ) -> bastion_service_pb2.ListBastionsResponse:
        """List the team's bastions by bastion id."""
        team_name, project_name = _bastion_parent(request.parent)
        repository.page_limit(request.page_size)
        async with self._database.sessions() as session:
            team = await repository.get_team(session, team_name)
            if project_name is not None:
                await repository.get_project(session, team, project_name)
            rows, token = await repository.list_bastions(
                session,
                team,
                page_size=request.page_size,
                page_token=request.page_token,
                digest=filter_digest("bastions", team_name),
            )
        return bastion_service_pb2.ListBastionsResponse(
            bastions=[
                bastion_message(
                    team_name, bastion, _server_resource(team_name, project, bastion.server_id)
                )
                for bastion, project in rows
            ],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteBastion(
        self, request: bastion_service_pb2.DeleteBastionRequest, context: Context
    ) -> bastion_service_pb2.DeleteBastionResponse:
        """Delete a bastion no project requires."""
        team_name, name = split_bastion_name(request.name)
        async with self._database.sessions.begin() as session:
            team = await repository.get_team(session, team_name)
            bastion = await repository.get_bastion(session, team, name)
            requiring = await repository.projects_requiring_bastion(session, team, name)
            if requiring:
                raise FailedPrecondition(
                    f"bastion {name!r} is the required bastion of project(s) "
                    f"{', '.join(requiring)}; change their required_bastion first"
                )
            await repository.delete_bastion(session, bastion)
        await self._committed(team, "bastion.delete", bastion_resource(team_name, name))
        return bastion_service_pb2.DeleteBastionResponse()
