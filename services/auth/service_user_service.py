"""The service-user servicer: team admins create service users (backed by inventory users
of kind SERVICE) and their API keys. Key secrets are returned once and never logged;
the token exchange for them is TokenService.CreateServiceUserToken (services.auth.service).
"""

from __future__ import annotations

from typing import Any

import grpc

from runtime.audit import audit_event
from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_team_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import Conflict, FailedPrecondition, InvalidInput, NotFound
from runtime.page_tokens import page_limit
from services.auth import repository
from services.auth.audit_service import LocalAuditTrail
from services.auth.inventory_calls import InventoryCalls, InventoryRefusal
from services.auth.models import ServiceKeyRow, ServiceUserRow
from services.auth.service_users import (
    MAX_KEYS_PER_SERVICE_USER,
    check_service_user_id,
    hash_key_secret,
    key_name,
    new_key_secret,
    service_user_name,
    split_key_name,
    split_service_user_name,
)
from sft.auth.v1 import service_user_pb2, service_user_service_pb2, service_user_service_pb2_grpc
from sft.inventory.v1 import user_pb2

__all__ = ["ServiceUserServicer", "key_message", "service_user_message"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

MAX_DESCRIPTION_CHARS = 1000


def key_message(
    team: str, service_user: str, row: ServiceKeyRow
) -> service_user_pb2.ServiceUserKey:
    """Return the protobuf view of an API key (never its secret: only its hash is kept)."""
    message = service_user_pb2.ServiceUserKey(
        name=key_name(team, service_user, row.id),
        key_id=row.id,
        create_time=timestamp(row.create_time),
    )
    if row.last_use_time is not None:
        message.last_use_time.CopyFrom(timestamp(row.last_use_time))
    return message


def service_user_message(
    row: ServiceUserRow, keys: list[ServiceKeyRow] | None = None
) -> service_user_pb2.ServiceUser:
    """Return the protobuf view of a service user and (when given) its keys."""
    return service_user_pb2.ServiceUser(
        name=service_user_name(row.team, row.name),
        user=f"teams/{row.team}/users/{row.name}",
        description=row.description,
        keys=[key_message(row.team, row.name, key) for key in keys or []],
        create_time=timestamp(row.create_time),
    )


class ServiceUserServicer(service_user_service_pb2_grpc.ServiceUserServiceServicer):
    """Serves sft.auth.v1.ServiceUserService (team admins only)."""

    def __init__(
        self,
        database: Database,
        roles: RoleResolver,
        inventory: InventoryCalls,
        trail: LocalAuditTrail,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self.roles = roles
        self._inventory = inventory
        self._trail = trail
        self._clock = clock

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateServiceUser(
        self, request: service_user_service_pb2.CreateServiceUserRequest, context: Context
    ) -> service_user_service_pb2.CreateServiceUserResponse:
        """Create the backing inventory user, then the service user; safe to retry."""
        team = split_team_name(request.parent)
        name = check_service_user_id(request.service_user_id)
        description = request.service_user.description
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise InvalidInput(f"description must be at most {MAX_DESCRIPTION_CHARS} characters")
        async with self._database.sessions() as session:
            if await repository.get_service_user(session, team, name) is not None:
                raise Conflict(
                    f"service user {name!r} already exists in team {team!r}; add a key to it "
                    "with `sft admin service-user key create`"
                )
        await self._backing_user(team, name, description)
        async with self._database.sessions.begin() as session:
            row = await repository.create_service_user(
                session, team=team, name=name, description=description, now=self._clock()
            )
            await self._trail.append_in(
                session,
                team,
                audit_event(
                    "service_user.create",
                    service_user_name(team, name),
                    details={"user": f"teams/{team}/users/{name}"},
                ),
            )
        return service_user_service_pb2.CreateServiceUserResponse(
            service_user=service_user_message(row)
        )

    async def _backing_user(self, team: str, name: str, description: str) -> None:
        """Create the inventory user, or adopt one a failed earlier attempt left behind."""
        try:
            await self._inventory.create_service_user(team, name, description)
            return
        except InventoryRefusal as refusal:
            if refusal.code != grpc.StatusCode.ALREADY_EXISTS:
                raise refusal.error from None
        existing = await self._inventory.user(f"teams/{team}/users/{name}")
        if existing is None or existing.kind != user_pb2.USER_KIND_SERVICE:
            raise Conflict(
                f"team {team!r} already has a user {name!r} who is a person; choose another "
                "service user id"
            )

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def ListServiceUsers(
        self, request: service_user_service_pb2.ListServiceUsersRequest, context: Context
    ) -> service_user_service_pb2.ListServiceUsersResponse:
        """List a team's service users by id, each with its keys (never their secrets)."""
        team = split_team_name(request.parent)
        page_limit(request.page_size)
        async with self._database.sessions() as session:
            rows, token = await repository.list_service_users(
                session, team, page_size=request.page_size, page_token=request.page_token
            )
            keys = await repository.service_keys_of(session, [row.id for row in rows])
        return service_user_service_pb2.ListServiceUsersResponse(
            service_users=[service_user_message(row, keys[row.id]) for row in rows],
            next_page_token=token,
        )

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def CreateServiceUserKey(
        self, request: service_user_service_pb2.CreateServiceUserKeyRequest, context: Context
    ) -> service_user_service_pb2.CreateServiceUserKeyResponse:
        """Create an API key and return its secret, once."""
        team, name = split_service_user_name(request.parent)
        secret = new_key_secret()
        async with self._database.sessions.begin() as session:
            service_user = await repository.get_service_user(session, team, name)
            if service_user is None:
                raise NotFound(f"service user {request.parent} does not exist")
            if await repository.count_service_keys(session, service_user.id) >= (
                MAX_KEYS_PER_SERVICE_USER
            ):
                raise FailedPrecondition(
                    f"service user {name!r} already has {MAX_KEYS_PER_SERVICE_USER} keys; "
                    "delete one it no longer uses first"
                )
            key = await repository.create_service_key(
                session, service_user, hash_key_secret(secret), self._clock()
            )
            await self._trail.append_in(
                session,
                team,
                audit_event(
                    "service_user_key.create",
                    key_name(team, name, key.id),
                    details={"service_user": request.parent, "key_id": key.id},
                ),
            )
        return service_user_service_pb2.CreateServiceUserKeyResponse(
            key=key_message(team, name, key), secret=secret
        )

    @requires(Need.TEAM_ADMIN, resource="name")
    async def DeleteServiceUserKey(
        self, request: service_user_service_pb2.DeleteServiceUserKeyRequest, context: Context
    ) -> service_user_service_pb2.DeleteServiceUserKeyResponse:
        """Delete an API key; it gets no more tokens and the tokens it got stop now."""
        team, name, key_id = split_key_name(request.name)
        async with self._database.sessions.begin() as session:
            found = await repository.get_service_key(session, key_id)
            if found is None or found[1].team != team or found[1].name != name:
                raise NotFound(f"API key {request.name} does not exist")
            await repository.delete_service_key(session, found[0])
            await self._trail.append_in(
                session,
                team,
                audit_event(
                    "service_user_key.delete",
                    request.name,
                    details={"service_user": service_user_name(team, name), "key_id": key_id},
                ),
            )
        return service_user_service_pb2.DeleteServiceUserKeyResponse()
