"""How the inventory and admin verbs call the platform: one Session per verb, every page of a List.

Light to import (grpc loads only when a verb runs), so `sft --help` stays fast.
Failures arrive as one-line ClientErrors from the session's interceptor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from client.errors import ClientError, RpcFailure
from client.state import Home

if TYPE_CHECKING:
    from client.session import Session

__all__ = [
    "MAX_PAGE_SIZE",
    "enum_name",
    "every_page",
    "explain_status",
    "list_every",
    "message_time",
    "project_resource",
    "run_in_session",
    "team_resource",
]

T = TypeVar("T")

#: The largest page the List methods hand out (AIP: larger sizes are capped).
MAX_PAGE_SIZE = 1000


def run_in_session(team: str | None, work: Callable[[Session], Awaitable[T]]) -> T:
    """Run `work` with the signed-in session of `team` (or the current team); return its result."""

    async def run() -> T:
        from client.session import Session  # grpc is imported only by verbs that call out

        async with Session.for_team(Home(), team) as session:
            return await work(session)

    return asyncio.run(run())


def team_resource(session: Session) -> str:
    """Return the session's team as a resource name, `teams/{team}`."""
    return f"teams/{session.team}"


def project_resource(session: Session, project: str) -> str:
    """Return project `project` of the session's team as a resource name."""
    return f"{team_resource(session)}/projects/{project}"


class PagedRequest(Protocol):
    """A List request (AIP-158 paging fields)."""

    page_size: int
    page_token: str


async def every_page(
    method: Callable[[Any], Awaitable[Any]],
    request: PagedRequest,
    field: str,
    *,
    limit: int | None = None,
) -> list[Any]:
    """Call a List `method` page after page; return the items of `field`, at most `limit`."""
    items: list[Any] = []
    request.page_token = ""
    while True:
        wanted = MAX_PAGE_SIZE if limit is None else min(MAX_PAGE_SIZE, limit - len(items))
        request.page_size = wanted
        reply = await method(request)
        items.extend(getattr(reply, field))
        if limit is not None and len(items) >= limit:
            return items[:limit]
        if not reply.next_page_token:
            return items
        request.page_token = reply.next_page_token


def explain_status(error: ClientError, hints: dict[str, str]) -> ClientError:
    """Return `error` with the hint `hints[status]` when the platform answered with that status.

    The platform's own message wins when it already names a command to run.
    """
    if isinstance(error, RpcFailure) and error.status in hints and "`sft " not in error.reason:
        return error.with_hint(hints[error.status])
    return error


def message_time(message: Any, field: str) -> dt.datetime | None:
    """Return the Timestamp `field` of a protobuf `message` as an aware datetime, None if unset."""
    if not message.HasField(field):
        return None
    value: dt.datetime = getattr(message, field).ToDatetime(tzinfo=dt.UTC)
    return value


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """Return an enum value the way JSON and tables spell it (`USER_STATUS_ACTIVE` → `active`)."""
    name = str(enum.Name(value)).removeprefix(prefix).lower()
    return "" if name == "unspecified" else name


#: What a List verb calls: the stub's List method and its first request.
Listing = Callable[["Session"], tuple[Callable[[Any], Awaitable[Any]], PagedRequest]]


def list_every(team: str | None, field: str, listing: Listing) -> list[Any]:
    """Return every `field` item of the List call `listing` names, in the session of `team`."""

    async def work(session: Session) -> list[Any]:
        method, request = listing(session)
        return await every_page(method, request, field)

    return run_in_session(team, work)
