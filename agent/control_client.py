"""The caller's side of sftd's local control channel: what the broker uses to enable accounts.

Self-contained (grpc, the generated stubs, runtime.errors and runtime.status_errors
only), so the broker can use it without importing the agent. Never logs the one-time
password it receives.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import grpc.aio

from runtime.errors import (
    SftError,
    Unavailable,
)
from runtime.status_errors import refusal
from sft.agent.v1 import (
    agent_control_pb2,
    agent_control_service_pb2,
    agent_control_service_pb2_grpc,
)

__all__ = [
    "CALL_TIMEOUT_SECONDS",
    "ENDPOINT_FILE",
    "SOCKET_NAME",
    "ControlClient",
    "EnabledAccount",
    "LoopbackEndpoint",
    "read_loopback_endpoint",
]

#: The control socket's name in StateDir (Linux).
SOCKET_NAME = "control.sock"
#: Windows: the file in StateDir naming the loopback address and the callers' secret.
ENDPOINT_FILE = "control.endpoint"
#: Every call gives up after this long: enabling is a couple of local OS calls.
CALL_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class EnabledAccount:
    """What EnableAccount returned. `repr` hides the password so it never reaches a log."""

    #: The one-time password; None when the call renewed a live grant (unchanged).
    password: str | None
    #: When sftd disables the account by itself unless the grant is renewed.
    expire_time: dt.datetime

    def __repr__(self) -> str:
        shown = "None" if self.password is None else "'…'"
        return f"EnabledAccount(password={shown}, expire_time={self.expire_time.isoformat()})"


@dataclass(frozen=True)
class LoopbackEndpoint:
    """Windows: where the control channel listens and the secret each call must carry."""

    address: str
    secret: str

    def __repr__(self) -> str:
        return f"LoopbackEndpoint(address={self.address!r}, secret='…')"


def read_loopback_endpoint(path: Path) -> LoopbackEndpoint:
    """Read the endpoint file sftd writes on Windows (Unavailable when it is missing or bad)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        address, secret = document["address"], document["secret"]
    except FileNotFoundError:
        raise Unavailable(
            f"sftd's control channel is not running ({path} does not exist)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Unavailable(f"cannot read sftd's control endpoint {path}: {error}") from None
    if not isinstance(address, str) or not isinstance(secret, str):
        raise Unavailable(f"sftd's control endpoint {path} is malformed")
    return LoopbackEndpoint(address, secret)


class ControlClient:
    """Calls sftd's AgentControlService; refusals come back as runtime.errors exceptions.

    Use `ControlClient.unix(path)` on Linux or `ControlClient.loopback(endpoint)` on
    Windows, then `async with client:` (or `await client.close()`).
    """

    def __init__(
        self,
        target: str,
        *,
        where: str,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout_seconds: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._where = where
        self._metadata = metadata
        self._timeout_seconds = timeout_seconds
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = agent_control_service_pb2_grpc.AgentControlServiceStub(self._channel)

    @classmethod
    def unix(cls, path: Path, *, timeout_seconds: float = CALL_TIMEOUT_SECONDS) -> ControlClient:
        """Return a client of the control socket at `path`."""
        return cls(f"unix:{path}", where=str(path), timeout_seconds=timeout_seconds)

    @classmethod
    def loopback(
        cls, endpoint: LoopbackEndpoint, *, timeout_seconds: float = CALL_TIMEOUT_SECONDS
    ) -> ControlClient:
        """Return a client of the Windows loopback listener, presenting its secret."""
        return cls(
            endpoint.address,
            where=endpoint.address,
            metadata=(("authorization", f"Bearer {endpoint.secret}"),),
            timeout_seconds=timeout_seconds,
        )

    async def __aenter__(self) -> ControlClient:
        """Return self; the channel connects on the first call."""
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Close the channel."""
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def enable_account(
        self, account_name: str, grant_id: str, ttl_seconds: int
    ) -> EnabledAccount:
        """Enable `account_name` for grant `grant_id` (or renew it) for `ttl_seconds`."""
        request = agent_control_service_pb2.EnableAccountRequest(
            account_name=account_name, grant_id=grant_id, ttl_seconds=ttl_seconds
        )
        try:
            reply: agent_control_service_pb2.EnableAccountResponse = await self._stub.EnableAccount(
                request, metadata=self._metadata, timeout=self._timeout_seconds
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        return EnabledAccount(
            password=reply.password or None,
            expire_time=reply.expire_time.ToDatetime(tzinfo=dt.UTC),
        )

    async def disable_account(
        self,
        account_name: str,
        grant_id: str,
        reason: agent_control_pb2.DisableReason.ValueType = (
            agent_control_pb2.DISABLE_REASON_SESSION_ENDED
        ),
    ) -> bool:
        """End grant `grant_id`; return whether the account is now disabled."""
        request = agent_control_service_pb2.DisableAccountRequest(
            account_name=account_name, grant_id=grant_id, reason=reason
        )
        try:
            reply: agent_control_service_pb2.DisableAccountResponse = (
                await self._stub.DisableAccount(
                    request, metadata=self._metadata, timeout=self._timeout_seconds
                )
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        return reply.account_disabled

    async def status(self) -> agent_control_service_pb2.GetStatusResponse:
        """Return the agent's status."""
        try:
            reply: agent_control_service_pb2.GetStatusResponse = await self._stub.GetStatus(
                agent_control_service_pb2.GetStatusRequest(),
                metadata=self._metadata,
                timeout=self._timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        return reply

    def _error(self, error: grpc.aio.AioRpcError) -> SftError:
        """Return sftd's refusal as a domain error; transport failures become Unavailable."""
        refused = refusal(error.code(), error.details())
        if refused is not None:
            return refused
        return Unavailable(
            f"sftd's control channel at {self._where} did not answer "
            f"({error.code().name}: {error.details()}); is sftd running?"
        )
