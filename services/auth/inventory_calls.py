"""What the auth service asks the inventory, as platform service "auth": a user's
standing and kind, a server's agent key, a new service user, and whether a user may
reach a server. Never called while a database session is open (in one process the
inventory shares the database, and SQLite has one connection).
"""

from __future__ import annotations

import grpc

from runtime.cert_uris import split_user_name
from runtime.errors import NotFound, PermissionDenied
from runtime.peers import Peers, relay
from sft.inventory.v1 import (
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)

__all__ = ["InventoryCalls", "InventoryRefusal"]


class InventoryRefusal(Exception):
    """The inventory answered a request with a refusal about it (not an outage)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details() or "")
        self.code = error.code()
        self.reason = error.details() or f"the inventory refused ({error.code().name})"
        self.error = relay(error, "inventory")


_REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
}


class InventoryCalls:
    """Typed calls to the inventory's UserService and ServerService."""

    def __init__(self, peers: Peers, timeout: float = 5.0) -> None:
        self._peers = peers
        self._timeout = timeout

    def _users(self) -> user_service_pb2_grpc.UserServiceStub:
        return user_service_pb2_grpc.UserServiceStub(self._peers.channel("inventory"))

    def _servers(self) -> server_service_pb2_grpc.ServerServiceStub:
        return server_service_pb2_grpc.ServerServiceStub(self._peers.channel("inventory"))

    async def user(self, name: str) -> user_pb2.User | None:
        """Return user `name` (`teams/T/users/U`), or None if the inventory has none."""
        try:
            reply: user_service_pb2.GetUserResponse = await self._users().GetUser(
                user_service_pb2.GetUserRequest(name=name), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise relay(error, "inventory") from None
        return reply.user

    async def require_active(self, name: str) -> user_pb2.User:
        """Return user `name` if it exists and is active; else PermissionDenied."""
        user = await self.user(name)
        if user is None or user.status != user_pb2.USER_STATUS_ACTIVE:
            team, user_id = split_user_name(name)
            state = "deleted" if user is None else "disabled"
            raise PermissionDenied(
                f"user {user_id!r} is {state} in team {team!r}; ask a team admin"
                + (" to enable it again" if user is not None else "")
            )
        return user

    async def server(self, name: str) -> server_pb2.Server | None:
        """Return server `name`, or None if it is not (or no longer) enrolled."""
        try:
            reply: server_service_pb2.GetServerResponse = await self._servers().GetServer(
                server_service_pb2.GetServerRequest(name=name), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise relay(error, "inventory") from None
        return reply.server

    async def resolve_server_id(self, team: str, server_id: str) -> str:
        """Return the resource name of the server with id `server_id` in `team`."""
        try:
            reply = await self._servers().ResolveServer(
                server_service_pb2.ResolveServerRequest(parent=f"teams/{team}", query=server_id),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise relay(error, "inventory") from None
        if not reply.HasField("server") or reply.server.id != server_id:
            raise NotFound(
                f"team {team!r} has no server with id {server_id!r}; pass the server's full "
                "resource name, or resolve its name first (`sft resolve NAME`)"
            )
        return str(reply.server.name)

    async def create_service_user(self, team: str, user_id: str, description: str) -> user_pb2.User:
        """Create the inventory user behind a service user; InventoryRefusal if refused."""
        try:
            reply: user_service_pb2.CreateUserResponse = await self._users().CreateUser(
                user_service_pb2.CreateUserRequest(
                    parent=f"teams/{team}",
                    user_id=user_id,
                    user=user_pb2.User(
                        kind=user_pb2.USER_KIND_SERVICE, display_name=description[:200]
                    ),
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                raise InventoryRefusal(error) from None
            raise relay(error, "inventory") from None
        return reply.user

    async def check_server_access(
        self, server: str, user: str, account_name: str
    ) -> server_service_pb2.CheckServerAccessResponse:
        """Return what `user` may do on `server`; InventoryRefusal when it may not."""
        try:
            access: server_service_pb2.CheckServerAccessResponse
            access = await self._servers().CheckServerAccess(
                server_service_pb2.CheckServerAccessRequest(
                    server=server, user=user, account_name=account_name
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                raise InventoryRefusal(error) from None
            raise relay(error, "inventory") from None
        return access
