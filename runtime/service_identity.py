"""How platform services know each other: mutual TLS with service certificates.

A service calls another through the internal listener, which requires a client
certificate signed by the platform CA and naming `sft-service://<service>`. Being on
the same network proves nothing; only the certificate does. Never logs a key.
"""

from __future__ import annotations

import functools

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from runtime.errors import PermissionDenied, Unauthenticated
from runtime.identity import CallerKind, Identity, current_identity
from runtime.tls import SERVICE_URI_SCHEME, TLSFiles

__all__ = [
    "identity_from_peer_certificate",
    "require_platform_service",
    "service_channel",
]

_PREFIX = f"{SERVICE_URI_SCHEME}://"


@functools.lru_cache(maxsize=256)
def identity_from_peer_certificate(pem: bytes) -> Identity:
    """Return the platform service a verified peer certificate names, or raise Unauthenticated.

    The TLS handshake has already checked the chain to the platform CA; this checks
    that the certificate was made for a service (clientAuth, one sft-service URI).
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound):
        raise Unauthenticated(
            "the client certificate is not a platform service certificate; "
            "use the service certificate the platform CA issued"
        ) from None
    services = [uri.removeprefix(_PREFIX) for uri in uris if uri.startswith(_PREFIX)]
    if len(services) != 1 or not services[0] or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise Unauthenticated(
            "the client certificate names no single platform service; "
            "use the service certificate the platform CA issued"
        )
    return Identity(CallerKind.PLATFORM_SERVICE, services[0])


def require_platform_service(*allowed: str) -> Identity:
    """Return the calling platform service if it is one of `allowed`; else PermissionDenied."""
    identity = current_identity.get()
    if identity.kind is not CallerKind.PLATFORM_SERVICE:
        raise PermissionDenied(
            "this RPC is internal to the platform: only platform services may call it, "
            "through the internal listener with a service certificate"
        )
    if allowed and identity.name not in allowed:
        raise PermissionDenied(
            f"service {identity.name!r} may not call this RPC; only {', '.join(allowed)} may"
        )
    return identity


def service_channel(
    target: str, credentials: TLSFiles, *, server_name: str | None = None
) -> grpc.aio.Channel:
    """Open a channel to another platform service's internal listener as `credentials`."""
    cert, key, ca = credentials.read()
    options: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert),
        options=options,
    )
