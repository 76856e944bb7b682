"""gRPC channels to the platform: TLS trusting only the pinned platform CA, never the system store.

Also the one client interceptor every call goes through: it gives each call a
deadline, adds the bearer token where the contract wants one, logs in again once
and retries a read the platform refused as unauthenticated, and turns any error
status into a one-line ClientError. Never prints or logs a token.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from client.errors import ENROLL_METHOD, LOGIN_METHOD, describe_rpc_failure
from client.platform_url import PlatformURL

__all__ = [
    "ANONYMOUS_METHODS",
    "CALL_TIMEOUT_SECONDS",
    "PlatformCallInterceptor",
    "TokenSource",
    "is_idempotent",
    "platform_channel",
]

CALL_TIMEOUT_SECONDS = 20.0

#: Calls whose proof is in the request itself (a code, an assertion, a secret). They
#: carry no bearer token: a stale one would get them refused before they are read.
ANONYMOUS_METHODS = frozenset(
    {ENROLL_METHOD, LOGIN_METHOD, "/sft.auth.v1.TokenService/CreateServiceUserToken"}
)
#: Writes that the contract documents as idempotent, so a retry cannot do harm.
IDEMPOTENT_WRITES = frozenset({"/sft.auth.v1.DeviceService/RevokeDevice"})


def is_idempotent(method: str) -> bool:
    """Return whether repeating `method` is harmless: AIP reads (Get*/List*) and named writes."""
    verb = method.rsplit("/", 1)[-1]
    return verb.startswith(("Get", "List")) or method in IDEMPOTENT_WRITES


class TokenSource(Protocol):
    """Where the interceptor gets bearer tokens (a Session)."""

    async def bearer_token(self) -> str:
        """Return a token that is good for at least a minute, logging in if needed."""

    async def renew_token(self, rejected: str) -> str:
        """Return a token other than `rejected`, which the platform just refused."""


def _user_agent() -> str:
    try:
        return f"sft/{importlib.metadata.version('sft')}"
    except importlib.metadata.PackageNotFoundError:
        return "sft"


def platform_channel(
    url: PlatformURL, ca_pem: bytes, interceptors: Sequence[Any] = ()
) -> grpc.aio.Channel:
    """Return a channel to `url` that trusts only `ca_pem` (and checks the host name)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(
        url.target,
        credentials,
        options=[("grpc.primary_user_agent", _user_agent())],
        interceptors=list(interceptors),
    )


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class PlatformCallInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Deadline, bearer token, one re-login for refused reads, and one-line errors."""

    def __init__(
        self,
        url: PlatformURL,
        team: str,
        tokens: TokenSource | None,
        default_timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._url = url
        self._team = team
        self._tokens = tokens
        self._default_timeout = default_timeout

    def _details(self, details: Any, token: str | None) -> Any:
        metadata = grpc.aio.Metadata(
            *((key, value) for key, value in (details.metadata or ()) if key != "authorization")
        )
        if token is not None:
            metadata.add("authorization", f"Bearer {token}")
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def _call(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        details: Any,
        request: Any,
        token: str | None,
    ) -> Any:
        call = await continuation(self._details(details, token), request)
        return await call

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        """Run the call with a token; retry an idempotent one once after logging in again."""
        method = _method_name(client_call_details)
        tokens = None if method in ANONYMOUS_METHODS else self._tokens
        try:
            if tokens is None:
                return await self._call(continuation, client_call_details, request, None)
            token = await tokens.bearer_token()
            try:
                return await self._call(continuation, client_call_details, request, token)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAUTHENTICATED or not is_idempotent(method):
                    raise
            # The platform no longer takes a token we thought good (revoked, or its
            # clock ahead of ours): one fresh login, one more try.
            token = await tokens.renew_token(token)
            return await self._call(continuation, client_call_details, request, token)
        except grpc.aio.AioRpcError as error:
            raise describe_rpc_failure(
                error, method=method, url=str(self._url), team=self._team
            ) from None
