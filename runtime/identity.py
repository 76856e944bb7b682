"""Who is calling: the identity bound to the current request.

The interceptor sets `current_identity` per call; authorization code reads it. Tokens
are checked by the authenticator a service installs (the auth issue adds the real
one); without one every caller is anonymous or a platform service by its TLS cert.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

__all__ = ["ANONYMOUS", "Authenticator", "CallerKind", "Identity", "current_identity"]


class CallerKind(Enum):
    """The kinds of principals the platform knows."""

    ANONYMOUS = "anonymous"
    USER = "user"
    AGENT = "agent"
    SERVICE_USER = "service_user"
    PLATFORM_SERVICE = "platform_service"


@dataclass(frozen=True)
class Identity:
    """A caller as the platform sees it after authentication."""

    kind: CallerKind
    name: str
    team: str | None = None

    def __str__(self) -> str:
        team = f"{self.team}/" if self.team else ""
        return f"{self.kind.value}:{team}{self.name}"


ANONYMOUS = Identity(CallerKind.ANONYMOUS, "anonymous")

current_identity: ContextVar[Identity] = ContextVar("current_identity", default=ANONYMOUS)

#: Turns call metadata (lower-case keys) into an Identity, or raises Unauthenticated.
Authenticator = Callable[[Sequence[tuple[str, str | bytes]]], Awaitable[Identity]]
