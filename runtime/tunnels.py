"""Pumps one TCP connection through a BrokerService.Tunnel call (client side) and checks frames.

Shared by the broker and `sft rdp`. Flow control is end to end: a side reads only after
the other side has taken what it read before (await drain / await write), so the bytes
in flight are bounded by the socket buffers and gRPC's HTTP/2 window, never by a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
import structlog

from runtime.errors import (
    InvalidInput,
    SftError,
    Unavailable,
)
from runtime.status_errors import refusal
from sft.broker.v1 import broker_pb2, broker_service_pb2, broker_service_pb2_grpc

__all__ = [
    "MAX_FRAME_BYTES",
    "abort_writer",
    "carry_connection",
    "check_frame",
    "tunnel_error",
]

log = structlog.get_logger("sft.tunnel")

#: The largest `data` payload either side sends or accepts (broker.proto `Frame`).
MAX_FRAME_BYTES = 65536


def check_frame(payload: bytes) -> None:
    """Raise InvalidInput unless `payload` is 1 to MAX_FRAME_BYTES bytes (broker.proto `Frame`)."""
    if not payload:
        raise InvalidInput("tunnel frame is empty; frames carry 1 to 65536 bytes")
    if len(payload) > MAX_FRAME_BYTES:
        raise InvalidInput(
            f"tunnel frame of {len(payload)} bytes is over the {MAX_FRAME_BYTES}-byte limit; "
            "split the data into smaller frames"
        )


def tunnel_error(code: grpc.StatusCode, details: str | None) -> SftError:
    """Return the broker's refusal as a domain error; anything unexpected is Unavailable."""
    refused = refusal(code, details)
    if refused is not None:
        return refused
    return Unavailable(f"the broker ended the tunnel ({code.name}: {details or 'no detail'})")


def abort_writer(writer: asyncio.StreamWriter) -> None:
    """Close `writer`'s connection at once, discarding unsent bytes (an RST, not a FIN)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger on with a zero timeout: close() then resets instead of finishing politely.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


#: grpc.aio.StreamStreamCall[TunnelRequest, TunnelResponse]; grpc ships no type information.
TunnelCall = Any


class _LocalReset(Exception):
    """The local TCP peer reset or vanished: the tunnel is aborted, nothing to report."""


async def _upload(call: TunnelCall, reader: asyncio.StreamReader) -> None:
    """Send what the local side writes as frames; half-close the call at its EOF.

    A local reset cancels the call (rule 7), which ends the download side too.
    """
    request = broker_service_pb2.TunnelRequest
    frame = broker_pb2.Frame
    try:
        while True:
            payload = await reader.read(MAX_FRAME_BYTES)
            if not payload:
                await call.done_writing()
                return
            await call.write(request(data=frame(payload=payload)))
    except OSError:
        call.cancel()
        raise _LocalReset() from None


async def carry_connection(
    stub: broker_service_pb2_grpc.BrokerServiceStub,
    grant_id: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Carry one accepted local TCP connection over one Tunnel call until both sides close.

    Raises runtime.errors exceptions (NotFound, PermissionDenied, FailedPrecondition,
    Unavailable, ...) when the broker refuses the tunnel or ends it with an error (then
    the local connection is reset, discarding unsent bytes); closes `writer` in all cases.
    When the local side resets, the call is cancelled and this returns quietly.
    """
    call: TunnelCall = stub.Tunnel(metadata=tuple(metadata) if metadata else None)
    upload: asyncio.Task[None] | None = None
    clean = False
    try:
        await call.write(
            broker_service_pb2.TunnelRequest(open=broker_pb2.TunnelOpen(grant_id=grant_id))
        )
        # Rule 1 lets data follow `open` at once, but a write that races the broker's
        # refusal makes grpc.aio report INTERNAL instead of the refusal (seen in about
        # 1 of 10 refused tunnels), so the upload starts once the tunnel is `opened`:
        # one round trip before the first client bytes, for an exact refusal.
        first = await call.read()
        if first is grpc.aio.EOF:
            raise tunnel_error(await call.code(), await call.details())
        if not first.HasField("opened"):
            raise Unavailable("the broker's first tunnel message was not `opened`; upgrade sft")
        upload = asyncio.create_task(_upload(call, reader))
        await _download(call, writer)
        code = await call.code()
        if code != grpc.StatusCode.OK:
            raise tunnel_error(code, await call.details())
        await upload
        clean = True
    except grpc.aio.AioRpcError as error:
        raise tunnel_error(error.code(), error.details()) from None
    except OSError:
        pass  # The local peer stopped taking bytes: the finally below aborts both sides.
    except asyncio.CancelledError:
        # The upload cancelled the call because the local peer reset: end quietly.
        # Anything else (our own task cancelled) propagates.
        task = asyncio.current_task()
        if not _local_reset(upload) or (task is not None and task.cancelling()):
            raise
    finally:
        call.cancel()
        if upload is not None:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError, _LocalReset, grpc.aio.AioRpcError):
                await upload
        if clean:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        else:
            abort_writer(writer)


def _local_reset(upload: asyncio.Task[None] | None) -> bool:
    """Return whether the upload ended because the local peer reset."""
    if upload is None or not upload.done() or upload.cancelled():
        return False
    return isinstance(upload.exception(), _LocalReset)


async def _download(call: TunnelCall, writer: asyncio.StreamWriter) -> None:
    """Write the broker's frames to the local side until the call ends."""
    while True:
        response = await call.read()
        if response is grpc.aio.EOF:
            return
        kind = response.WhichOneof("frame")
        if kind == "data":
            writer.write(response.data.payload)
            await writer.drain()
        elif kind == "close_write" and writer.can_write_eof():
            writer.write_eof()
