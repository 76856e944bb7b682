"""The broker's TLS files in `<StateDir>/broker/`: its key, the certificate the CA issued, the CA.

Makes the broker's EC P-256 key on this server (it never leaves it: only a PKCS#10 CSR
is sent), and writes `broker.key`, `ca.pem` and then `broker.crt` atomically, the
certificate last so a broker that reloads when it changes finds the key it pairs
with. Never logs a private key; logs the certificate's serial and expiry.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.state import StateError
from runtime.files import write_atomic

__all__ = [
    "CA_FILE",
    "CERTIFICATE_FILE",
    "DIRECTORY",
    "KEY_FILE",
    "BrokerKey",
    "BrokerTLSFiles",
    "CertificateRefused",
]

log = structlog.get_logger("sftd.broker")

DIRECTORY = "broker"
CERTIFICATE_FILE = "broker.crt"
KEY_FILE = "broker.key"
CA_FILE = "ca.pem"
DIR_MODE = 0o750
KEY_MODE = 0o600
PUBLIC_MODE = 0o644


class CertificateRefused(Exception):
    """What the platform returned cannot serve as the broker's certificate (message: why)."""


@dataclass(frozen=True)
class BrokerKey:
    """The broker's TLS key (EC P-256), made here; only its CSR is sent."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> BrokerKey:
        """Make a fresh key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def csr_pem(self, common_name: str = "sft-broker") -> str:
        """Return a PKCS#10 request, PEM (the CA sets the names; the subject is a label)."""
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(self.private, hashes.SHA256())
        )
        return request.public_bytes(serialization.Encoding.PEM).decode()

    def pem(self) -> bytes:
        """Return the private key, PKCS#8 PEM, unencrypted (the file is 0600)."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def matches(self, certificate: x509.Certificate) -> bool:
        """Return whether `certificate` certifies this key."""
        return certificate.public_key() == self.private.public_key()


class BrokerTLSFiles:
    """`<StateDir>/broker/`: 0750 root:<broker group>; the key the broker's, 0600.

    `owner` (uid, gid) is the broker's account when it is not sftd's user; None keeps
    sftd's own ownership (sftd not root, or Windows).
    """

    def __init__(self, state_dir: Path, *, owner: tuple[int, int] | None = None) -> None:
        self.directory = state_dir / DIRECTORY
        self.owner = owner

    @property
    def certificate_path(self) -> Path:
        """Return where the broker's certificate is."""
        return self.directory / CERTIFICATE_FILE

    def ensure_directory(self) -> None:
        """Create the directory, 0750, group the broker's (tightening or fixing an existing one)."""
        try:
            self.directory.mkdir(mode=DIR_MODE, exist_ok=True)
            if os.name != "posix":
                return
            info = self.directory.stat()
            if self.owner is not None and (info.st_uid, info.st_gid) != (
                os.geteuid(),
                self.owner[1],
            ):
                os.chown(self.directory, os.geteuid(), self.owner[1])
            if info.st_mode & 0o777 != DIR_MODE:
                self.directory.chmod(DIR_MODE)
        except OSError as exc:
            raise StateError(
                f"cannot prepare {self.directory} for the broker ({exc.strerror or exc})"
            ) from None

    def store(self, key: BrokerKey, certificate_pem: str, ca_bundle_pem: str) -> x509.Certificate:
        """Check and write a new certificate with its key and the CA bundle; return it.

        CertificateRefused (nothing written) when the PEM is not a certificate for `key`.
        """
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError:
            raise CertificateRefused("the platform's broker certificate is not PEM") from None
        if not key.matches(certificate):
            raise CertificateRefused("the platform's broker certificate is for another key")
        self.ensure_directory()
        write_atomic(self.directory / KEY_FILE, key.pem(), KEY_MODE, owner=self.owner)
        self.store_ca(ca_bundle_pem)
        write_atomic(
            self.certificate_path,
            certificate.public_bytes(serialization.Encoding.PEM),
            PUBLIC_MODE,
            owner=self._public_owner(),
        )
        log.info(
            "broker certificate stored",
            serial=format(certificate.serial_number, "x"),
            expires=certificate.not_valid_after_utc.isoformat(),
        )
        return certificate

    def store_ca(self, ca_bundle_pem: str) -> None:
        """Replace the CA bundle the broker checks client certificates with."""
        self.ensure_directory()
        write_atomic(
            self.directory / CA_FILE,
            ca_bundle_pem.encode(),
            PUBLIC_MODE,
            owner=self._public_owner(),
        )

    def _public_owner(self) -> tuple[int, int] | None:
        """Root (sftd) owns the public files; the group is the broker's, for reading."""
        return None if self.owner is None else (os.geteuid(), self.owner[1])

    def read_certificate(self) -> x509.Certificate | None:
        """Return the stored certificate, or None when there is none or it is unreadable."""
        try:
            data = self.certificate_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the broker certificate", reason=exc.strerror or str(exc))
            return None
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            log.warning("the broker certificate is not PEM", file=str(self.certificate_path))
            return None

    def expire_time(self) -> dt.datetime | None:
        """Return when the stored certificate expires (None: there is none)."""
        certificate = self.read_certificate()
        return None if certificate is None else certificate.not_valid_after_utc

    def missing(self, now: dt.datetime) -> str | None:
        """Return why the broker cannot start with these files yet, or None when it can."""
        certificate = self.read_certificate()
        if certificate is None:
            return (
                "the broker has no server certificate yet; sftd asks the platform for one when "
                "it is enrolled and reachable"
            )
        if certificate.not_valid_after_utc <= now:
            return (
                f"the broker's server certificate expired at "
                f"{certificate.not_valid_after_utc.isoformat()}; sftd renews it when the "
                "platform is reachable"
            )
        if not (self.directory / CA_FILE).is_file():
            return f"{self.directory / CA_FILE} is missing; sftd writes it with the next renewal"
        key = self._read_key()
        if key is None or not key.matches(certificate):
            return (
                f"{self.directory / KEY_FILE} is missing or does not pair with the broker's "
                "certificate; sftd makes a new key and certificate with the next renewal"
            )
        return None

    def _read_key(self) -> BrokerKey | None:
        """Return the stored key, or None when it is missing or not an EC key."""
        try:
            key = serialization.load_pem_private_key(
                (self.directory / KEY_FILE).read_bytes(), password=None
            )
        except (OSError, ValueError, TypeError):
            return None
        return BrokerKey(key) if isinstance(key, ec.EllipticCurvePrivateKey) else None
