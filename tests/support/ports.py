"""Free loopback ports for servers started by tests, and whether something listens on one."""

from __future__ import annotations

import socket

__all__ = ["free_port", "listening"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Return whether a TCP connection to 127.0.0.1:`port` is accepted now."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
