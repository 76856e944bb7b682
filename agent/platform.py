"""How sftd talks to the platform: its address, the pin check on first contact, the
channel that trusts only the pinned CA, and the agent's access token.

First contact (`fetch_presented_chain`) is the only TLS that verifies nothing, and it
trusts nothing but a certificate whose SHA-256 equals the enrollment token's pin.
Never logs the access token, the assertion or the enrollment token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from types import TracebackType

import grpc
import grpc.aio
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.state import AgentKey
from runtime.platform_address import (
    PROBE_TIMEOUT_SECONDS,
    PlatformURL,
    ProbeFailed,
    certificate_sha256,
    parse_platform_url,
)
from runtime.platform_address import fetch_presented_chain as _fetch
from sft.auth.v1 import token_service_pb2, token_service_pb2_grpc

__all__ = [
    "ASSERTION_AUDIENCE",
    "CALL_TIMEOUT_SECONDS",
    "AgentSession",
    "PinMismatch",
    "PlatformURL",
    "PlatformUnreachable",
    "fetch_presented_chain",
    "find_pinned_ca",
    "is_transient",
    "make_agent_assertion",
    "parse_platform_url",
    "platform_channel",
]

#: The `aud` auth expects on key assertions (services.auth.assertions.ASSERTION_AUDIENCE;
#: copied, since the agent never imports the services).
ASSERTION_AUDIENCE = "/sft.auth.v1.TokenService/CreateAccessToken"
ASSERTION_LIFETIME_SECONDS = 60
JTI_BYTES = 16
CALL_TIMEOUT_SECONDS = 20.0
#: A token with less than this left is replaced before a call, so no call starts with
#: a token that dies on the way (tokens live an hour; heartbeats come every minute).
TOKEN_RENEW_BEFORE = dt.timedelta(minutes=5)

#: Statuses that say "the platform is not there right now": retry with backoff.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PlatformUnreachable(Exception):
    """The platform could not be reached (network, DNS, TLS, or it is down)."""


class PinMismatch(Exception):
    """The platform did not present the CA the enrollment token pins."""


def is_transient(error: grpc.aio.AioRpcError) -> bool:
    """Return whether `error` means "try again later" rather than "this will not work"."""
    return error.code() in _TRANSIENT


# --- first contact ---------------------------------------------------------------------


def find_pinned_ca(chain: list[x509.Certificate], pin: bytes, url: PlatformURL) -> x509.Certificate:
    """Return the certificate in `chain` whose SHA-256 is `pin`; refuse a chain without it."""
    for cert in chain:
        if certificate_sha256(cert) == pin:
            return cert
    raise PinMismatch(
        f"the platform at {url} did not present the TLS CA the enrollment token pins "
        f"(pin sha256:{pin.hex()[:16]}…): check InitialURL, or get a token from this "
        "platform; nothing was sent to it"
    )


def fetch_presented_chain(
    url: PlatformURL, timeout_seconds: float = PROBE_TIMEOUT_SECONDS
) -> list[x509.Certificate]:
    """Return the certificates the platform presents in its TLS handshake, unverified.

    Blocking; run it in a thread (runtime.platform_address does the handshake).
    """
    try:
        return _fetch(url, timeout_seconds)
    except ProbeFailed as exc:
        if not exc.connected:
            raise PlatformUnreachable(f"cannot reach {url}: {exc.reason}") from None
        raise PlatformUnreachable(
            f"the TLS handshake with {url} failed ({exc.reason}); InitialURL "
            "must be the platform's gRPC endpoint"
        ) from None


# --- the agent's session ---------------------------------------------------------------


def make_agent_assertion(key: AgentKey, server: str, now: dt.datetime) -> str:
    """Return a compact EdDSA JWT naming `server` (iss = sub), valid for one minute."""
    issued = int(now.timestamp())
    claims = {
        "iss": server,
        "sub": server,
        "aud": ASSERTION_AUDIENCE,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
        "jti": secrets.token_urlsafe(JTI_BYTES),
    }
    headers = {"typ": "JWT", "kid": key.fingerprint}
    private: ed25519.Ed25519PrivateKey = key.private
    return jwt.encode(claims, private, algorithm="EdDSA", headers=headers)


def platform_channel(url: PlatformURL, ca_pem: bytes) -> grpc.aio.Channel:
    """Return a channel to `url` that trusts only `ca_pem` (and checks the host name)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(
        url.target,
        credentials,
        options=[
            ("grpc.primary_user_agent", "sftd"),
            # A dead TCP connection under a quiet WatchAccounts stream is noticed.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )


class AgentSession:
    """The agent's channel to its platform and its access token. Use with `async with`."""

    def __init__(
        self,
        url: PlatformURL,
        ca_pem: bytes,
        server: str,
        key: AgentKey,
        *,
        clock: Clock = _utc_now,
    ) -> None:
        self.url = url
        self.server = server
        self._ca_pem = ca_pem
        self._key = key
        self._clock = clock
        self._token: str | None = None
        self._expires: dt.datetime | None = None
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> AgentSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, if one was opened."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        """Return the channel every call goes through (opened on first use)."""
        if self._channel is None:
            self._channel = platform_channel(self.url, self._ca_pem)
        return self._channel

    @property
    def token_expire_time(self) -> dt.datetime | None:
        """Return when the current token expires (None: no token yet)."""
        return self._expires

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """Return call metadata with a token good for TOKEN_RENEW_BEFORE, renewing it if needed."""
        async with self._lock:
            if (
                self._token is None
                or self._expires is None
                or self._expires - self._clock() < TOKEN_RENEW_BEFORE
            ):
                await self._renew()
            assert self._token is not None
            return (("authorization", f"Bearer {self._token}"),)

    def forget_token(self) -> None:
        """Drop the token (the platform refused it); the next call gets a fresh one."""
        self._token = None
        self._expires = None

    async def _renew(self) -> None:
        assertion = make_agent_assertion(self._key, self.server, self._clock())
        stub = token_service_pb2_grpc.TokenServiceStub(self.channel)
        reply = await stub.CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(assertion=assertion),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        self._token = str(reply.access_token)
        self._expires = reply.expire_time.ToDatetime(tzinfo=dt.UTC)
