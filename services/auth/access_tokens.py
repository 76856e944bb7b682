"""Opaque bearer access tokens: make them and hash them. Only the hash is stored."""

from __future__ import annotations

import base64
import hashlib
import secrets

__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "ACCESS_TOKEN_TTL_SECONDS",
    "hash_access_token",
    "new_access_token",
]

ACCESS_TOKEN_PREFIX = "sfta1_"  # noqa: S105 (a prefix, not a secret)
ACCESS_TOKEN_TTL_SECONDS = 3600
_MAX_TOKEN_CHARS = 4096


def new_access_token() -> str:
    """Return a fresh token: a prefix (so scanners can spot leaked ones) and 256 random bits."""
    return ACCESS_TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip(
        "="
    )


def hash_access_token(token: str) -> str | None:
    """Return the hex SHA-256 a token is stored under, or None if it cannot be one of ours."""
    if not token.startswith(ACCESS_TOKEN_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
        return None
    return hashlib.sha256(token.encode()).hexdigest()
