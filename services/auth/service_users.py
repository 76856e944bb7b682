"""Service users and their API keys: names, key secrets and how a presented secret is
checked. Pure: no database, no grpc. A secret is shown once and stored only as its hex
SHA-256 (256 random bits need no slow hash); it is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid

from runtime.errors import InvalidInput

__all__ = [
    "KEY_SECRET_PREFIX",
    "MAX_KEYS_PER_SERVICE_USER",
    "check_key_id",
    "check_service_user_id",
    "hash_key_secret",
    "key_name",
    "new_key_secret",
    "secret_matches",
    "service_user_name",
    "split_key_name",
    "split_service_user_name",
]

#: Marks a string as an sft API key secret, so secret scanners can spot leaked ones.
KEY_SECRET_PREFIX = "sftk1_"  # noqa: S105 (a prefix, not a secret)
KEY_SECRET_BYTES = 32
MAX_KEY_SECRET_CHARS = 128
#: Keys a service user may hold at once (enough to rotate without a gap).
MAX_KEYS_PER_SERVICE_USER = 10
_SERVICE_USER_ID = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_TEAM = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# A hash no secret has: compared against when the key is unknown, so an unknown key
# costs the same time as a wrong secret.
_NO_SECRET_HASH = "0" * 64


def check_service_user_id(value: str) -> str:
    """Return `value` if it is a valid service user id; else InvalidInput."""
    if not _SERVICE_USER_ID.fullmatch(value):
        raise InvalidInput(
            f"service_user_id {value[:64]!r} is not valid: 1 to 32 characters of lowercase "
            "letters, digits, '_' and '-', starting with a letter or '_'"
        )
    return value


def service_user_name(team: str, service_user: str) -> str:
    """Return the resource name `teams/{team}/serviceUsers/{service_user}`."""
    return f"teams/{team}/serviceUsers/{service_user}"


def key_name(team: str, service_user: str, key_id: str) -> str:
    """Return the resource name of an API key."""
    return f"{service_user_name(team, service_user)}/keys/{key_id}"


def split_service_user_name(name: str) -> tuple[str, str]:
    """Return (team, service user id) of `teams/{team}/serviceUsers/{service_user}`."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "teams"
        or parts[2] != "serviceUsers"
        or not _TEAM.fullmatch(parts[1])
        or not _SERVICE_USER_ID.fullmatch(parts[3])
    ):
        raise InvalidInput(
            f"{name[:200]!r} is not a service user resource name; use "
            "teams/{team}/serviceUsers/{service_user}"
        )
    return parts[1], parts[3]


def split_key_name(name: str) -> tuple[str, str, str]:
    """Return (team, service user id, key id) of an API key resource name."""
    parent, marker, key_id = name.rpartition("/keys/")
    if not marker:
        raise InvalidInput(
            f"{name[:200]!r} is not an API key resource name; use "
            "teams/{team}/serviceUsers/{service_user}/keys/{key}"
        )
    team, service_user = split_service_user_name(parent)
    return team, service_user, check_key_id(key_id)


def check_key_id(value: str) -> str:
    """Return `value` if it has the form of a key id (a lowercase UUID); else InvalidInput."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        canonical = ""
    if canonical != value:
        raise InvalidInput(f"key id {value[:64]!r} is not a key id (a lowercase UUID)")
    return value


def new_key_secret() -> str:
    """Return a fresh secret: the prefix and 256 random bits, base64url without padding."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(KEY_SECRET_BYTES)).decode()
    return KEY_SECRET_PREFIX + raw.rstrip("=")


def hash_key_secret(secret: str) -> str:
    """Return the hex SHA-256 a secret is stored under."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Return whether `secret` is the one stored as `stored_hash`, in constant time.

    With no stored hash (unknown key) the same work is done and the answer is False.
    """
    well_formed = secret.startswith(KEY_SECRET_PREFIX) and len(secret) <= MAX_KEY_SECRET_CHARS
    presented = hash_key_secret(secret[:MAX_KEY_SECRET_CHARS])
    expected = stored_hash if stored_hash is not None else _NO_SECRET_HASH
    same = hmac.compare_digest(presented.encode(), expected.encode())
    return same and well_formed and stored_hash is not None
