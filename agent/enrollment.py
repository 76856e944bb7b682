"""Enrolling this server with the token file, and the facts sftd reports about it.

Pins the platform before sending anything (the token carries the CA's SHA-256), keeps
the agent key across failed attempts (re-enrollment with the same key and token is
idempotent on the platform), stores the identity, and only then deletes the token
file. Waits without spinning: for a token that is not there yet (cloud-init often
writes it after boot), for a new token after a refused one, and with capped jittered
backoff for a platform that is down. Never logs the token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import importlib
import importlib.metadata
import ipaddress
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import structlog
from cryptography.hazmat.primitives import serialization

from agent import paths
from agent.config import AgentConfig, ConfigError
from agent.paths import OSFamily
from agent.platform import (
    CALL_TIMEOUT_SECONDS,
    PinMismatch,
    PlatformUnreachable,
    PlatformURL,
    fetch_presented_chain,
    find_pinned_ca,
    is_transient,
    platform_channel,
)
from agent.state import AgentKey, AgentState, HostCertificate, ServerIdentity, TrustAnchors
from runtime.backoff import Backoff
from runtime.errors import InvalidInput
from runtime.pinned_codes import CodeKind, PinnedCode
from sft.inventory.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, server_pb2

__all__ = [
    "Enrollment",
    "EnrollmentTimings",
    "HostKey",
    "ServerFacts",
    "agent_version",
    "facts_message",
    "gather_facts",
    "host_certificates",
    "host_key_paths",
    "local_addresses",
    "read_host_keys",
    "trust_anchors",
]

log = structlog.get_logger("sftd.enrollment")

MAX_HOST_KEYS = 8
MAX_ADDRESSES = 64
_HOST_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# sshd_config lines: `Keyword value` or `Keyword=value`.
_SSHD_LINE = re.compile(r"([A-Za-z]+)(?:\s*=\s*|\s+)(.*)")
_OS_ENUM = {
    "linux": server_pb2.OPERATING_SYSTEM_LINUX,
    "windows": server_pb2.OPERATING_SYSTEM_WINDOWS,
}

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- facts ------------------------------------------------------------------------------


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


# --- host keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    """One of sshd's host keys: where its private half is, and its public line."""

    path: Path
    public_line: str
    fingerprint: str


def host_key_paths(sshd_config_file: Path, defaults: tuple[Path, ...]) -> tuple[Path, ...]:
    """Return the private host key paths `HostKey` names in sshd_config, else sshd's defaults.

    Reads the main file only (no Include) and stops at the first Match block, where
    sshd does not allow HostKey anyway.
    """
    try:
        text = sshd_config_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return defaults
    named: list[Path] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SSHD_LINE.fullmatch(line)
        if match is None:
            continue
        keyword, value = match.group(1).lower(), match.group(2).strip()
        if keyword == "match":
            break
        if keyword == "hostkey" and value:
            named.append(Path(value.strip('"')))
    return tuple(named) or defaults


def _parse_public_line(text: str) -> tuple[str, str] | None:
    """Return (`type base64`, fingerprint) for an OpenSSH public key line, else None."""
    parts = text.split()
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    # The blob starts with its own type as an SSH string; a mismatch means a damaged file.
    if blob[4 : 4 + len(parts[0])] != parts[0].encode():
        return None
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{parts[0]} {parts[1]}", fingerprint


def read_host_keys(config: AgentConfig) -> tuple[HostKey, ...]:
    """Return sshd's host public keys (from `<HostKey>.pub`), existing ones only, at most 8."""
    key_paths = host_key_paths(config.sshd_config_file, paths.default_paths().host_key_files)
    found: dict[str, HostKey] = {}
    for path in key_paths:
        public = path.with_name(path.name + ".pub")
        try:
            text = public.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            log.debug("no readable public half of a host key", host_key=str(path))
            continue
        parsed = _parse_public_line(text)
        if parsed is None:
            log.warning("not an OpenSSH public key; skipping it", file=str(public))
            continue
        line, fingerprint = parsed
        found.setdefault(fingerprint, HostKey(path, line, fingerprint))
    return tuple(found.values())[:MAX_HOST_KEYS]


