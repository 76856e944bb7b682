"""The platform's address as a person types it (`https://HOST[:PORT]`). Pure; no I/O.

The parsing is shared with sftd (runtime.platform_address); here a bad URL becomes a
usage error.
"""

from __future__ import annotations

from client.errors import EXIT_USAGE, ClientError
from runtime.platform_address import DEFAULT_PORT, PlatformURL
from runtime.platform_address import parse_platform_url as _parse

__all__ = ["DEFAULT_PORT", "PlatformURL", "parse_platform_url"]


def parse_platform_url(url: str) -> PlatformURL:
    """Return the address in `url`; refuse anything but `https://HOST[:PORT][/]`."""
    try:
        return _parse(url)
    except ValueError as exc:
        raise ClientError(str(exc), EXIT_USAGE) from None
