"""The CA's hard limits shared by every kind of certificate. Pure; no I/O."""

from __future__ import annotations

import re

from runtime.errors import InvalidInput

__all__ = ["CLOCK_SKEW_SECONDS", "MIN_RSA_BITS", "check_request_id", "check_ttl"]

#: valid_after / notBefore is backdated this much so a server whose clock lags still accepts.
CLOCK_SKEW_SECONDS = 60
MIN_RSA_BITS = 2048
# The contract's request-id alphabet: safe in an SSH key id, a log line and a URL.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_request_id(request_id: str) -> str:
    """Return `request_id` if it is 1-64 of A-Z a-z 0-9 . _ -; else InvalidInput."""
    if not request_id:
        raise InvalidInput(
            "request_id is required: pass the request id of the originating platform request"
        )
    if not _REQUEST_ID.fullmatch(request_id):
        raise InvalidInput(
            f"request_id {request_id[:80]!r} is not valid: use 1-64 letters, digits, '.', '_' "
            "and '-'"
        )
    return request_id


def check_ttl(ttl_seconds: int, max_seconds: int, what: str) -> None:
    """Refuse a TTL that is not positive or exceeds `max_seconds` (`what` names the limit)."""
    if ttl_seconds <= 0:
        raise InvalidInput(f"ttl_seconds must be positive, not {ttl_seconds}")
    if ttl_seconds > max_seconds:
        raise InvalidInput(
            f"ttl_seconds {ttl_seconds} exceeds {what} of {max_seconds}; "
            f"ask for at most {max_seconds} seconds"
        )