# --- what the platform returns ----------------------------------------------------------


def trust_anchors(message: agent_pb2.TrustAnchors) -> TrustAnchors:
    """Return the trust anchors in `message` as plain values."""
    return TrustAnchors(message.trusted_user_ca_keys, message.x509_ca_bundle_pem)


def host_certificates(
    keys: tuple[HostKey, ...], messages: list[agent_pb2.HostCertificate]
) -> tuple[HostCertificate, ...]:
    """Pair each returned certificate with the host key file it certifies."""
    by_fingerprint = {key.fingerprint: key for key in keys}
    paired = []
    for message in messages:
        key = by_fingerprint.get(message.host_key_fingerprint)
        if key is None:
            log.warning(
                "the platform certified a host key sftd did not send; ignoring it",
                fingerprint=message.host_key_fingerprint,
            )
            continue
        paired.append(
            HostCertificate(
                host_key_file=str(key.path),
                host_key_fingerprint=message.host_key_fingerprint,
                certificate=message.certificate,
                principals=tuple(message.principals),
                valid_after=message.valid_after.ToDatetime(tzinfo=dt.UTC),
                valid_before=message.valid_before.ToDatetime(tzinfo=dt.UTC),
            )
        )
    return tuple(paired)


# --- enrollment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentTimings:
    """How often enrollment looks again (tests shorten these)."""

    #: How often to look for a token file that is not there yet.
    token_poll_seconds: float = 5.0
    #: How often to log that the token file is still missing.
    missing_token_log_seconds: float = 60.0
    #: How often to look for a new token after one was refused.
    refused_token_poll_seconds: float = 30.0
    retry_initial_seconds: float = 1.0
    retry_maximum_seconds: float = 300.0


class _Refused(Exception):
    """This token cannot enroll as it is; wait for a new one (the message says why)."""


class _RetryLater(Exception):
    """The attempt failed for a reason that may pass; retry with backoff."""


