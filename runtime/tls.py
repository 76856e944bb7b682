"""The platform's own TLS material: a self-made CA and server certificate for dev.

In production the operator supplies certificate files (Kubernetes Secrets); on a
laptop `ensure_dev_pki` makes them in the data dir on first start. Private keys are
written 0600 and never logged. The CA's SHA-256 is what clients pin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "SERVICE_URI_SCHEME",
    "TLSFiles",
    "ca_sha256",
    "ensure_dev_pki",
    "issue_service_certificate",
    "service_tls_files",
    "write_private",
]

#: Platform services prove who they are to each other with client certificates
#: naming `sft-service://<service>`, signed by the platform CA.
SERVICE_URI_SCHEME = "sft-service"
SERVICE_VALIDITY = dt.timedelta(days=397)

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
# Re-issue the dev server certificate this long before it expires.
SERVER_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files a TLS endpoint needs."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (certificate chain, private key, CA bundle) as PEM bytes."""
        return self.cert_file.read_bytes(), self.key_file.read_bytes(), self.ca_file.read_bytes()


def write_private(path: Path, data: bytes) -> None:
    """Write `data` atomically to `path`, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def ca_sha256(ca_pem: bytes) -> bytes:
    """Return the SHA-256 of the first certificate in `ca_pem` (DER), as pinned by clients."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sft"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sft platform CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(directory / "ca.key", _pem_key(key))
    write_private(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _server_cert_is_current(path: Path, hosts: list[str], ca: x509.Certificate) -> bool:
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return False
    cert = chain[0]
    if ca not in chain[1:]:
        return False
    if cert.issuer != ca.subject or cert.not_valid_after_utc - SERVER_RENEW_BEFORE < _now():
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(entry in san for entry in _san_entries(hosts))


def _issue_server_cert(
    directory: Path, hosts: list[str], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(directory / "server.key", _pem_key(key))
    # The chain ends with the CA itself: `sft enroll` finds it there and checks it
    # against the SHA-256 its enrollment code pins before trusting anything.
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM
    )
    write_private(directory / "server.pem", chain)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    ca_pem_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    if not (ca_pem_path.exists() and ca_key_path.exists()):
        return None
    ca = x509.load_pem_x509_certificate(ca_pem_path.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not an ECDSA key")
    return ca, loaded


def service_tls_files(directory: Path, service: str) -> TLSFiles:
    """Return where the client certificate of platform service `service` lives."""
    return TLSFiles(
        directory / f"service-{service}.pem",
        directory / f"service-{service}.key",
        directory / "ca.pem",
    )


def issue_service_certificate(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, service: str, now: dt.datetime
) -> tuple[bytes, bytes]:
    """Return (certificate PEM, private key PEM) proving `service` to other platform services."""
    key = ec.generate_private_key(ec.SECP256R1())
    uri = f"{SERVICE_URI_SCHEME}://{service}"
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sft {service} service")])
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + SERVICE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _cert_is_current(path: Path, ca: x509.Certificate) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.issuer == ca.subject and cert.not_valid_after_utc - SERVER_RENEW_BEFORE > _now()


def ensure_dev_pki(directory: Path, hosts: list[str], services: tuple[str, ...] = ()) -> TLSFiles:
    """Make (or keep) a platform CA and a server certificate naming `hosts` in `directory`.

    Also makes a client certificate for each of `services` (see service_tls_files).

    The CA is created once and kept, so pinned fingerprints stay valid; the server
    certificate is re-issued when it nears expiry or does not name every host.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca, ca_key = _load_ca(directory) or _make_ca(directory)
    files = TLSFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    if not _server_cert_is_current(files.cert_file, hosts, ca):
        _issue_server_cert(directory, hosts, ca, ca_key)
    for service in services:
        paths = service_tls_files(directory, service)
        if not _cert_is_current(paths.cert_file, ca):
            cert_pem, key_pem = issue_service_certificate(ca, ca_key, service, _now())
            write_private(paths.key_file, key_pem)
            write_private(paths.cert_file, cert_pem)
    return files
