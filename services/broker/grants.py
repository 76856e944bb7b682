"""Access grants: which caller may open tunnels, and when the agent must disable the account.

A grant ends at expire_time if no tunnel opened by then, grace_seconds after its last
tunnel closed, at once when released with no tunnel open, or when the broker stops.
While it lives and a tunnel has opened, the agent's own deadline is renewed, so the
agent's fail-closed expiry never cuts a session in use. Never holds or logs a password
after handing it out. No grpc here: the agent is reached through `AccountSwitch`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agent.control_client import EnabledAccount
from runtime.backoff import Backoff
from runtime.clock import Clock, utc_now
from runtime.errors import FailedPrecondition, NotFound, PermissionDenied, SftError, Unavailable
from services.broker.identity import Caller
from services.broker.metrics import GRANTS_ACTIVE, GRANTS_ENDED
from sft.agent.v1 import agent_control_pb2

__all__ = ["AccountSwitch", "Grant", "GrantBook", "IssuedGrant"]

log = structlog.get_logger("sft.broker.grants")

SESSION_ENDED = agent_control_pb2.DISABLE_REASON_SESSION_ENDED
RELEASED = agent_control_pb2.DISABLE_REASON_RELEASED
EXPIRED = agent_control_pb2.DISABLE_REASON_EXPIRED
BROKER_STOPPING = agent_control_pb2.DISABLE_REASON_BROKER_STOPPING
_REASON_NAMES = {
    SESSION_ENDED: "session_ended",
    RELEASED: "released",
    EXPIRED: "expired",
    BROKER_STOPPING: "broker_stopping",
}
#: How many ended grant ids are remembered, so a late tunnel hears "ended", not "unknown".
ENDED_GRANTS_REMEMBERED = 10_000
_DISABLE_ATTEMPTS = 4


class AccountSwitch(Protocol):
    """The agent's side: agent.control_client.ControlClient has exactly these."""

    async def enable_account(
        self, account_name: str, grant_id: str, ttl_seconds: int
    ) -> EnabledAccount:
        """Enable (or renew) `account_name` for `grant_id`."""
        ...

    async def disable_account(
        self,
        account_name: str,
        grant_id: str,
        reason: agent_control_pb2.DisableReason.ValueType = SESSION_ENDED,
    ) -> bool:
        """End `grant_id`; return whether the account is now disabled."""
        ...


@dataclass(frozen=True)
class IssuedGrant:
    """What RequestAccess returns. `repr` hides the password so it never reaches a log."""

    grant_id: str
    account: str
    password: str
    expire_time: dt.datetime

    def __repr__(self) -> str:
        return (
            f"IssuedGrant(grant_id={self.grant_id!r}, account={self.account!r}, password='…', "
            f"expire_time={self.expire_time.isoformat()})"
        )


@dataclass(eq=False)
class Grant:
    """One live (or just ended) grant and its open tunnels."""

    grant_id: str
    owner: tuple[str, str, str]
    account: str
    expire_time: dt.datetime
    open_tunnels: int = 0
    released: bool = False
    ended: bool = False
    timer: asyncio.TimerHandle | None = None
    renewal: asyncio.Task[None] | None = field(default=None, repr=False)


