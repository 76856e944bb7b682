"""Keyset paging for newest-first listings: tokens opaque to callers, bound to their filters.

A token names the last row of a page (its time and id) and a digest of the filters
it was made for, so a caller cannot page through one listing with another's token.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import InvalidInput

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "decode_page_token",
    "encode_page_token",
    "filter_digest",
    "newest_first_page",
    "page_limit",
]

#: What page_size 0 means, and the most one page returns (AIP-158 style).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

Row = TypeVar("Row")


def page_limit(page_size: int) -> int:
    """Return how many rows a page of `page_size` holds (0 → 50, at most 1000); refuse < 0."""
    if page_size < 0:
        raise InvalidInput(
            f"page_size must not be negative (got {page_size}); use 0 for the default of "
            f"{DEFAULT_PAGE_SIZE}"
        )
    return DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)


def filter_digest(*filters: object) -> str:
    """Return a short digest of a listing's filters (JSON-serializable values)."""
    text = json.dumps(filters, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(after_time: dt.datetime, after_id: str | int, digest: str) -> str:
    """Return the token for the page after the row (`after_time`, `after_id`)."""
    payload = json.dumps({"t": after_time.isoformat(), "i": str(after_id), "f": digest})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, digest: str) -> tuple[dt.datetime, str]:
    """Return (time, id) of the row a token continues after; refuse damaged or foreign ones."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after_time = dt.datetime.fromisoformat(payload["t"])
        after_id, token_digest = str(payload["i"]), str(payload["f"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidInput(
            "page_token is not valid; pass next_page_token from the previous response unchanged"
        ) from None
    if token_digest != digest:
        raise InvalidInput(
            "page_token was made for different filters; repeat the request with the same "
            "filters, or start again without a page_token"
        )
    return after_time, after_id


async def newest_first_page(
    session: AsyncSession,
    query: Select[Row],
    row_type: Any,
    *,
    page_size: int,
    page_token: str,
    digest: str,
    id_type: Callable[[str], object] = str,
) -> tuple[Sequence[Row], str]:
    """Return one page of `query` ordered by (create_time, id) descending, and the next token.

    `row_type` is the mapped class, which must have `create_time` and `id` columns;
    `id_type` turns the id in a token back into the column's type.
    """
    size = page_limit(page_size)
    if page_token:
        after_time, after_text = decode_page_token(page_token, digest)
        try:
            after_id = id_type(after_text)
        except ValueError:
            raise InvalidInput(
                "page_token is not valid; pass next_page_token from the previous response unchanged"
            ) from None
        # A row-value comparison, which PostgreSQL answers from the (time, id) index;
        # the equivalent OR form makes it filter every earlier row.
        query = query.where(tuple_(row_type.create_time, row_type.id) < (after_time, after_id))
    ordered = query.order_by(row_type.create_time.desc(), row_type.id.desc()).limit(size + 1)
    rows = list(await session.scalars(ordered))
    if len(rows) <= size:
        return rows, ""
    last: Any = rows[size - 1]
    return rows[:size], encode_page_token(last.create_time, last.id, digest)
