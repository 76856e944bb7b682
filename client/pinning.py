"""First contact with a platform: find, in the chain it presents, the CA an enrollment code pins.

This is the only place sft opens TLS without verifying the peer, and it trusts
nothing it reads except a certificate whose SHA-256 equals the pin the code
carries. Everything after enrollment talks gRPC over TLS that trusts only that CA.
"""

from __future__ import annotations

import hashlib
import select
import socket
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from client.errors import ClientError, PlatformUnreachable
from client.platform_url import PlatformURL

__all__ = ["PinMismatch", "certificate_sha256", "fetch_presented_chain", "find_pinned_ca"]

PROBE_TIMEOUT_SECONDS = 15.0


class PinMismatch(ClientError):
    """The platform did not present the CA the enrollment code pins."""


def certificate_sha256(cert: x509.Certificate) -> bytes:
    """Return the SHA-256 of a certificate's DER encoding (what codes pin)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def find_pinned_ca(
    chain: list[x509.Certificate], pin: bytes, url: PlatformURL | str
) -> x509.Certificate:
    """Return the certificate in `chain` whose SHA-256 is `pin`; refuse a chain without it."""
    for cert in chain:
        if certificate_sha256(cert) == pin:
            return cert
    raise PinMismatch(
        f"the platform at {url} did not present the CA pinned by the enrollment code — "
        "possible man-in-the-middle",
        hint="check the URL and code",
    )


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

    Blocking; call it from a thread when an event loop is running.
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
        raise PlatformUnreachable(
            f"cannot reach the platform at {url}: {exc.strerror or exc}"
        ) from None
    try:
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        if not url.is_ip:  # RFC 6066: SNI carries host names only
            conn.set_tlsext_host_name(url.host.encode("idna"))
        conn.set_connect_state()
        try:
            _handshake(conn, sock, deadline)
        except (SSL.Error, OSError) as exc:
            raise PlatformUnreachable(
                f"the TLS handshake with the platform at {url} failed ({_tls_failure(exc)})",
                hint="check the URL: it must be the platform's gRPC endpoint",
            ) from None
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        try:
            conn.shutdown()
        except (SSL.Error, OSError):
            pass  # the chain is all this probe needed
        return list(chain)
    finally:
        sock.close()