class GrantBook:
    """The broker's live grants; owns every timer and agent call they need."""

    def __init__(
        self,
        agent: AccountSwitch,
        *,
        grant_seconds: float,
        grace_seconds: float,
        clock: Clock = utc_now,
    ) -> None:
        if grant_seconds <= 0 or grace_seconds < 0:
            raise ValueError("need grant_seconds > 0 and grace_seconds >= 0")
        self._agent = agent
        self.grant_seconds = grant_seconds
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._live: dict[str, Grant] = {}
        self._ended: OrderedDict[str, tuple[tuple[str, str, str], str]] = OrderedDict()
        self._disabling: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def agent_ttl_seconds(self) -> int:
        """Return the TTL the agent is asked for: it disables the account itself after it."""
        return max(1, math.ceil(self.grant_seconds))

    def live(self) -> list[Grant]:
        """Return the live grants."""
        return list(self._live.values())

    async def request(self, caller: Caller) -> IssuedGrant:
        """Ask the agent to enable the caller's account for a new grant; return the grant."""
        if self._stopped:
            raise Unavailable("the broker is stopping; try again in a moment")
        grant_id = secrets.token_urlsafe(24)
        enabled = await self._agent.enable_account(caller.account, grant_id, self.agent_ttl_seconds)
        if enabled.password is None:
            # A new grant id always gets a fresh password; none means the agent is confused.
            await self._disable(caller.account, grant_id, EXPIRED)
            raise Unavailable("sftd enabled the account without a one-time password; retry")
        expire_time = self._clock() + dt.timedelta(seconds=self.grant_seconds)
        grant = Grant(grant_id, caller.user_key, caller.account, expire_time)
        self._live[grant_id] = grant
        GRANTS_ACTIVE.set(len(self._live))
        self._schedule(grant, self.grant_seconds, EXPIRED)
        log.info("grant issued", grant_id=grant_id, user=caller.user, account=caller.account)
        return IssuedGrant(grant_id, caller.account, enabled.password, expire_time)

    def find(self, grant_id: str, caller: Caller) -> Grant:
        """Return the caller's live grant `grant_id`, or raise why a tunnel may not use it."""
        grant = self._live.get(grant_id)
        if grant is None:
            ended = self._ended.get(grant_id)
            if ended is None:
                raise NotFound(f"no grant {grant_id[:64]!r} on this server; request access again")
            owner, account = ended
            self._check_owner(owner, account, caller)
            raise FailedPrecondition(
                f"grant {grant_id!r} has ended; request access again (`sft rdp` does it)"
            )
        self._check_owner(grant.owner, grant.account, caller)
        if grant.released:
            raise FailedPrecondition(
                f"grant {grant_id!r} was released; request access again (`sft rdp` does it)"
            )
        return grant

    def open_tunnel(self, grant: Grant) -> None:
        """Count a tunnel on `grant`: cancel its expiry or grace timer, keep the agent renewed."""
        grant.open_tunnels += 1
        if grant.timer is not None:
            grant.timer.cancel()
            grant.timer = None
        if grant.renewal is None:
            grant.renewal = asyncio.create_task(self._renew(grant))

    def close_tunnel(self, grant: Grant) -> None:
        """Uncount a tunnel; after the last one, end a released grant now, others after grace."""
        grant.open_tunnels -= 1
        if grant.open_tunnels > 0 or grant.ended:
            return
        if grant.released:
            self._end(grant, RELEASED)
        else:
            self._schedule(grant, self.grace_seconds, SESSION_ENDED)

    async def release(self, grant_id: str, caller: Caller) -> None:
        """End the caller's grant: now if no tunnel is open, else when the last one closes."""
        grant = self._live.get(grant_id)
        if grant is None:
            ended = self._ended.get(grant_id)
            if ended is not None and ended[0] != caller.user_key:
                raise PermissionDenied(f"grant {grant_id!r} belongs to another user")
            return  # unknown or already ended: releasing is idempotent
        if grant.owner != caller.user_key:
            raise PermissionDenied(f"grant {grant_id!r} belongs to another user")
        grant.released = True
        if grant.open_tunnels == 0:
            disabling = self._end(grant, RELEASED)
            # Answer once the agent has disabled the account (or gave up trying).
            await asyncio.wait({disabling}, timeout=30)

    async def stop(self) -> None:
        """End every grant (the agent disables their accounts) and wait for the agent calls."""
        self._stopped = True
        for grant in list(self._live.values()):
            self._end(grant, BROKER_STOPPING)
        if self._disabling:
            await asyncio.wait(set(self._disabling), timeout=30)

    def _check_owner(self, owner: tuple[str, str, str], account: str, caller: Caller) -> None:
        if owner != caller.user_key or account != caller.account:
            raise PermissionDenied(
                "this grant belongs to another user or account; request access with your own "
                "certificate"
            )

    def _schedule(
        self, grant: Grant, seconds: float, reason: agent_control_pb2.DisableReason.ValueType
    ) -> None:
        if grant.timer is not None:
            grant.timer.cancel()
        loop = asyncio.get_running_loop()
        grant.timer = loop.call_later(seconds, self._end, grant, reason)

    def _end(
        self, grant: Grant, reason: agent_control_pb2.DisableReason.ValueType
    ) -> asyncio.Task[None]:
        """Mark `grant` ended and start telling the agent; return that task."""
        grant.ended = True
        if grant.timer is not None:
            grant.timer.cancel()
            grant.timer = None
        if grant.renewal is not None:
            grant.renewal.cancel()
            grant.renewal = None
        self._live.pop(grant.grant_id, None)
        self._ended[grant.grant_id] = (grant.owner, grant.account)
        while len(self._ended) > ENDED_GRANTS_REMEMBERED:
            self._ended.popitem(last=False)
        GRANTS_ACTIVE.set(len(self._live))
        GRANTS_ENDED.labels(_REASON_NAMES[reason]).inc()
        log.info(
            "grant ended",
            grant_id=grant.grant_id,
            account=grant.account,
            reason=_REASON_NAMES[reason],
            open_tunnels=grant.open_tunnels,
        )
        task = asyncio.create_task(self._disable(grant.account, grant.grant_id, reason))
        self._disabling.add(task)
        task.add_done_callback(self._disabling.discard)
        return task

    async def _disable(
        self, account: str, grant_id: str, reason: agent_control_pb2.DisableReason.ValueType
    ) -> None:
        """Tell the agent the grant ended, retrying a few times; its TTL is the last resort."""
        backoff = Backoff(0.5, 5.0)
        for attempt in range(1, _DISABLE_ATTEMPTS + 1):
            try:
                await self._agent.disable_account(account, grant_id, reason)
                return
            except SftError as error:
                log.warning(
                    "could not end grant at the agent",
                    grant_id=grant_id,
                    account=account,
                    attempt=attempt,
                    error=error.message,
                )
            if attempt < _DISABLE_ATTEMPTS:
                await asyncio.sleep(backoff.next_delay())
        log.error(
            "gave up ending grant at the agent; it disables the account at the grant's TTL",
            grant_id=grant_id,
            account=account,
        )

    async def _renew(self, grant: Grant) -> None:
        """Renew the agent's deadline for `grant` until it ends (it then cancels this)."""
        interval = max(0.5, self.grant_seconds / 3)
        while not grant.ended:
            await asyncio.sleep(interval)
            try:
                await self._agent.enable_account(
                    grant.account, grant.grant_id, self.agent_ttl_seconds
                )
            except SftError as error:
                # The next renewal may succeed; the open tunnels keep running either way.
                log.warning(
                    "could not renew grant at the agent",
                    grant_id=grant.grant_id,
                    account=grant.account,
                    error=error.message,
                )
