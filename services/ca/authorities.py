"""A project's CA keys: making them, their life (active → published → retired), and
the trust anchors servers and clients install. Pure: no database, no gRPC.

Private key bytes leave this module only to be sealed by the key-encryption key.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from runtime.errors import FailedPrecondition, InvalidInput
from services.ca.ssh_signer import USER_MAX_TTL_SECONDS, ssh_fingerprint
from services.ca.x509_signer import make_x509_authority, x509_fingerprint

__all__ = [
    "AuthorityKeyMaterial",
    "AuthorityKind",
    "AuthorityState",
    "PublishedAuthority",
    "SigningKey",
    "TrustAnchors",
    "check_retire_time",
    "effective_state",
    "generate_authority_key",
    "load_signing_key",
    "trust_anchors",
]


class AuthorityKind(enum.Enum):
    """What an authority signs."""

    SSH_USER = "ssh_user"
    SSH_HOST = "ssh_host"
    X509 = "x509"


class AuthorityState(enum.Enum):
    """Where a key is in its life: only ACTIVE signs; ACTIVE and PUBLISHED are trusted."""

    ACTIVE = "active"
    PUBLISHED = "published"
    RETIRED = "retired"


SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class AuthorityKeyMaterial:
    """A freshly made CA key: what is published, and the private bytes to seal."""

    kind: AuthorityKind
    key_type: str
    public_key: str  # SSH kinds: "ssh-ed25519 AAAA…"; empty for X509
    certificate_pem: str  # X509: the self-signed CA certificate; empty for SSH kinds
    fingerprint: str
    not_after: dt.datetime | None
    private_key_der: bytes  # PKCS#8 DER; seal it, never store or log it as is

    def __repr__(self) -> str:
        return f"AuthorityKeyMaterial(kind={self.kind.value}, fingerprint={self.fingerprint})"


@dataclass(frozen=True)
class PublishedAuthority:
    """The public half of an authority, enough to build trust anchors."""

    kind: AuthorityKind
    state: AuthorityState
    public_key: str
    certificate_pem: str
    create_time: dt.datetime


@dataclass(frozen=True)
class TrustAnchors:
    """What a project's servers and clients install to trust its certificates."""

    trusted_user_ca_keys: str  # sshd's TrustedUserCAKeys file body
    known_hosts: str  # @cert-authority lines for the host CA
    x509_ca_bundle_pem: str


def generate_authority_key(
    kind: AuthorityKind, project: str, now: dt.datetime
) -> AuthorityKeyMaterial:
    """Make a new CA key of `kind` for `project` (Ed25519 for SSH, ECDSA P-256 for X.509)."""
    if kind is AuthorityKind.X509:
        x509_key = ec.generate_private_key(ec.SECP256R1())
        certificate = make_x509_authority(
            project, x509_key, now, serial=secrets.randbelow(2**63 - 1) + 1
        )
        return AuthorityKeyMaterial(
            kind=kind,
            key_type="ecdsa-p256",
            public_key="",
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            fingerprint=x509_fingerprint(certificate),
            not_after=certificate.not_valid_after_utc,
            private_key_der=_pkcs8(x509_key),
        )
    ssh_key = ed25519.Ed25519PrivateKey.generate()
    public_line = (
        ssh_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return AuthorityKeyMaterial(
        kind=kind,
        key_type="ssh-ed25519",
        public_key=public_line,
        certificate_pem="",
        fingerprint=ssh_fingerprint(ssh_key.public_key()),
        not_after=None,
        private_key_der=_pkcs8(ssh_key),
    )


def load_signing_key(kind: AuthorityKind, private_key_der: bytes) -> SigningKey:
    """Return the private key an unsealed authority row holds, checked against its kind."""
    key = serialization.load_der_private_key(private_key_der, password=None)
    wanted = ec.EllipticCurvePrivateKey if kind is AuthorityKind.X509 else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        # Only reachable if a row was edited by hand: refuse rather than sign with it.
        raise FailedPrecondition(
            f"the stored {kind.value} authority key has the wrong type; rotate the authority"
        )
    return key


def effective_state(
    state: AuthorityState, retire_time: dt.datetime | None, now: dt.datetime
) -> AuthorityState:
    """Return the state as of `now`: a PUBLISHED key past its retire_time is RETIRED."""
    if state is AuthorityState.PUBLISHED and retire_time is not None and retire_time <= now:
        return AuthorityState.RETIRED
    return state


def check_retire_time(retire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """Return when a rotated-out key retires: as asked (not in the past) or after a day."""
    if retire_time is None:
        return now + dt.timedelta(seconds=USER_MAX_TTL_SECONDS)
    if retire_time < now:
        raise InvalidInput(
            f"previous_retire_time {retire_time.isoformat()} is in the past; give a future "
            "time (or none: the old key then stays trusted for 24 hours)"
        )
    return retire_time


def trust_anchors(project: str, authorities: Iterable[PublishedAuthority]) -> TrustAnchors:
    """Return the files that trust every ACTIVE and PUBLISHED key of `project`, active first."""
    trusted = sorted(
        (a for a in authorities if a.state is not AuthorityState.RETIRED),
        key=lambda a: (a.state is not AuthorityState.ACTIVE, -a.create_time.timestamp()),
    )
    user_keys = [f"{a.public_key} {project}\n" for a in trusted if a.kind is AuthorityKind.SSH_USER]
    host_lines = [
        f"@cert-authority * {a.public_key} {project}\n"
        for a in trusted
        if a.kind is AuthorityKind.SSH_HOST
    ]
    bundle = [_pem_block(a.certificate_pem) for a in trusted if a.kind is AuthorityKind.X509]
    return TrustAnchors("".join(user_keys), "".join(host_lines), "".join(bundle))


def _pem_block(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


def _pkcs8(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
