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
    #: USER / SERVICE_USER: the user id; AGENT: the server id; PLATFORM_SERVICE: its name.
    name: str
    team: str | None = None
    #: USER only: the device resource name the token was issued to.
    device: str | None = None
    #: Id of the access token the caller presented (never the token itself).
    token_id: str | None = None

    @property
    def user_resource(self) -> str:
        """Return `teams/{team}/users/{name}` (meaningful for USER and SERVICE_USER)."""
        return f"teams/{self.team}/users/{self.name}"

    def __str__(self) -> str:
        team = f"{self.team}/" if self.team else ""
        return f"{self.kind.value}:{team}{self.name}"


ANONYMOUS = Identity(CallerKind.ANONYMOUS, "anonymous")

current_identity: ContextVar[Identity] = ContextVar("current_identity", default=ANONYMOUS)

#: Turns call metadata (lower-case keys) into an Identity, or raises Unauthenticated.
Authenticator = Callable[[Sequence[tuple[str, str | bytes]]], Awaitable[Identity]]
