"""The platform's address as a person types it (`https://HOST[:PORT]`). Pure; no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from client.errors import EXIT_USAGE, ClientError

__all__ = ["DEFAULT_PORT", "PlatformURL", "parse_platform_url"]

DEFAULT_PORT = 443


@dataclass(frozen=True)
class PlatformURL:
    """Where the platform listens: one TLS gRPC endpoint for every service."""

    host: str  # DNS name or IP address, without brackets
    port: int

    @property
    def is_ip(self) -> bool:
        """Return whether the host is an IP literal (TLS sends no SNI for those)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def _netloc(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def target(self) -> str:
        """Return the gRPC target, `HOST:PORT` (IPv6 in brackets)."""
        return f"{self._netloc}:{self.port}"

    def __str__(self) -> str:
        return f"https://{self._netloc}:{self.port}"


def _bad(url: str, why: str) -> ClientError:
    return ClientError(
        f"the platform URL {url!r} {why}; give it as https://HOST[:PORT], e.g. "
        "https://sft.example.com or https://127.0.0.1:8443",
        EXIT_USAGE,
    )


def parse_platform_url(url: str) -> PlatformURL:
    """Return the address in `url`; refuse anything but `https://HOST[:PORT][/]`."""
    text = url.strip()
    if "://" not in text:
        raise _bad(url, "has no scheme")
    parts = urlsplit(text)
    if parts.scheme.lower() != "https":
        raise _bad(url, f"uses {parts.scheme or 'no'}:// but sft only talks TLS")
    if parts.username is not None or parts.password is not None:
        raise _bad(url, "must not carry a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _bad(url, "must not have a path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise _bad(url, "has an invalid port") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _bad(url, "has no host")
    if ":" in host:  # only bracketed IPv6 literals may contain colons
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(url, "has an invalid IPv6 address") from None
    elif not all(ch.isascii() and (ch.isalnum() or ch in "-.") for ch in host):
        raise _bad(url, "has an invalid host name")
    if port == 0:
        raise _bad(url, "has port 0")
    return PlatformURL(host, port if port is not None else DEFAULT_PORT)
