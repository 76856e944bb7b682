"""The user servicer: people and service users of a team, their uids, status and team
admin role. A change that can alter servers' desired accounts bumps the team's accounts
revision in its own transaction.

Each RPC: validate → authorize (the `@requires` declaration) → one transaction (queries in
services.inventory.repository) → protobuf (services.inventory.views) → audit after commit.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from runtime.authorization import Need, requires
from runtime.cert_uris import split_team_name
from runtime.cert_uris import split_user_name as split_user_resource
from runtime.errors import Conflict, FailedPrecondition, InvalidInput, Unavailable
from runtime.identity import CallerKind
from runtime.page_tokens import filter_digest, page_limit
from services.inventory import repository
from services.inventory.models import Team, User, UserKind, UserStatus
from services.inventory.names import (
    check_display_name,
    check_email,
    check_user_name,
    check_windows_account_name,
)
from services.inventory.servicer import (
    Context,
    DirectoryServicer,
    audit_details,
    caller,
    mask_paths,
)
from services.inventory.views import (
    USER_KIND_FROM_PROTO,
    USER_STATUS_FROM_PROTO,
    user_message,
    user_resource,
)
from sft.inventory.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

__all__ = ["CREATE_USER_ATTEMPTS", "UserServicer"]

log = structlog.get_logger("sft.inventory")

#: Fresh transactions CreateUser tries when a concurrent creation took the same uid.
CREATE_USER_ATTEMPTS = 10

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


class UserServicer(DirectoryServicer, user_service_pb2_grpc.UserServiceServicer):
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
        identity = caller()
        if kind is UserKind.SERVICE and not (
            identity.kind is CallerKind.PLATFORM_SERVICE and identity.name == "auth"
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
        page_limit(request.page_size)
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
        paths = mask_paths(
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
        details = audit_details({path: getattr(given, path) for path in paths})
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
