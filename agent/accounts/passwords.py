"""One-time passwords for broker-granted sessions. Made from `secrets`; never logged or stored."""

from __future__ import annotations

import secrets
import string

__all__ = ["MIN_LENGTH", "one_time_password"]

#: The shortest one-time password this module makes.
MIN_LENGTH = 24
# Windows' complexity rule wants three of four classes; we always put in all four.
# The symbols avoid characters that need quoting in an .rdp file, a shell, chpasswd's
# `name:password` line (':'), or that look alike in a terminal.
_CLASSES = (
    string.ascii_uppercase,
    string.ascii_lowercase,
    string.digits,
    "-_.+=@#%",
)
_ALPHABET = "".join(_CLASSES)


def one_time_password(length: int = 32) -> str:
    """Return a fresh random password of `length` (≥ 24) with every character class in it."""
    if length < MIN_LENGTH:
        raise ValueError(f"one-time passwords are at least {MIN_LENGTH} characters")
    characters = [secrets.choice(chars) for chars in _CLASSES]
    characters += [secrets.choice(_ALPHABET) for _ in range(length - len(characters))]
    # Shuffle with a CSPRNG so the class-guaranteed characters are not always first.
    for index in range(len(characters) - 1, 0, -1):
        other = secrets.randbelow(index + 1)
        characters[index], characters[other] = characters[other], characters[index]
    return "".join(characters)
