"""The broker's TLS files (broker.crt, broker.key, ca.pem in --tls-dir) and their hot reload.

sftd renews them by atomic rename; the server credentials stat the files at every
handshake and load a changed, valid set, so new connections see a renewed certificate
without a restart. A bad set on disk is logged and the last good one kept. Never logs
or copies the private key anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from runtime.errors import InvalidInput
from services.broker.identity import BrokerIdentity, broker_identity

__all__ = ["BrokerTLS", "ReloadingServerCredentials", "TLSFilesError", "load_broker_tls"]

log = structlog.get_logger("sft.broker.tls")

CERT_FILE = "broker.crt"
KEY_FILE = "broker.key"
CA_FILE = "ca.pem"
_MAX_FILE_BYTES = 1 << 20


class TLSFilesError(Exception):
    """The TLS files are missing or unusable; the message says which and why."""


@dataclass(frozen=True)
class BrokerTLS:
    """One consistent set of the broker's TLS files, and who the certificate says we are."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    identity: BrokerIdentity

    def __repr__(self) -> str:
        return f"BrokerTLS(identity={self.identity}, key_pem='…')"


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise TLSFilesError(
            f"{path} does not exist; sftd writes it when the broker is enrolled"
        ) from None
    except OSError as error:
        raise TLSFilesError(f"cannot read {path}: {error.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise TLSFilesError(f"{path} is over {_MAX_FILE_BYTES} bytes; it is not a PEM file")
    return data


def load_broker_tls(directory: Path) -> BrokerTLS:
    """Read and check the three files; raise TLSFilesError naming the first problem."""
    cert_path, key_path, ca_path = directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE
    cert_pem, key_pem, ca_pem = _read(cert_path), _read(key_path), _read(ca_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSFilesError(f"{cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TLSFilesError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSFilesError(f"{key_path} is not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise TLSFilesError(f"{key_path} is not the key of {cert_path}")
    try:
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TLSFilesError(f"{ca_path} is not a PEM CA bundle") from None
    if not any(ca.subject == cert.issuer for ca in authorities):
        raise TLSFilesError(f"{cert_path} was not issued by a CA in {ca_path}")
    try:
        identity = broker_identity(cert_pem)
    except InvalidInput as error:
        raise TLSFilesError(f"{cert_path}: {error.message}") from None
    return BrokerTLS(cert_pem, key_pem, ca_pem, identity)


def _stamp(directory: Path) -> tuple[tuple[int, int, int], ...]:
    """Return what changes when any of the three files is replaced or rewritten."""
    stamps = []
    for name in (CERT_FILE, KEY_FILE, CA_FILE):
        try:
            status = os.stat(directory / name)
        except OSError:
            stamps.append((0, 0, 0))
            continue
        stamps.append((status.st_ino, status.st_mtime_ns, status.st_size))
    return tuple(stamps)


def _configuration(tls: BrokerTLS) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem
    )


class ReloadingServerCredentials:
    """Server credentials requiring a client certificate from ca.pem, reloaded on change."""

    def __init__(self, directory: Path, initial: BrokerTLS) -> None:
        self._directory = directory
        self._stamp = _stamp(directory)
        self.current = initial
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _configuration(initial), self._fetch, require_client_authentication=True
        )

    def _fetch(self) -> Any:
        """Called by grpc at each handshake: a new configuration if the files changed, or None."""
        stamp = _stamp(self._directory)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            tls = load_broker_tls(self._directory)
        except TLSFilesError as error:
            log.warning(
                "keeping the previous TLS files: the new ones are unusable", error=str(error)
            )
            return None
        if tls.identity != self.current.identity:
            log.warning(
                "keeping the previous TLS files: the new certificate names another server",
                new=str(tls.identity),
                current=str(self.current.identity),
            )
            return None
        self.current = tls
        log.info("reloaded TLS files", directory=str(self._directory))
        return _configuration(tls)
