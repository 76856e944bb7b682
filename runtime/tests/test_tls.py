"""Self-made platform TLS material: kept across starts, private keys 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store

from runtime.tls import ca_sha256, ensure_dev_pki


def test_dev_pki_is_created_once_and_keys_are_private(tmp_path: Path) -> None:
    first = ensure_dev_pki(tmp_path / "tls", ["127.0.0.1", "localhost"])
    pin = ca_sha256(first.ca_file.read_bytes())
    for key in (tmp_path / "tls" / "ca.key", first.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = ensure_dev_pki(tmp_path / "tls", ["127.0.0.1", "localhost"])
    assert ca_sha256(second.ca_file.read_bytes()) == pin


def test_server_certificate_is_reissued_for_a_new_name_under_the_same_ca(tmp_path: Path) -> None:
    files = ensure_dev_pki(tmp_path / "tls", ["127.0.0.1"])
    before = files.cert_file.read_bytes()
    pin = ca_sha256(files.ca_file.read_bytes())
    files = ensure_dev_pki(tmp_path / "tls", ["127.0.0.1", "platform.example.test"])
    assert files.cert_file.read_bytes() != before
    assert ca_sha256(files.ca_file.read_bytes()) == pin
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("platform.example.test"))
    )
    verifier.verify(leaf, [])  # raises if the chain, purpose or name is wrong
