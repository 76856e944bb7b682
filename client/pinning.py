"""First contact with a platform: find, in the chain it presents, the CA an enrollment code pins.

The unverified handshake itself is runtime.platform_address (shared with sftd); it
trusts nothing it reads except a certificate whose SHA-256 equals the pin the code
carries. Everything after enrollment talks gRPC over TLS that trusts only that CA.
"""

from __future__ import annotations

from cryptography import x509

from client.errors import ClientError, PlatformUnreachable
from client.platform_url import PlatformURL
from runtime.platform_address import PROBE_TIMEOUT_SECONDS, ProbeFailed, certificate_sha256
from runtime.platform_address import fetch_presented_chain as _fetch

__all__ = ["PinMismatch", "certificate_sha256", "fetch_presented_chain", "find_pinned_ca"]


class PinMismatch(ClientError):
    """The platform did not present the CA the enrollment code pins."""


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


def fetch_presented_chain(
    url: PlatformURL, timeout_seconds: float = PROBE_TIMEOUT_SECONDS
) -> list[x509.Certificate]:
    """Return the certificates the platform presents in its TLS handshake, unverified.

    Blocking; call it from a thread when an event loop is running.
    """
    try:
        return _fetch(url, timeout_seconds)
    except ProbeFailed as exc:
        if not exc.connected:
            raise PlatformUnreachable(f"cannot reach the platform at {url}: {exc.reason}") from None
        raise PlatformUnreachable(
            f"the TLS handshake with the platform at {url} failed ({exc.reason})",
            hint="check the URL: it must be the platform's gRPC endpoint",
        ) from None
