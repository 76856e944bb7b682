"""The broker's key, CSR and files: made here, checked before they are written, private modes."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.broker_account import BrokerAccountError, broker_account
from agent.broker_tls import (
    CA_FILE,
    CERTIFICATE_FILE,
    KEY_FILE,
    BrokerKey,
    BrokerTLSFiles,
    CertificateRefused,
)
from agent.state import AgentState

NOW = dt.datetime.now(dt.UTC)
#: `nobody` on Debian: a user and group that are not root's.
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sign(csr_pem: str, *, days: float = 7) -> tuple[str, str]:
    """Return (certificate PEM, CA PEM): a throwaway CA's certificate for the CSR's key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "project CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    request = x509.load_pem_x509_csr(csr_pem.encode())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(ca_name)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    encoding = serialization.Encoding.PEM
    return leaf.public_bytes(encoding).decode(), ca.public_bytes(encoding).decode()


def test_the_csr_is_signed_by_a_fresh_p256_key_and_carries_no_private_part() -> None:
    key = BrokerKey.generate()
    pem = key.csr_pem()
    request = x509.load_pem_x509_csr(pem.encode())
    assert request.is_signature_valid
    public = request.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert public == key.private.public_key()
    assert "PRIVATE" not in pem
    assert BrokerKey.generate().private.public_key() != public


def test_a_certificate_is_stored_with_its_key_and_the_ca(tmp_path: Path) -> None:
    files = BrokerTLSFiles(tmp_path)
    key = BrokerKey.generate()
    certificate_pem, ca_pem = _sign(key.csr_pem())
    assert files.missing(NOW) is not None and "no server certificate yet" in str(files.missing(NOW))

    stored = files.store(key, certificate_pem, ca_pem)

    directory = tmp_path / "broker"
    assert _mode(directory) == 0o750
    assert _mode(directory / KEY_FILE) == 0o600
    assert _mode(directory / CERTIFICATE_FILE) == 0o644
    assert _mode(directory / CA_FILE) == 0o644
    assert (directory / CA_FILE).read_text() == ca_pem
    loaded = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
    assert loaded.public_key() == key.private.public_key()
    assert (
        stored.serial_number
        == x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number
    )
    assert files.missing(NOW) is None
    assert files.expire_time() == stored.not_valid_after_utc
    assert sorted(os.listdir(directory)) == sorted([CA_FILE, CERTIFICATE_FILE, KEY_FILE])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_as_root_the_key_is_the_brokers_and_the_rest_root_s_readable_by_its_group(
    tmp_path: Path,
) -> None:
    files = BrokerTLSFiles(tmp_path, owner=(NOBODY, NOBODY))
    key = BrokerKey.generate()
    files.store(key, *_sign(key.csr_pem()))

    directory = tmp_path / "broker"
    owners = {
        path.name: (path.stat().st_uid, path.stat().st_gid)
        for path in (directory, *directory.iterdir())
    }
    assert owners == {
        "broker": (0, NOBODY),
        KEY_FILE: (NOBODY, NOBODY),
        CERTIFICATE_FILE: (0, NOBODY),
        CA_FILE: (0, NOBODY),
    }
    assert _mode(directory) == 0o750 and _mode(directory / KEY_FILE) == 0o600


def test_a_certificate_for_another_key_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    files = BrokerTLSFiles(tmp_path)
    certificate_pem, ca_pem = _sign(BrokerKey.generate().csr_pem())
    with pytest.raises(CertificateRefused, match="for another key"):
        files.store(BrokerKey.generate(), certificate_pem, ca_pem)
    with pytest.raises(CertificateRefused, match="not PEM"):
        files.store(BrokerKey.generate(), "-----BEGIN CERTIFICATE-----\nAAAA\n", ca_pem)
    assert not (tmp_path / "broker").exists()


def test_an_expired_or_unpaired_certificate_keeps_the_broker_from_starting(
    tmp_path: Path,
) -> None:
    files = BrokerTLSFiles(tmp_path)
    key = BrokerKey.generate()
    files.store(key, *_sign(key.csr_pem(), days=-0.5))
    assert "expired at" in str(files.missing(NOW))

    files.store(key, *_sign(key.csr_pem()))
    (tmp_path / "broker" / KEY_FILE).write_bytes(BrokerKey.generate().pem())
    assert "does not pair" in str(files.missing(NOW))
    (tmp_path / "broker" / KEY_FILE).unlink()
    assert "is missing or does not pair" in str(files.missing(NOW))


def test_with_a_broker_group_the_state_dir_is_traverse_only_for_it(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "state")
    group = NOBODY if os.geteuid() == 0 else os.getegid()
    state.ensure_directory(group=group)
    info = state.directory.stat()
    assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == group
    state.key()
    assert _mode(state.path(AgentState.KEY)) == 0o600

    state.ensure_directory()  # the broker turned off again: private as before
    assert _mode(state.directory) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="the broker's own user is looked up as root")
def test_a_broker_user_that_is_root_is_refused() -> None:
    with pytest.raises(BrokerAccountError, match="must not run as root"):
        broker_account("root")


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd runs only as root")
def test_a_failed_useradd_is_one_line_naming_the_user() -> None:
    def failing(argv: object) -> subprocess.CompletedProcess[str]:
        assert isinstance(argv, list) and argv[1:] == [
            "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--user-group", "sft-no-such-broker",
        ]  # fmt: skip
        return subprocess.CompletedProcess(argv, 9, "", "useradd: group 'x' exists\n")

    with pytest.raises(BrokerAccountError) as caught:
        broker_account("sft-no-such-broker", run=failing)
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot create the broker's user 'sft-no-such-broker'" in message
    assert "exited with 9: useradd: group 'x' exists" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="the broker's own user is looked up as root")
def test_an_existing_system_user_is_used_as_it_is() -> None:
    account = broker_account("nobody")
    assert (account.uid, account.gid, account.separate, account.group) == (
        NOBODY,
        NOBODY,
        True,
        NOBODY,
    )
