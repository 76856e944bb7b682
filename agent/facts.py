"""The facts sftd reports about its server: names, addresses, ports, version.

Reads the OS and sftd.yaml only; sends nothing itself (enrollment and heartbeats do).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import ipaddress
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent import paths
from agent.config import AgentConfig
from agent.paths import OSFamily
from sft.inventory.v1 import agent_pb2, server_pb2

__all__ = [
    "MAX_ADDRESSES",
    "ServerFacts",
    "agent_version",
    "facts_message",
    "gather_facts",
    "interface_address",
    "local_addresses",
]

log = structlog.get_logger("sftd.facts")

MAX_ADDRESSES = 64
_OS_ENUM = {
    "linux": server_pb2.OPERATING_SYSTEM_LINUX,
    "windows": server_pb2.OPERATING_SYSTEM_WINDOWS,
}


def agent_version() -> str:
    """Return sftd's version, e.g. `0.1.0`."""
    try:
        return importlib.metadata.version("sft")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ServerFacts:
    """What sftd reports about its server, from the OS and sftd.yaml."""

    hostname: str
    os: OSFamily
    addresses: tuple[str, ...]
    canonical_name: str = ""
    alt_names: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    access_address: str = ""
    ssh_port: int = 22
    #: 0 when sftd runs no broker.
    broker_port: int = 0
    bastion: str = ""
    agent_version: str = ""


def _reportable(text: str) -> str | None:
    """Return `text` as a normalised address if a client could use it, else None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    if address.is_multicast:
        return None
    return str(address)


def _psutil_addresses() -> list[str] | None:
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        return None
    found = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.append(str(entry.address))
    return found


def _outbound_address(family: socket.AddressFamily, probe: str) -> str | None:
    # connect() on a UDP socket sends nothing; it only asks the kernel which source
    # address it would use for that destination (documentation prefixes, never real).
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def local_addresses() -> tuple[str, ...]:
    """Return this machine's addresses a client could dial: no loopback or link-local."""
    candidates = _psutil_addresses()
    if candidates is None:
        candidates = []
        for name in {socket.gethostname(), socket.getfqdn()}:
            with contextlib.suppress(OSError):
                candidates += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
        for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
            address = _outbound_address(family, probe)
            if address is not None:
                candidates.append(address)
    seen: dict[str, None] = {}
    for text in candidates:
        address = _reportable(text)
        if address is not None:
            seen.setdefault(address)
    return tuple(seen)[:MAX_ADDRESSES]


def interface_address(name: str) -> str | None:
    """Return the first usable address of network interface `name` (IPv4 preferred)."""
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        psutil = None
    if psutil is not None:
        entries = psutil.net_if_addrs().get(name, [])
        ranked = sorted(entries, key=lambda entry: entry.family != socket.AF_INET)
        for entry in ranked:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = _reportable(str(entry.address))
                if address is not None:
                    return address
        return None
    if sys.platform != "linux":
        return None
    import fcntl
    import struct

    siocgifaddr = 0x8915
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            packed = fcntl.ioctl(
                sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15])
            )
    except OSError:
        return None
    return _reportable(socket.inet_ntoa(packed[20:24]))


def gather_facts(
    config: AgentConfig,
    *,
    hostname: Callable[[], str] = socket.gethostname,
    addresses: Callable[[], tuple[str, ...]] = local_addresses,
    interface: Callable[[str], str | None] = interface_address,
    os_family: Callable[[], OSFamily] | None = None,
) -> ServerFacts:
    """Return the facts to report now. Blocking (name lookups); run it in a thread."""
    access_address = config.access_address or ""
    if config.access_interface:
        access_address = interface(config.access_interface) or ""
        if not access_address:
            log.warning(
                "AccessInterface has no usable address; reporting none",
                interface=config.access_interface,
            )
    return ServerFacts(
        hostname=hostname(),
        os=(os_family or paths.current_os)(),
        addresses=addresses(),
        canonical_name=config.canonical_name or "",
        alt_names=config.alt_names,
        labels=dict(config.labels),
        access_address=access_address,
        ssh_port=config.sshd_port,
        broker_port=config.broker_port if config.broker else 0,
        bastion=config.bastion or "",
        agent_version=agent_version(),
    )


def facts_message(facts: ServerFacts) -> agent_pb2.ServerFacts:
    """Return `facts` as the protobuf the agent API takes."""
    return agent_pb2.ServerFacts(
        hostname=facts.hostname,
        canonical_name=facts.canonical_name,
        alt_names=list(facts.alt_names),
        labels=facts.labels,
        os=_OS_ENUM[facts.os],
        addresses=list(facts.addresses),
        access_address=facts.access_address,
        ssh_port=facts.ssh_port,
        broker_port=facts.broker_port,
        agent_version=facts.agent_version,
        bastion=facts.bastion,
    )