_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class Enrollment:
    """Enrolls this server once; `run` returns its identity."""

    def __init__(
        self,
        config: AgentConfig,
        state: AgentState,
        *,
        clock: Clock = _utc_now,
        timings: EnrollmentTimings | None = None,
    ) -> None:
        if config.platform_url is None:
            raise ConfigError(
                "InitialURL is not set, and this server is not enrolled yet: set InitialURL "
                "to the platform's URL (https://HOST[:PORT]) in sftd.yaml"
            )
        self.url: PlatformURL = config.platform_url
        self.config = config
        self.state = state
        self._clock = clock
        self._timings = timings or EnrollmentTimings()
        self._backoff = Backoff(
            self._timings.retry_initial_seconds, self._timings.retry_maximum_seconds
        )

    @property
    def token_file(self) -> Path:
        """Return where the enrollment token is expected."""
        return self.config.enrollment_token_file

    async def run(self) -> ServerIdentity:
        """Enroll, waiting as long as it takes; return the stored identity."""
        key = self.state.key()
        log.info(
            "enrolling this server",
            platform=str(self.url),
            token_file=str(self.token_file),
            agent_key=key.fingerprint,
        )
        while True:
            text, stamp = await self._token()
            try:
                return await self._attempt(text, key)
            except _Refused as refused:
                log.error(
                    "enrollment refused", reason=str(refused), token_file=str(self.token_file)
                )
                await self._new_token(stamp)
            except _RetryLater as failed:
                delay = self._backoff.next_delay()
                log.warning(
                    "enrollment failed; retrying",
                    reason=str(failed),
                    retry_in_seconds=round(delay, 1),
                )
                await asyncio.sleep(delay)

    async def _token(self) -> tuple[str, _Stamp | None]:
        """Return the token file's text once there is one, saying once a minute why not."""
        last_logged: float | None = None
        while True:
            stamp = _stamp(self.token_file)
            problem = None
            try:
                text = await asyncio.to_thread(self.token_file.read_text, encoding="utf-8")
            except FileNotFoundError:
                text = ""
            except (OSError, UnicodeDecodeError) as exc:
                text, problem = "", str(exc)
            if text.strip():
                return text.strip(), stamp
            now = time.monotonic()
            if last_logged is None or now - last_logged >= self._timings.missing_token_log_seconds:
                last_logged = now
                if problem is not None:
                    log.error(
                        "cannot read the enrollment token file",
                        token_file=str(self.token_file),
                        reason=problem,
                    )
                else:
                    log.info(
                        "waiting for an enrollment token",
                        token_file=str(self.token_file),
                        hint="write a token from `sft admin token create --project P` into it",
                    )
            await asyncio.sleep(self._timings.token_poll_seconds)

    async def _new_token(self, refused: _Stamp | None) -> None:
        """Return once the token file differs from the refused one (checked every 30 s)."""
        log.info(
            "waiting for a new enrollment token",
            token_file=str(self.token_file),
            check_every_seconds=self._timings.refused_token_poll_seconds,
        )
        # Polling: a file written by cloud-init or an operator raises no event to await.
        while _stamp(self.token_file) == refused:  # noqa: ASYNC110
            await asyncio.sleep(self._timings.refused_token_poll_seconds)
        self._backoff.reset()

    async def _attempt(self, text: str, key: AgentKey) -> ServerIdentity:
        try:
            code = PinnedCode.parse(text, CodeKind.SERVER_ENROLLMENT)
        except InvalidInput as exc:
            raise _Refused(f"the token file does not hold a usable token: {exc.message}") from None
        try:
            chain = await asyncio.to_thread(fetch_presented_chain, self.url)
            ca = find_pinned_ca(chain, code.ca_sha256, self.url)
        except PlatformUnreachable as exc:
            raise _RetryLater(str(exc)) from None
        except PinMismatch as exc:
            raise _Refused(str(exc)) from None
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        host_keys = await asyncio.to_thread(read_host_keys, self.config)
        facts = await asyncio.to_thread(gather_facts, self.config)
        if facts.os == "linux" and not host_keys:
            # sshd makes its keys on first start, which may come after sftd's.
            raise _RetryLater(
                "no SSH host keys found (HostKey in "
                f"{self.config.sshd_config_file}, else sshd's defaults); the platform "
                "certifies them, so enrollment waits for sshd's keys"
            )
        request = agent_service_pb2.EnrollServerRequest(
            enrollment_token=code.encode(),
            agent_public_key=key.public_line,
            host_public_keys=[host_key.public_line for host_key in host_keys],
            facts=facts_message(facts),
        )
        try:
            async with platform_channel(self.url, ca_pem) as channel:
                stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                reply = await stub.EnrollServer(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            details = error.details() or error.code().name
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise _Refused(f"the platform refused the token: {details}") from None
            if is_transient(error):
                raise _RetryLater(f"the platform at {self.url} is unavailable: {details}") from None
            raise _RetryLater(
                f"the platform refused enrollment ({error.code().name}): {details}"
            ) from None
        return self._store(reply, key, code, ca_pem, host_keys)

    def _store(
        self,
        reply: agent_service_pb2.EnrollServerResponse,
        key: AgentKey,
        code: PinnedCode,
        ca_pem: bytes,
        host_keys: tuple[HostKey, ...],
    ) -> ServerIdentity:
        subject = reply.credential.subject
        if not subject.startswith("teams/") or "/servers/" not in subject:
            raise _RetryLater(f"the platform answered with no server identity ({subject!r})")
        if reply.credential.key_fingerprint != key.fingerprint:
            raise _RetryLater("the platform answered for another agent key")
        identity = ServerIdentity(
            server=subject,
            platform_url=str(self.url),
            ca_sha256=code.ca_sha256.hex(),
            agent_key_fingerprint=key.fingerprint,
            enrolled_at=self._clock(),
        )
        self.state.write_enrollment(
            identity,
            ca_pem,
            host_certificates(host_keys, list(reply.host_certificates)),
            trust_anchors(reply.trust_anchors),
        )
        # Only now: a crash before this line leaves the token for a retry with the same key.
        try:
            self.token_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "enrolled, but cannot delete the token file",
                file=str(self.token_file),
                reason=str(exc),
            )
        log.info(
            "enrolled",
            server=identity.server,
            platform=identity.platform_url,
            host_certificates=len(reply.host_certificates),
        )
        return identity
