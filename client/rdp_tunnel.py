"""The local end of `sft rdp`: a listener on 127.0.0.1 whose every connection is one Tunnel.

Each accepted TCP connection is carried over its own BrokerService.Tunnel call
(runtime.tunnels.carry_connection) under the grant. A refused tunnel closes that
local connection and says in one line on stderr why and what to do; the listener
keeps serving. Only loopback is listened on: the port is as good as the grant.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from client.errors import ClientError
from runtime.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SftError,
    Unauthenticated,
)
from runtime.tunnels import abort_writer, carry_connection
from sft.broker.v1.broker_service_pb2_grpc import BrokerServiceStub

__all__ = ["LISTEN_HOST", "TunnelListener", "refusal_line"]

LISTEN_HOST = "127.0.0.1"


class TunnelLease(Protocol):
    """A broker stub lent to one tunnel (client.rdp_link.Lease)."""

    stub: BrokerServiceStub

    def release(self) -> None:
        """Give the stub back."""


class Leases(Protocol):
    """Where tunnels get their broker stub (client.rdp_link.BrokerLink)."""

    async def lease(self) -> TunnelLease:
        """Return a stub for one new tunnel."""


def refusal_line(exc: SftError, again: str) -> str:
    """Return the one line saying why the broker refused or ended a tunnel, and what to do."""
    reason = exc.message
    if isinstance(exc, FailedPrecondition):
        return f"the broker refused a new connection: {reason}; run `{again}` for a new grant"
    if isinstance(exc, NotFound):
        return (
            f"the broker no longer knows this grant ({reason}); it may have restarted: "
            f"run `{again}` again"
        )
    if isinstance(exc, PermissionDenied | Unauthenticated):
        return f"the broker refused a new connection: {reason}"
    if isinstance(exc, ResourceExhausted):
        return f"the broker is at its limit ({reason}); close other sessions or try later"
    return f"a connection through the tunnel ended with an error: {reason}"


class TunnelListener:
    """Accepts local connections and carries each over a Tunnel call. Close when done."""

    def __init__(
        self,
        leases: Leases,
        grant_id: str,
        *,
        report: Callable[[str], None],
        again: str = "sft rdp",
    ) -> None:
        self._leases = leases
        self._grant_id = grant_id
        self._report = report
        self._again = again
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (a random port by default); return the port."""
        self._server = await asyncio.start_server(self._accepted, LISTEN_HOST, port)
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

    @property
    def active(self) -> int:
        """Return how many tunnels are open."""
        return len(self._tasks)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The tunnel is a task of the listener's own (not asyncio's handler task), so
        # close() can cancel it without asyncio reporting the cancellation as an error.
        task = asyncio.get_running_loop().create_task(self._carry(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.accepted += 1

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            lease = await self._leases.lease()
        except ClientError as exc:
            abort_writer(writer)
            self._report(f"closed a new connection: {exc.message}")
            return
        try:
            await carry_connection(lease.stub, self._grant_id, reader, writer)
        except SftError as exc:
            self._report(refusal_line(exc, self._again))
        finally:
            lease.release()

    async def close(self) -> None:
        """Stop accepting and end every open tunnel."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
