"""Finding the real third-party programs tests run; skip locally, fail under CI=true."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

__all__ = ["find_program", "require", "require_program"]


def require(what: str, found: str | None, install_hint: str) -> str:
    """Return `found`, or skip (fail when CI=true) saying what to install."""
    if found:
        return found
    message = f"{what} is not installed; {install_hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def find_program(name: str, *patterns: str) -> str | None:
    """Return the path of `name` on PATH or the first match of `patterns`."""
    on_path = shutil.which(name)
    if on_path:
        return on_path
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    return None


def require_program(name: str, package: str) -> str:
    """Return the path of program `name`, or skip (fail when CI=true) naming its package."""
    return require(name, find_program(name), f"run `make deps` (Debian package {package})")
