"""The mTLS channel to one broker, renewed with the client certificate.

New tunnels need a valid client certificate; open ones keep running when it expires.
So each certificate gets its own channel (a "generation"): when the current one's
certificate is within the renewal margin, the next tunnel first fetches a new
certificate, checks the broker again and opens a new channel; the old channel closes
once its last tunnel has. Never logs a private key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc.aio

from client.errors import ClientError
from client.rdp_broker import BrokerAddress, broker_channel, check_broker_identity
from client.rdp_cache import RDPCache, RDPRecord
from client.ssh_cache import RENEW_BEFORE_SECONDS
from sft.broker.v1.broker_service_pb2_grpc import BrokerServiceStub

__all__ = ["BrokerLink", "Lease"]

Renew = Callable[[RDPRecord], Awaitable[RDPRecord]]
Clock = Callable[[], float]


@dataclass
class _Generation:
    record: RDPRecord
    channel: grpc.aio.Channel
    stub: BrokerServiceStub
    tunnels: int = 0
    retired: bool = False


class Lease:
    """A stub for one tunnel; `release()` when the tunnel ends."""

    def __init__(self, link: BrokerLink, generation: _Generation) -> None:
        self.stub = generation.stub
        self._link = link
        self._generation: _Generation | None = generation

    def release(self) -> None:
        """Give the stub back (the channel closes if it was retired and this was its last)."""
        if self._generation is not None:
            generation, self._generation = self._generation, None
            self._link.give_back(generation)


class BrokerLink:
    """Channels to one broker: the current one, and retired ones still carrying tunnels."""

    def __init__(
        self,
        address: BrokerAddress,
        cache: RDPCache,
        private_key_pem: bytes,
        record: RDPRecord,
        *,
        renew: Renew | None = None,
        warn: Callable[[str], None] = lambda line: None,
        clock: Clock = time.time,
        margin: float = RENEW_BEFORE_SECONDS,
    ) -> None:
        self.address = address
        self._cache = cache
        self._key = private_key_pem
        self._first = record
        self._renew = renew
        self._warn = warn
        self._clock = clock
        self._margin = margin
        self._current: _Generation | None = None
        #: Every generation whose channel is still open (the current one included).
        self._open_generations: list[_Generation] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def record(self) -> RDPRecord:
        """Return the record of the current certificate."""
        return self._current.record if self._current is not None else self._first

    @property
    def stub(self) -> BrokerServiceStub:
        """Return the current channel's stub (for RequestAccess and ReleaseAccess)."""
        if self._current is None:
            raise RuntimeError("BrokerLink.connect() first")
        return self._current.stub

    async def connect(self) -> None:
        """Check the broker's identity and open the first channel."""
        self._current = await self._open(self._first)

    async def _open(self, record: RDPRecord) -> _Generation:
        await check_broker_identity(
            self.address,
            record,
            self._cache.certificate_file(record.server_id),
            self._cache.key_file,
        )
        channel = broker_channel(self.address, record, self._key)
        generation = _Generation(record, channel, BrokerServiceStub(channel))
        self._open_generations.append(generation)
        return generation

    async def lease(self) -> Lease:
        """Return a stub for a new tunnel, renewing the certificate first when it is due."""
        async with self._lock:
            current = self._current
            if current is None:
                raise RuntimeError("BrokerLink.connect() first")
            left = current.record.valid_before - self._clock()
            if left < self._margin and self._renew is not None:
                current = await self._renewed(current, left)
            current.tunnels += 1
            return Lease(self, current)

    async def _renewed(self, current: _Generation, left: float) -> _Generation:
        assert self._renew is not None
        try:
            record = await self._renew(current.record)
            fresh = await self._open(record)
        except ClientError as exc:
            if left > 0:
                self._warn(
                    f"cannot renew the client certificate ({exc.reason}); the current one "
                    f"works for {int(left)} s more"
                )
                return current
            raise ClientError(
                f"the client certificate for {current.record.display_name} has expired and "
                f"cannot be renewed: {exc.reason}",
                hint=exc.hint,
            ) from None
        current.retired = True
        self._current = fresh
        if current.tunnels == 0:
            self._close_later(current)
        return fresh

    def give_back(self, generation: _Generation) -> None:
        """Count a tunnel of `generation` as ended (used by Lease.release)."""
        generation.tunnels -= 1
        if generation.retired and generation.tunnels == 0:
            self._close_later(generation)

    def _close_later(self, generation: _Generation) -> None:
        if generation not in self._open_generations:
            return
        self._open_generations.remove(generation)
        task = asyncio.get_running_loop().create_task(generation.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every channel (tunnels still open on them end)."""
        self._current = None
        for generation in list(self._open_generations):
            generation.retired = True
            self._close_later(generation)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
