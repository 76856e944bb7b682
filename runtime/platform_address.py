"""The platform's address (`https://HOST[:PORT]`) and first contact with it.

Shared by `sft` and `sftd`, which both enroll with a code or token that pins the
platform's TLS CA: parse the URL a person typed, then read, without verifying it, the
chain the platform presents, so the caller can look for the pinned CA in it. That
probe is the only TLS in sft that verifies nothing; it trusts nothing it reads but a
certificate whose SHA-256 equals the pin. Each caller words the errors for its user.
"""

from __future__ import annotations

import hashlib
import ipaddress
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

__all__ = [
    "DEFAULT_PORT",
    "PlatformURL",
    "ProbeFailed",
    "certificate_sha256",
    "fetch_presented_chain",
    "parse_platform_url",
]

DEFAULT_PORT = 443
PROBE_TIMEOUT_SECONDS = 15.0


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
    def target(self) -> str:
        """Return the gRPC target, `HOST:PORT` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"https://{self.target}"


def _bad(url: str, why: str) -> ValueError:
    return ValueError(
        f"the platform URL {url!r} {why}; give it as https://HOST[:PORT], e.g. "
        "https://sft.example.com or https://127.0.0.1:8443"
    )


def parse_platform_url(url: str) -> PlatformURL:
    """Return the address in `url`; ValueError (one line, with the format) for anything but
    `https://HOST[:PORT][/]`."""
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


class ProbeFailed(Exception):
    """The platform's chain could not be read: `connected` says whether TCP got through."""

    def __init__(self, reason: str, *, connected: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connected = connected


def certificate_sha256(cert: x509.Certificate) -> bytes:
    """Return the SHA-256 of a certificate's DER encoding (what codes and tokens pin)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _tls_failure(exc: Exception) -> str:
    # pyOpenSSL reports [(library, function, reason), …]; the last reason is the useful one.
    errors = exc.args[0] if exc.args and isinstance(exc.args[0], list) else None
    if errors and isinstance(errors[-1], tuple) and errors[-1]:
        return str(errors[-1][-1])
    if isinstance(exc, SSL.SysCallError):
        return "the connection was closed during the handshake"
    return str(exc) or type(exc).__name__


def _wait(sock: socket.socket, deadline: float, *, writing: bool) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("TLS handshake timed out")
    if writing:
        _, ready, _ = select.select([], [sock], [], remaining)
    else:
        ready, _, _ = select.select([sock], [], [], remaining)
    if not ready:
        raise TimeoutError("TLS handshake timed out")


def _handshake(conn: SSL.Connection, sock: socket.socket, deadline: float) -> None:
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            _wait(sock, deadline, writing=False)
        except SSL.WantWriteError:
            _wait(sock, deadline, writing=True)


def fetch_presented_chain(
    url: PlatformURL, timeout_seconds: float = PROBE_TIMEOUT_SECONDS
) -> list[x509.Certificate]:
    """Return the certificates the platform presents in its TLS handshake, unverified.

    Blocking; call it from a thread when an event loop is running. Python's ssl cannot
    show the chain, hence pyOpenSSL. Raises ProbeFailed.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # Verification is off on purpose: the pin, not a CA store, decides what to trust.
    context.set_verify(SSL.VERIFY_NONE)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_alpn_protos([b"h2"])  # what gRPC speaks; a routing proxy may require it
    deadline = time.monotonic() + timeout_seconds
    try:
        sock = socket.create_connection((url.host, url.port), timeout=timeout_seconds)
    except OSError as exc:
        raise ProbeFailed(str(exc.strerror or exc), connected=False) from None
    try:
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        if not url.is_ip:  # RFC 6066: SNI carries host names only
            conn.set_tlsext_host_name(url.host.encode("idna"))
        conn.set_connect_state()
        try:
            _handshake(conn, sock, deadline)
        except (SSL.Error, OSError) as exc:
            raise ProbeFailed(_tls_failure(exc), connected=True) from None
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        try:
            conn.shutdown()
        except (SSL.Error, OSError):
            pass  # the chain is all this probe needed
        return list(chain)
    finally:
        sock.close()
