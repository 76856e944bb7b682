"""The OpenSSH public keys a server enrolls with: its agent's Ed25519 key and sshd's host
keys. Pure parsing and fingerprints; never sees a private key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from runtime.errors import InvalidInput

__all__ = [
    "MAX_HOST_KEYS",
    "MAX_KEY_CHARS",
    "PublicKey",
    "parse_agent_key",
    "parse_host_key",
]

MAX_HOST_KEYS = 8
MAX_KEY_CHARS = 16 * 1024
_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key: its canonical line (no comment) and its SHA256 fingerprint."""

    line: str
    fingerprint: str


def _fingerprint(line: str) -> str:
    """Return `SHA256:<unpadded base64>` of a key line's blob, as ssh-keygen -l prints."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _load_ssh_key(text: str, what: str) -> tuple[object, str]:
    """Return a parsed OpenSSH public key and its canonical line (comment dropped)."""
    line = text.strip()
    if not line or len(line) > MAX_KEY_CHARS or "\n" in line:
        raise InvalidInput(f"{what} must be one OpenSSH public key line of at most 16 KiB")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"{what} is not a valid OpenSSH public key; send the whole `TYPE AAAA…` line"
        ) from None
    canonical = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return key, canonical


def parse_agent_key(text: str) -> PublicKey:
    """Return the agent's key from an `ssh-ed25519 AAAA…` line; refuse any other kind."""
    if not text.strip().startswith("ssh-ed25519 "):
        raise InvalidInput(
            "agent_public_key must be the agent's Ed25519 key in OpenSSH format "
            "(`ssh-ed25519 AAAA…`); sftd makes it in its state dir"
        )
    key, line = _load_ssh_key(text, "agent_public_key")
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidInput("agent_public_key must be an Ed25519 key")
    return PublicKey(line, _fingerprint(line))


def parse_host_key(text: str, index: int) -> PublicKey:
    """Return an SSH host key (Ed25519, ECDSA, or RSA of 2048 bits or more)."""
    what = f"host_public_keys[{index}]"
    if text.strip().split(" ", 1)[0] not in _HOST_KEY_TYPES:
        raise InvalidInput(
            f"{what} must be an ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa key "
            "in OpenSSH format (the .pub file beside sshd's HostKey)"
        )
    key, line = _load_ssh_key(text, what)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise InvalidInput(
            f"{what} is a {key.key_size}-bit RSA key; OpenSSH refuses RSA keys under 2048 "
            "bits, so certify an Ed25519 or larger RSA host key instead"
        )
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidInput(f"{what} is not a supported host key type")
    return PublicKey(line, _fingerprint(line))
