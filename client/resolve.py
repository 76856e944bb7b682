"""Which one server a name means: `ResolveServer`, with candidates turned into one error line.

No click here: `sft ssh` with an empty cache resolves names without loading the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from client.commands.calls import explain_status, team_resource
from client.errors import ClientError

if TYPE_CHECKING:
    from client.session import Session
    from sft.inventory.v1 import server_pb2

__all__ = ["resolve_server"]


def _describe(server: server_pb2.Server) -> str:
    name = server.canonical_name or server.hostname
    project = server.project.rsplit("/", 1)[-1]
    return f"{name} (project {project}, id {server.id or server.name.rsplit('/', 1)[-1]})"


async def resolve_server(
    session: Session, query: str, *, project: str | None = None
) -> server_pb2.Server:
    """Return the one server `query` names; raise a ClientError listing several candidates."""
    from sft.inventory.v1 import server_service_pb2, server_service_pb2_grpc

    stub = server_service_pb2_grpc.ServerServiceStub(session.channel())
    parent = team_resource(session) + (f"/projects/{project}" if project else "")
    try:
        reply: server_service_pb2.ResolveServerResponse = await stub.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=parent, query=query)
        )
    except ClientError as exc:
        raise explain_status(
            exc, {"NOT_FOUND": "see the servers you can reach with `sft list-servers`"}
        ) from None
    if reply.HasField("server"):
        return reply.server
    candidates = "; ".join(_describe(server) for server in reply.candidates)
    raise ClientError(
        f"{query!r} could mean {len(reply.candidates)} servers: {candidates}",
        hint="name one by its id or canonical name, or narrow with --project",
    )
