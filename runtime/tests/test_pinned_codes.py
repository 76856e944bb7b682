"""Pinned one-time codes: round trip, and refusal of anything else without surprises."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.pinned_codes import CodeKind, PinnedCode

PIN = hashlib.sha256(b"platform ca").digest()


def test_code_round_trips_and_pins_its_ca() -> None:
    code = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, PIN)
    text = code.encode()
    assert text.startswith("sftc1_") and text == text.lower()
    parsed = PinnedCode.parse(f"  {text}\n", CodeKind.DEVICE_ENROLLMENT)
    assert parsed == code
    assert parsed.pins(PIN)
    assert not parsed.pins(hashlib.sha256(b"another ca").digest())
    assert parsed.secret_hash == hashlib.sha256(code.secret).hexdigest()


def test_two_codes_differ() -> None:
    first = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, PIN)
    second = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, PIN)
    assert first.secret != second.secret


def test_a_server_token_is_not_accepted_as_a_device_code() -> None:
    token = PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, PIN).encode()
    with pytest.raises(InvalidInput, match="starts with sftt1_, expected sftc1_"):
        PinnedCode.parse(token, CodeKind.DEVICE_ENROLLMENT)


def test_a_truncated_code_is_refused() -> None:
    text = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, PIN).encode()
    with pytest.raises(InvalidInput, match=r"truncated|damaged"):
        PinnedCode.parse(text[:-8], CodeKind.DEVICE_ENROLLMENT)


@given(st.text(max_size=200))
def test_arbitrary_input_is_refused_with_invalid_input_only(text: str) -> None:
    try:
        parsed = PinnedCode.parse(text, CodeKind.DEVICE_ENROLLMENT)
    except InvalidInput as error:
        assert "\n" not in error.message
    else:
        assert parsed.encode() == text.strip().lower()
