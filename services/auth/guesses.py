"""Rate limits on guessing secrets (enrollment codes, API key secrets), per source
address: refused guesses are counted in a window and a source over its budget is
refused before its guess is even looked at. Never records the guess itself.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from runtime.database import Database
from runtime.errors import ResourceExhausted
from services.auth import repository

__all__ = ["ENROLLMENT_CODES", "SERVICE_KEYS", "GuessBudget", "peer_source"]

_PEER_IP = re.compile(r"^ipv[46]:\[?([0-9A-Fa-f:.]+)\]?:\d+$")


def peer_source(context: Any) -> str:
    """Return the caller's IP address as gRPC reports it (`context` is a ServicerContext)."""
    peer = str(context.peer() or "")
    match = _PEER_IP.match(peer)
    return match.group(1) if match else peer[:64]


@dataclass(frozen=True)
class GuessBudget:
    """How many refused guesses at one kind of secret a source may make in a window."""

    #: Key of the failed-attempt rows (one table, one scope per kind of secret).
    scope: str
    #: What is guessed, plural, for the message ("enrollment codes").
    what: str
    allowed: int = 10
    window: dt.timedelta = dt.timedelta(minutes=10)

    async def check(self, database: Database, source: str, now: dt.datetime) -> None:
        """Refuse `source` if it spent its budget within the window."""
        async with database.sessions() as session:
            failures = await repository.count_failed_attempts(
                session, self.scope, source, now - self.window
            )
        if failures >= self.allowed:
            minutes = int(self.window.total_seconds() // 60)
            raise ResourceExhausted(
                f"too many refused {self.what} from {source}; wait {minutes} minutes and check "
                f"the {self.what.removesuffix('s')} with whoever issued it"
            )

    async def spend(self, database: Database, source: str, now: dt.datetime) -> None:
        """Record a refused guess in its own transaction (the refused call's work rolls back)."""
        async with database.sessions.begin() as session:
            await repository.record_failed_attempt(
                session, self.scope, source, now, keep_since=now - self.window
            )


ENROLLMENT_CODES = GuessBudget("enroll", "enrollment codes")
SERVICE_KEYS = GuessBudget("service_key", "API keys")
