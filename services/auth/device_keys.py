"""Device and agent public keys: Ed25519 only, in OpenSSH format. Pure; no I/O."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.errors import InvalidInput

__all__ = ["DeviceKey", "parse_device_key"]

_MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class DeviceKey:
    """A parsed Ed25519 public key, its canonical line and its fingerprint."""

    key: ed25519.Ed25519PublicKey
    public_line: str  # "ssh-ed25519 AAAA…", without a comment
    fingerprint: str  # "SHA256:<unpadded base64>" of the key blob, as ssh-keygen -l prints


def parse_device_key(text: str) -> DeviceKey:
    """Return the key of an `ssh-ed25519 AAAA…` line; refuse anything else."""
    line = text.strip()
    if not line or len(line) > _MAX_KEY_CHARS or not line.startswith("ssh-ed25519 "):
        raise InvalidInput(
            "public_key must be one Ed25519 key in OpenSSH format (`ssh-ed25519 AAAA…`)"
        )
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            "public_key is not a valid ssh-ed25519 key; copy the whole line"
        ) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInput("public_key must be an Ed25519 key")
    public_line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return DeviceKey(key, public_line, f"SHA256:{digest}")
