"""Keyset page tokens for newest-first listings: opaque to callers, bound to their filters.

A token names the last row of a page (its time and id) and a digest of the filters
it was made for, so a caller cannot page through one listing with another's token.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json

from runtime.errors import InvalidInput

__all__ = ["decode_page_token", "encode_page_token", "filter_digest"]


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
