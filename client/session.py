"""A signed-in conversation with one team's platform: what every verb after `enroll` uses.

A Session loads the team's state, opens one channel that trusts only the pinned
platform CA, and keeps an access token fresh: it logs in again (a signed assertion
from the device key) when the token is missing or has less than a minute left,
and once more when the platform refuses it on a read. Never prints or logs the
token or the assertion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import grpc.aio

from client.channels import PlatformCallInterceptor, platform_channel
from client.platform_url import PlatformURL, parse_platform_url
from client.state import DeviceRecord, Home, StoredToken, TeamDir
from sft.auth.v1 import identity_pb2, token_service_pb2, token_service_pb2_grpc

__all__ = ["TOKEN_RENEW_BEFORE", "LoginResult", "Session"]

#: A token closer than this to its expiry is replaced before use, so a call never
#: starts with a token that dies on the way.
TOKEN_RENEW_BEFORE = dt.timedelta(seconds=60)

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LoginResult:
    """Whom a fresh access token identifies, and until when (never the token itself)."""

    team: str
    kind: str  # user, service_user or server
    user: str
    device: str
    token_id: str
    expire_time: dt.datetime

    def as_json(self) -> dict[str, object]:
        """Return the `sft login -o json` form."""
        return {
            "team": self.team,
            "identity": {
                "kind": self.kind,
                "team": f"teams/{self.team}",
                "user": self.user,
                "device": self.device,
                "token_id": self.token_id,
            },
            "expire_time": self.expire_time.isoformat(),
        }


def _kind_name(kind: int) -> str:
    name = identity_pb2.IdentityKind.Name(kind)  # type: ignore[arg-type]
    return name.removeprefix("IDENTITY_KIND_").lower()


class Session:
    """One team's platform connection and access token. Use with `async with`."""

    def __init__(self, team_dir: TeamDir, *, clock: Clock = _utc_now) -> None:
        self.team_dir = team_dir
        self.record: DeviceRecord = team_dir.read_device()
        self.url: PlatformURL = parse_platform_url(self.record.url)
        self._ca_pem = team_dir.read_ca_pem()
        self._clock = clock
        self._token: StoredToken | None = None
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    def for_team(cls, home: Home, team: str | None, *, clock: Clock = _utc_now) -> Session:
        """Return the session of `team` (or the current team), refusing one not enrolled."""
        return cls(home.enrolled(team), clock=clock)

    @property
    def team(self) -> str:
        """Return the team's short name."""
        return self.team_dir.team

    async def __aenter__(self) -> Session:
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

    def channel(self) -> grpc.aio.Channel:
        """Return the channel every call to the platform goes through (opened on first use)."""
        if self._channel is None:
            interceptor = PlatformCallInterceptor(self.url, self.team, tokens=self)
            self._channel = platform_channel(self.url, self._ca_pem, [interceptor])
        return self._channel

    def cached_token(self) -> StoredToken | None:
        """Return the stored token without asking the platform (it may have expired)."""
        return self._token or self.team_dir.read_token()

    async def login(self) -> LoginResult:
        """Prove possession of the device key and store a fresh access token."""
        async with self._lock:
            return await self._login_locked()

    async def _login_locked(self) -> LoginResult:
        from client.assertions import make_device_assertion  # PyJWT: only when logging in

        key = self.team_dir.read_device_key()
        assertion = make_device_assertion(key, self.record.device, self._clock())
        stub = token_service_pb2_grpc.TokenServiceStub(self.channel())
        reply = await stub.CreateAccessToken(
            token_service_pb2.CreateAccessTokenRequest(assertion=assertion)
        )
        token = StoredToken(reply.access_token, reply.expire_time.ToDatetime(tzinfo=dt.UTC))
        self.team_dir.write_token(token)
        self._token = token
        identity = reply.identity
        return LoginResult(
            team=self.team,
            kind=_kind_name(identity.kind),
            user=identity.user,
            device=identity.device,
            token_id=identity.token_id,
            expire_time=token.expire_time,
        )

    async def ensure_token(self) -> StoredToken:
        """Return a token good for at least TOKEN_RENEW_BEFORE, logging in when needed."""
        async with self._lock:
            token = self.cached_token()
            if token is None or token.valid_for(self._clock()) < TOKEN_RENEW_BEFORE:
                await self._login_locked()
                token = self._token
            assert token is not None
            self._token = token
            return token

    async def bearer_token(self) -> str:
        """Return the access token to send (TokenSource)."""
        return (await self.ensure_token()).access_token

    async def renew_token(self, rejected: str) -> str:
        """Log in again unless another call already replaced `rejected` (TokenSource)."""
        async with self._lock:
            current = self.cached_token()
            if current is None or current.access_token == rejected:
                await self._login_locked()
                current = self._token
            assert current is not None
            return current.access_token
