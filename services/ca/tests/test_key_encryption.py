"""Sealing CA keys at rest: round trips, and every way opening must fail."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from runtime.errors import Conflict, FailedPrecondition, InvalidInput
from services.ca.key_encryption import (
    KEK_BYTES,
    SEALED_PREFIX,
    KeyEncryption,
    LocalKeyEncryption,
    generate_key_file,
)

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not really -----END-----"


def _kek() -> LocalKeyEncryption:
    """Return a KEK made of fresh random bytes."""
    return LocalKeyEncryption(os.urandom(KEK_BYTES))


def test_sealed_key_opens_with_the_same_kek_and_context() -> None:
    kek: KeyEncryption = _kek()
    sealed = kek.seal(SECRET, b"authority/1")
    assert sealed.startswith(SEALED_PREFIX)
    assert SECRET not in sealed
    assert kek.open(sealed, b"authority/1") == SECRET


def test_each_seal_uses_a_fresh_nonce() -> None:
    kek = _kek()
    assert kek.seal(SECRET, b"a") != kek.seal(SECRET, b"a")


def test_wrong_kek_is_refused_naming_both_key_ids() -> None:
    sealed = _kek().seal(SECRET, b"authority/1")
    other = _kek()
    with pytest.raises(FailedPrecondition, match=r"configured one is local:[0-9a-f]{16}") as info:
        other.open(sealed, b"authority/1")
    assert other.key_id in info.value.message


def test_moved_to_another_context_is_refused() -> None:
    kek = _kek()
    sealed = kek.seal(SECRET, b"authority/1")
    with pytest.raises(FailedPrecondition, match=r"cannot be decrypted.*key id local:"):
        kek.open(sealed, b"authority/2")


@pytest.mark.parametrize("position", [-1, -20, len(SEALED_PREFIX) + 8 + 3])
def test_tampered_blob_is_refused(position: int) -> None:
    kek = _kek()
    sealed = bytearray(kek.seal(SECRET, b"ctx"))
    sealed[position] ^= 0x01
    with pytest.raises(FailedPrecondition, match="check ca_kek_file"):
        kek.open(bytes(sealed), b"ctx")


@pytest.mark.parametrize("blob", [b"", b"sftk1", b"sftk2" + bytes(60), b"garbage" * 10])
def test_unknown_or_short_format_is_refused(blob: bytes) -> None:
    with pytest.raises(FailedPrecondition, match="not in a known sealed format"):
        _kek().open(blob, b"ctx")


def test_empty_context_is_refused() -> None:
    kek = _kek()
    with pytest.raises(InvalidInput, match="context is required"):
        kek.seal(SECRET, b"")
    with pytest.raises(InvalidInput, match="context is required"):
        kek.open(kek.seal(SECRET, b"x"), b"")


def test_generated_key_file_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    made = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text())) == KEK_BYTES
    loaded = LocalKeyEncryption.from_file(path)
    assert loaded.key_id == made.key_id
    assert loaded.open(made.seal(SECRET, b"c"), b"c") == SECRET


def test_generate_never_overwrites_an_existing_kek(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(Conflict, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_group_or_world_accessible_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek"
    generate_key_file(path)
    path.chmod(mode)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        LocalKeyEncryption.from_file(path)


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        LocalKeyEncryption.from_file(tmp_path / "absent")


@pytest.mark.parametrize("length", [16, 31, 33, 64])
def test_key_file_of_wrong_length_is_refused_without_echoing_it(
    tmp_path: Path, length: int
) -> None:
    path = tmp_path / "kek"
    text = base64.b64encode(os.urandom(length)).decode()
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(FailedPrecondition, match=f"holds {length} bytes, not 32") as info:
        LocalKeyEncryption.from_file(path)
    assert text not in info.value.message


def test_key_file_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text("not base64 at all!!\n")
    path.chmod(0o600)
    with pytest.raises(FailedPrecondition, match="is not base64"):
        LocalKeyEncryption.from_file(path)


def test_env_value_round_trips_and_wrong_length_is_refused() -> None:
    raw = os.urandom(KEK_BYTES)
    kek = LocalKeyEncryption.from_env(base64.b64encode(raw).decode() + "\n")
    assert kek.open(LocalKeyEncryption(raw).seal(SECRET, b"c"), b"c") == SECRET
    with pytest.raises(FailedPrecondition, match="holds 8 bytes"):
        LocalKeyEncryption.from_env(base64.b64encode(b"12345678").decode())


def test_repr_and_key_id_never_show_key_bytes() -> None:
    raw = os.urandom(KEK_BYTES)
    kek = LocalKeyEncryption(raw)
    for shown in (repr(kek), kek.key_id):
        assert raw.hex() not in shown
        assert base64.b64encode(raw).decode() not in shown
