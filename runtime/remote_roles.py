"""A caller's standing read from the inventory service over gRPC (for services without
the inventory's tables, e.g. auth in a split deployment or in one process alike).
"""

from __future__ import annotations

import grpc

from runtime.authorization import Standing
from runtime.identity import Identity
from runtime.peers import Peers, relay
from sft.inventory.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

__all__ = ["RemoteRoles"]


class RemoteRoles:
    """Asks the inventory's UserService.GetUser (as this service) what a caller may do."""

    def __init__(self, peers: Peers, timeout: float = 5.0) -> None:
        self._peers = peers
        self._timeout = timeout

    async def standing(self, identity: Identity) -> Standing:
        """Return whether the user is active and a team admin; unknown users are not active.

        Project admin grants are not read here: no RPC outside the inventory needs them.
        """
        stub = user_service_pb2_grpc.UserServiceStub(self._peers.channel("inventory"))
        try:
            response = await stub.GetUser(
                user_service_pb2.GetUserRequest(name=identity.user_resource),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return Standing(active=False, team_admin=False)
            raise relay(error, "inventory") from None
        user = response.user
        return Standing(
            active=user.status == user_pb2.USER_STATUS_ACTIVE, team_admin=user.team_admin
        )
