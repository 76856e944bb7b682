"""Seals CA private keys at rest under a key-encryption key (KEK), AES-256-GCM.

Never logs or puts key bytes or plaintext in a message; a KMS can replace
LocalKeyEncryption behind the KeyEncryption protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runtime.errors import Conflict, FailedPrecondition, InvalidInput
from runtime.tls import write_private

__all__ = [
    "KEK_BYTES",
    "SEALED_PREFIX",
    "KeyEncryption",
    "LocalKeyEncryption",
    "generate_key_file",
]

#: A KEK is 32 random bytes (AES-256).
KEK_BYTES = 32
#: Version tag at the start of every sealed blob; bump it when the layout changes.
SEALED_PREFIX = b"sftk1"
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = len(SEALED_PREFIX) + _KEY_ID_BYTES + _NONCE_BYTES


class KeyEncryption(Protocol):
    """Seals and opens small secrets (CA private keys) bound to a context."""

    @property
    def key_id(self) -> str:
        """Return a public, stable name of the KEK (safe to log and store)."""
        ...

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Return `plaintext` encrypted and bound to `context` (e.g. the authority's row id)."""
        ...

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """Return the plaintext of `sealed`; raise FailedPrecondition if it cannot be opened."""
        ...


class LocalKeyEncryption:
    """KeyEncryption with a KEK held in this process (from a file or the environment).

    Sealed layout: b"sftk1" | 8-byte key-id hash | 12-byte random nonce | ciphertext+tag,
    with `context` as AES-GCM associated data, so a blob moved to another row fails.
    """

    def __init__(self, kek: bytes) -> None:
        """Use `kek` (32 bytes) as the key-encryption key."""
        if len(kek) != KEK_BYTES:
            raise FailedPrecondition(
                f"the key-encryption key must be {KEK_BYTES} bytes, not {len(kek)}; "
                "create one with `generate_key_file`"
            )
        self._aead = AESGCM(kek)
        # A hash of the key, not the key: it only tells KEKs apart.
        self._key_hash = hashlib.sha256(b"sft-kek-id\0" + kek).digest()[:_KEY_ID_BYTES]

    def __repr__(self) -> str:
        """Name the KEK by id only; never show key bytes."""
        return f"LocalKeyEncryption(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        """Return "local:" and the hex of a hash of the KEK."""
        return _key_id(self._key_hash)

    @classmethod
    def from_env(cls, value: str) -> LocalKeyEncryption:
        """Return a LocalKeyEncryption from a base64 KEK (e.g. an environment variable's value)."""
        return cls(_decode_kek(value, source="the key-encryption key value"))

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyEncryption:
        """Return a LocalKeyEncryption from a 0600 file holding the KEK in base64."""
        try:
            info = path.stat()
        except FileNotFoundError:
            raise FailedPrecondition(
                f"key-encryption key file {path} does not exist; create it with "
                "`generate_key_file` or fix ca_kek_file"
            ) from None
        if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FailedPrecondition(
                f"key-encryption key file {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`"
            )
        return cls(_decode_kek(path.read_text("ascii", errors="replace"), source=str(path)))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """Return `plaintext` encrypted under the KEK with a fresh nonce, bound to `context`."""
        _check_context(context)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, context)
        return SEALED_PREFIX + self._key_hash + nonce + ciphertext

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """Return the plaintext of `sealed`; raise FailedPrecondition if it cannot be opened."""
        _check_context(context)
        if not sealed.startswith(SEALED_PREFIX) or len(sealed) < _HEADER_BYTES + _TAG_BYTES:
            raise FailedPrecondition(
                "CA key is not in a known sealed format (expected sftk1); "
                "the stored value is damaged or from a newer version"
            )
        key_hash = sealed[len(SEALED_PREFIX) : len(SEALED_PREFIX) + _KEY_ID_BYTES]
        nonce = sealed[len(SEALED_PREFIX) + _KEY_ID_BYTES : _HEADER_BYTES]
        if key_hash != self._key_hash:
            raise FailedPrecondition(
                f"CA key was sealed with key-encryption key {_key_id(key_hash)}, but the "
                f"configured one is {self.key_id}; check ca_kek_file"
            )
        try:
            return self._aead.decrypt(nonce, sealed[_HEADER_BYTES:], context)
        except InvalidTag:
            raise FailedPrecondition(
                "CA key cannot be decrypted with the configured key-encryption key "
                f"(key id {self.key_id}); check ca_kek_file"
            ) from None


def generate_key_file(path: Path) -> LocalKeyEncryption:
    """Write a new random KEK to `path` (base64, 0600) and return it; never overwrite one."""
    if path.exists():
        # Replacing a KEK would make every sealed CA key unreadable.
        raise Conflict(
            f"key-encryption key file {path} already exists; keep it, or move it away "
            "only if no CA key was sealed with it"
        )
    kek = secrets.token_bytes(KEK_BYTES)
    write_private(path, base64.b64encode(kek) + b"\n")
    return LocalKeyEncryption(kek)


def _decode_kek(text: str, *, source: str) -> bytes:
    """Return the KEK bytes of base64 `text`; the message never repeats the text."""
    try:
        kek = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise FailedPrecondition(
            f"{source} is not base64; it must hold {KEK_BYTES} random bytes in base64 "
            "(create one with `generate_key_file`)"
        ) from None
    if len(kek) != KEK_BYTES:
        raise FailedPrecondition(
            f"{source} holds {len(kek)} bytes, not {KEK_BYTES}; it must hold {KEK_BYTES} "
            "random bytes in base64 (create one with `generate_key_file`)"
        )
    return kek


def _check_context(context: bytes) -> None:
    """Refuse an empty context: binding every sealed key to its row is the point."""
    if not context:
        raise InvalidInput("a sealing context is required (e.g. the authority's id); got none")


def _key_id(key_hash: bytes) -> str:
    """Return the printable key id of a key hash."""
    return "local:" + key_hash.hex()
