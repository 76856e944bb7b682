"""The device's Ed25519 key pair: made here, kept here, never sent anywhere but its public half.

Pure: serializes and fingerprints keys; the state module decides where they live.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "generate_device_key",
    "load_private_key",
    "private_key_openssh",
    "public_key_fingerprint",
    "public_key_line",
]


def generate_device_key() -> ed25519.Ed25519PrivateKey:
    """Make a fresh device key."""
    return ed25519.Ed25519PrivateKey.generate()


def private_key_openssh(key: ed25519.Ed25519PrivateKey) -> bytes:
    """Return the key in OpenSSH's private key format, unencrypted (the file is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def load_private_key(data: bytes) -> ed25519.Ed25519PrivateKey:
    """Return the Ed25519 key in an OpenSSH private key file; ValueError for anything else."""
    key = serialization.load_ssh_private_key(data, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("not an Ed25519 key")
    return key


def public_key_line(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    """Return `ssh-ed25519 AAAA…` (OpenSSH authorized_keys format, no comment)."""
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def public_key_fingerprint(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    """Return `SHA256:<unpadded base64>` of the public key blob, as `ssh-keygen -l` prints."""
    blob = base64.b64decode(public_key_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
