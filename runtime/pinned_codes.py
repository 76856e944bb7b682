"""One-time secrets that also carry the platform CA's SHA-256 (device codes, server tokens).

A person pastes one string; the client or agent learns both what to present and which
TLS CA to trust for the platform, so first contact needs no trust-on-first-use
prompt. Only `secret_hash` is ever stored; the secret itself is shown once.

Format: `<prefix>_<secret>_<pin>` with both parts lowercase base32 without padding,
so a double-click selects the whole string in a terminal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import Enum

from runtime.errors import InvalidInput

__all__ = ["CodeKind", "PinnedCode", "hash_secret"]

SECRET_BYTES = 20  # 160 bits: far beyond guessing, so an unsalted SHA-256 is enough at rest.
PIN_BYTES = 32


class CodeKind(Enum):
    """What a pinned code is for; the prefix tells a person which command takes it."""

    DEVICE_ENROLLMENT = "sftc1"  # `sft enroll --code`
    SERVER_ENROLLMENT = "sftt1"  # sftd's EnrollmentTokenFile


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


def hash_secret(secret: bytes) -> str:
    """Return the hex SHA-256 under which a secret is stored."""
    return hashlib.sha256(secret).hexdigest()


@dataclass(frozen=True)
class PinnedCode:
    """A one-time secret plus the SHA-256 of the platform TLS CA it must be used against."""

    kind: CodeKind
    secret: bytes
    ca_sha256: bytes

    @classmethod
    def generate(cls, kind: CodeKind, ca_sha256: bytes) -> PinnedCode:
        """Make a fresh random code of `kind` pinned to `ca_sha256`."""
        return cls(kind, secrets.token_bytes(SECRET_BYTES), ca_sha256)

    @classmethod
    def parse(cls, text: str, expected: CodeKind) -> PinnedCode:
        """Parse a pasted code, refusing anything that is not a well-formed `expected` code."""
        what = "enrollment code" if expected is CodeKind.DEVICE_ENROLLMENT else "enrollment token"
        parts = text.strip().split("_")
        if len(parts) != 3 or parts[0] not in {k.value for k in CodeKind}:
            raise InvalidInput(
                f"this is not an sft {what}; copy the whole string (it starts with "
                f"{expected.value}_)"
            )
        if parts[0] != expected.value:
            raise InvalidInput(
                f"this is not an {what} (it starts with {parts[0]}_, expected {expected.value}_)"
            )
        try:
            secret, pin = _unb32(parts[1]), _unb32(parts[2])
        except (binascii.Error, ValueError):
            raise InvalidInput(f"the {what} is damaged; copy it again in full") from None
        if len(secret) != SECRET_BYTES or len(pin) != PIN_BYTES:
            raise InvalidInput(f"the {what} is truncated; copy it again in full")
        return cls(expected, secret, pin)

    def encode(self) -> str:
        """Return the string shown once to the person who will paste it."""
        return f"{self.kind.value}_{_b32(self.secret)}_{_b32(self.ca_sha256)}"

    @property
    def secret_hash(self) -> str:
        """Return what the platform stores instead of the secret."""
        return hash_secret(self.secret)

    def pins(self, ca_sha256: bytes) -> bool:
        """Return whether this code was made for the CA with fingerprint `ca_sha256`."""
        return hmac.compare_digest(self.ca_sha256, ca_sha256)
