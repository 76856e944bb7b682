"""Shaping a credential request: its lifetime under the project's limits, the source
addresses it may be used from, and the known_hosts lines that trust the project's host
CA for exactly one server's names. Pure: no grpc, no I/O; never sees a private key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from runtime.errors import InvalidInput

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MAX_KEY_CHARS",
    "MAX_SOURCE_ADDRESSES",
    "MAX_TTL_SECONDS",
    "certificate_ttl",
    "check_source_addresses",
    "host_patterns",
    "known_hosts_for",
]

#: What a project's 0 means for its default and its maximum lifetime (see project.proto).
DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_TTL_SECONDS = 3600
#: The CA's hard cap on user credentials.
MAX_TTL_SECONDS = 86400
MAX_SOURCE_ADDRESSES = 32
MAX_KEY_CHARS = 16 * 1024
_PATTERN_BREAKERS = frozenset(" \t,*?!\r\n\0[]")


def certificate_ttl(
    requested_seconds: int, project: str, default_seconds: int, max_seconds: int
) -> int:
    """Return the lifetime to sign for: the request's, or the project's default.

    More than the project's maximum is refused, not silently shortened: the client asked
    for something specific and should learn it cannot have it.
    """
    maximum = min(max_seconds or DEFAULT_MAX_TTL_SECONDS, MAX_TTL_SECONDS)
    if requested_seconds < 0:
        raise InvalidInput("ttl_seconds must not be negative; use 0 for the project's default")
    if requested_seconds == 0:
        return min(default_seconds or DEFAULT_TTL_SECONDS, maximum)
    if requested_seconds > maximum:
        raise InvalidInput(
            f"ttl_seconds {requested_seconds} is over project {project}'s maximum of "
            f"{maximum} seconds; ask for less, or 0 for the project's default"
        )
    return requested_seconds


def check_source_addresses(values: Sequence[str]) -> list[str]:
    """Return the CIDR blocks (each as given) or raise InvalidInput naming the bad one."""
    if len(values) > MAX_SOURCE_ADDRESSES:
        raise InvalidInput(f"source_addresses takes at most {MAX_SOURCE_ADDRESSES} CIDR blocks")
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise InvalidInput(
                f"source address {value[:64]!r} is not an IP address or CIDR block "
                "(e.g. 203.0.113.7/32 or 2001:db8::/48)"
            ) from None
    return list(values)


def host_patterns(names: Iterable[str]) -> list[str]:
    """Return known_hosts host patterns for a server's names and addresses.

    Each name appears plain (port 22) and as `[name]:*` (any other port: ssh looks hosts
    on other ports up as `[host]:port`). Names that would change a pattern's meaning
    (wildcards, negation, separators) are left out.
    """
    seen: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name and not (_PATTERN_BREAKERS & set(name)) and name not in seen:
            seen.append(name)
    return seen + [f"[{name}]:*" for name in seen]


def known_hosts_for(ca_known_hosts: str, patterns: Sequence[str]) -> str:
    """Return the CA's `@cert-authority * KEY COMMENT` lines, scoped to `patterns`."""
    if not patterns:
        return ""
    lines = []
    for line in ca_known_hosts.splitlines():
        marker, _, rest = line.partition(" ")
        hosts, _, key = rest.partition(" ")
        if marker == "@cert-authority" and hosts == "*" and key:
            lines.append(f"@cert-authority {','.join(patterns)} {key}\n")
    return "".join(lines)
