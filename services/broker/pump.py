"""The broker's half of a tunnel: pumps bytes between one Tunnel call and one target connection.

Follows the Tunnel ordering rules (broker_service.proto) after `opened`: half-close both
ways, INVALID_ARGUMENT for malformed frames, UNAVAILABLE when the target resets, and an
idle timeout. Each direction reads only after the other side took the previous bytes,
so nothing is buffered beyond the sockets and gRPC's flow-control window.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import grpc.aio

from runtime.errors import InvalidInput, Unavailable
from runtime.tunnels import MAX_FRAME_BYTES, check_frame
from services.broker.metrics import TUNNEL_BYTES
from sft.broker.v1 import broker_pb2, broker_service_pb2

__all__ = ["TunnelIdle", "TunnelPump"]

#: grpc.aio.ServicerContext of a Tunnel call; grpc ships no type information.
Context = Any

_UPLOAD = TUNNEL_BYTES.labels("upload")
_DOWNLOAD = TUNNEL_BYTES.labels("download")
_CANCEL_SETTLE_SECONDS = 0.02
_CLOSE_WRITE = broker_service_pb2.TunnelResponse(close_write=broker_pb2.CloseWrite())


class TunnelIdle(Unavailable):
    """No bytes moved either way for the idle timeout; the tunnel is closed."""


@dataclass
class _Counts:
    upload: int = 0
    download: int = 0


class TunnelPump:
    """Carries one tunnel's bytes both ways until both directions closed, or an abort."""

    def __init__(
        self,
        context: Context,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout_seconds: float,
    ) -> None:
        self._context = context
        self._reader = reader
        self._writer = writer
        self._idle_timeout_seconds = idle_timeout_seconds
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self.bytes = _Counts()

    async def run(self) -> None:
        """Pump until both directions closed; raise InvalidInput/Unavailable to abort the call."""
        directions = {
            asyncio.create_task(self._client_to_target()),
            asyncio.create_task(self._target_to_client()),
        }
        watchdog = asyncio.create_task(self._watch_idle())
        try:
            while directions:
                done, _ = await asyncio.wait(
                    directions | {watchdog}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    directions.discard(task)
                    task.result()  # raises the direction's (or the watchdog's) error
        finally:
            for task in (*directions, watchdog):
                task.cancel()
            for task in (*directions, watchdog):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _client_to_target(self) -> None:
        """Write the client's frames to the target; shut its write side at the client's EOF."""
        read, writer, counts = self._context.read, self._writer, self.bytes
        while True:
            request = await read()
            if request is grpc.aio.EOF:
                # grpc.aio reports a client's cancel first as the end of its messages, then
                # cancels this task a moment later. Wait that moment, so a cancel resets the
                # target (rule 7) instead of half-closing it (rule 4).
                await asyncio.sleep(_CANCEL_SETTLE_SECONDS)
                if writer.can_write_eof():
                    # The target may have closed already (RDP servers close first): then
                    # there is no write side left to shut, and that is the normal end.
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            if request.HasField("open"):
                raise InvalidInput("a tunnel takes one `open`, in its first message only")
            if request.WhichOneof("frame") != "data":
                raise InvalidInput("every tunnel message after the first carries one `data` frame")
            payload = request.data.payload
            check_frame(payload)
            writer.write(payload)
            try:
                await writer.drain()
            except OSError:
                raise Unavailable("the target reset the connection") from None
            counts.upload += len(payload)
            _UPLOAD.inc(len(payload))
            self._last_activity = self._loop.time()

    async def _target_to_client(self) -> None:
        """Send the target's bytes as frames; one close_write at the target's EOF."""
        write, reader, counts = self._context.write, self._reader, self.bytes
        response, frame = broker_service_pb2.TunnelResponse, broker_pb2.Frame
        while True:
            try:
                payload = await reader.read(MAX_FRAME_BYTES)
            except OSError:
                raise Unavailable("the target reset the connection") from None
            if not payload:
                await write(_CLOSE_WRITE)
                return
            await write(response(data=frame(payload=payload)))
            counts.download += len(payload)
            _DOWNLOAD.inc(len(payload))
            self._last_activity = self._loop.time()

    async def _watch_idle(self) -> None:
        """Raise TunnelIdle once no bytes moved either way for the idle timeout."""
        while True:
            idle = self._loop.time() - self._last_activity
            if idle >= self._idle_timeout_seconds:
                raise TunnelIdle(
                    f"tunnel closed after {self._idle_timeout_seconds:g} s without bytes either "
                    "way (idle timeout)"
                )
            await asyncio.sleep(self._idle_timeout_seconds - idle)
