"""BrokerService: RequestAccess, Tunnel and ReleaseAccess, for callers named by their certificate.

Every RPC identifies the caller from the TLS peer certificate (services.broker.identity),
then acts through the grant book and the tunnel pump. Refusals end the call with the
domain error's status and one line; the one-time password is returned, never logged.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any, NoReturn

import structlog

from runtime.clock import Clock, timestamp, utc_now
from runtime.errors import InvalidInput, SftError, Unavailable
from runtime.interceptors import status_for
from runtime.server import Endpoint
from runtime.tunnels import MAX_FRAME_BYTES, abort_writer
from services.broker.grants import Grant, GrantBook
from services.broker.identity import Caller, PeerIdentities
from services.broker.limits import TunnelLimits
from services.broker.metrics import REFUSALS, TUNNEL_SECONDS, TUNNELS_ACTIVE
from services.broker.pump import TunnelIdle, TunnelPump
from sft.broker.v1 import broker_pb2, broker_service_pb2, broker_service_pb2_grpc

__all__ = ["BrokerServicer"]

log = structlog.get_logger("sft.broker")

#: grpc.aio.ServicerContext; grpc ships no type information.
Context = Any

CONNECT_TIMEOUT_SECONDS = 10.0
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _grant_id(value: str) -> str:
    """Return `value` if it can be a grant id, else raise InvalidInput."""
    if not _GRANT_ID.fullmatch(value):
        raise InvalidInput(
            "grant_id must be 1 to 64 characters of [A-Za-z0-9_-], as RequestAccess returned it"
        )
    return value


def _open_grant_id(first: Any) -> str:
    """Return the grant id of a Tunnel's first message; refuse anything but a bare `open`."""
    if first is None or not hasattr(first, "HasField"):
        raise InvalidInput("the tunnel ended before its first message; send `open` first")
    if not first.HasField("open") or first.WhichOneof("frame") is not None:
        raise InvalidInput("a tunnel's first message carries `open` (the grant id) and no frame")
    return _grant_id(first.open.grant_id)


class BrokerServicer(broker_service_pb2_grpc.BrokerServiceServicer):
    """The broker's RPCs."""

    def __init__(
        self,
        identities: PeerIdentities,
        grants: GrantBook,
        limits: TunnelLimits,
        target: Endpoint,
        *,
        idle_timeout_seconds: float,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        clock: Clock = utc_now,
    ) -> None:
        self._identities = identities
        self._grants = grants
        self._limits = limits
        self._target = target
        self._idle_timeout_seconds = idle_timeout_seconds
        self._connect_timeout_seconds = connect_timeout_seconds
        self._clock = clock

    def _caller(self, context: Context) -> Caller:
        """Return who is calling, from the verified peer certificate."""
        certificates = context.auth_context().get("x509_pem_cert")
        return self._identities.identify(certificates[0] if certificates else None, self._clock())

    async def _refuse(self, method: str, context: Context, error: SftError) -> NoReturn:
        """End the call with `error`'s status and message (counted and logged once)."""
        code = status_for(error)
        REFUSALS.labels(method, code.name).inc()
        log.info("refused", method=method, code=code.name, error=error.message, peer=context.peer())
        await context.abort(code, error.message)
        raise AssertionError("context.abort returns only by raising")

    async def RequestAccess(
        self, request: broker_service_pb2.RequestAccessRequest, context: Context
    ) -> broker_service_pb2.RequestAccessResponse:
        """Enable the caller's account with a one-time password and return the grant."""
        try:
            caller = self._caller(context)
            issued = await self._grants.request(caller)
        except SftError as error:
            await self._refuse("RequestAccess", context, error)
        grant = broker_pb2.AccessGrant(
            grant_id=issued.grant_id,
            account_name=issued.account,
            password=issued.password,
            expire_time=timestamp(issued.expire_time),
            target=str(self._target),
        )
        return broker_service_pb2.RequestAccessResponse(grant=grant)

    async def ReleaseAccess(
        self, request: broker_service_pb2.ReleaseAccessRequest, context: Context
    ) -> broker_service_pb2.ReleaseAccessResponse:
        """End the caller's grant (idempotent)."""
        try:
            caller = self._caller(context)
            await self._grants.release(_grant_id(request.grant_id), caller)
        except SftError as error:
            await self._refuse("ReleaseAccess", context, error)
        return broker_service_pb2.ReleaseAccessResponse()

    async def Tunnel(  # type: ignore[override]  # the read/write API, not a generator
        self, request_iterator: object, context: Context
    ) -> None:
        """Carry one TCP connection to the target (ordering rules in broker_service.proto)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        tunnel_id = secrets.token_hex(8)
        admitted: tuple[str, str, str] | None = None
        grant: Grant | None = None
        writer: asyncio.StreamWriter | None = None
        pump: TunnelPump | None = None
        outcome = "refused"
        try:
            caller = self._caller(context)
            grant_id = _open_grant_id(await context.read())
            self._grants.find(grant_id, caller)
            self._limits.admit(caller.user_key)
            admitted = caller.user_key
            reader, writer = await self._connect()
            # The grant may have ended while the target was connecting.
            grant = self._grants.find(grant_id, caller)
            self._grants.open_tunnel(grant)
            TUNNELS_ACTIVE.inc()
            log.info(
                "tunnel opened",
                tunnel_id=tunnel_id,
                grant_id=grant_id,
                user=caller.user,
                account=caller.account,
                peer=context.peer(),
            )
            opened = broker_pb2.TunnelOpened(tunnel_id=tunnel_id, target=str(self._target))
            await context.write(broker_service_pb2.TunnelResponse(opened=opened))
            pump = TunnelPump(
                context, reader, writer, idle_timeout_seconds=self._idle_timeout_seconds
            )
            await pump.run()
            outcome = "closed"
        except SftError as error:
            if pump is not None:
                outcome = "idle" if isinstance(error, TunnelIdle) else "aborted"
            await self._refuse("Tunnel", context, error)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "failed"
            log.exception("tunnel failed unexpectedly", tunnel_id=tunnel_id)
            raise
        finally:
            if writer is not None:
                if outcome == "closed":
                    writer.close()
                else:
                    abort_writer(writer)
            if admitted is not None:
                self._limits.leave(admitted)
            if grant is not None:
                self._grants.close_tunnel(grant)
                self._closed(tunnel_id, grant, pump, outcome, loop.time() - started)

    def _closed(
        self, tunnel_id: str, grant: Grant, pump: TunnelPump | None, outcome: str, seconds: float
    ) -> None:
        """Count and log the end of a tunnel that opened (one line per tunnel)."""
        TUNNELS_ACTIVE.dec()
        TUNNEL_SECONDS.labels(outcome).observe(seconds)
        log.info(
            "tunnel closed",
            tunnel_id=tunnel_id,
            grant_id=grant.grant_id,
            user=grant.owner[2],
            account=grant.account,
            outcome=outcome,
            bytes_up=pump.bytes.upload if pump else 0,
            bytes_down=pump.bytes.download if pump else 0,
            duration_s=round(seconds, 3),
        )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the target, or raise Unavailable saying why not."""
        host, port = self._target.host, self._target.port
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=2 * MAX_FRAME_BYTES),
                self._connect_timeout_seconds,
            )
        except TimeoutError:
            raise Unavailable(
                f"the RDP service at {self._target} did not answer within "
                f"{self._connect_timeout_seconds:g} s"
            ) from None
        except OSError as error:
            raise Unavailable(
                f"cannot reach the RDP service at {self._target}: {error.strerror or error}"
            ) from None
