"""The state dir: private modes, atomic replacement, and refusal of anything unusable."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.state import (
    AgentState,
    HostCertificate,
    ServerIdentity,
    StateError,
    StatusReport,
    TrustAnchors,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
SERVER = "teams/acme/projects/web/servers/7f3c0c8e-0000-4000-8000-000000000001"


def _ca_pem(name: str = "platform CA") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _enrolled(tmp_path: Path) -> tuple[AgentState, ServerIdentity]:
    state = AgentState(tmp_path / "state")
    state.ensure_directory()
    key = state.key()
    ca = _ca_pem()
    identity = ServerIdentity(SERVER, "https://127.0.0.1:8443", _sha256(ca), key.fingerprint, NOW)
    certificate = HostCertificate(
        host_key_file="/etc/ssh/ssh_host_ed25519_key",
        host_key_fingerprint="SHA256:abc",
        certificate="ssh-ed25519-cert-v01@openssh.com AAAA",
        principals=("web-1", "10.0.0.7"),
        valid_after=NOW,
        valid_before=NOW + dt.timedelta(days=7),
    )
    anchors = TrustAnchors("ssh-ed25519 AAAA user-ca\n", "-----BEGIN CERTIFICATE-----\n")
    state.write_enrollment(identity, ca, (certificate,), anchors)
    return state, identity


def test_the_state_dir_is_private_and_every_file_is_0600(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    state, _ = _enrolled(tmp_path)
    state.write_applied_revision(3)
    state.write_status(StatusReport(pid=1, updated_at=NOW, platform_reachable=True))
    assert _mode(directory) == 0o700
    files = sorted(directory.iterdir())
    assert {path.name for path in files} >= {"agent_key", "server.json", "platform-ca.pem"}
    assert {_mode(path) for path in files} == {0o600}


def test_files_are_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        state = AgentState(tmp_path / "state")
        state.ensure_directory()
        state.key()
    finally:
        os.umask(previous)
    assert _mode(state.path(AgentState.KEY)) == 0o600
    assert _mode(state.directory) == 0o700


def test_the_key_is_made_once_and_kept(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    first = state.key()
    assert state.key().fingerprint == first.fingerprint
    assert first.fingerprint.startswith("SHA256:") and "=" not in first.fingerprint
    public = state.path(AgentState.PUBLIC_KEY).read_text()
    assert public.startswith(first.public_line)


def test_what_enrollment_stored_reads_back(tmp_path: Path) -> None:
    state, identity = _enrolled(tmp_path)
    assert state.read_identity() == identity
    assert state.read_identity() is not None
    assert identity.server_id == "7f3c0c8e-0000-4000-8000-000000000001"
    (certificate,) = state.read_host_certificates()
    assert certificate.principals == ("web-1", "10.0.0.7")
    assert certificate.valid_before == NOW + dt.timedelta(days=7)
    anchors = state.read_trust_anchors()
    assert anchors is not None and anchors.trusted_user_ca_keys == "ssh-ed25519 AAAA user-ca\n"
    assert state.read_applied_revision() == 0
    state.write_applied_revision(42)
    assert state.read_applied_revision() == 42


def test_not_enrolled_is_none_and_a_key_alone_is_not_enrollment(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    assert state.read_identity() is None
    state.key()
    assert state.read_identity() is None


def test_a_write_replaces_atomically_and_a_failed_one_leaves_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = _enrolled(tmp_path)
    state.write_applied_revision(1)

    def crash(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        state.write_applied_revision(2)
    monkeypatch.undo()
    assert state.read_applied_revision() == 1
    assert sorted(p.name for p in state.directory.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("server.json", b"{not json", "not valid JSON"),
        ("server.json", b'{"server": "teams/acme"}', "platform_url is missing"),
        ("agent_key", b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n", "not an OpenSSH"),
        ("platform-ca.pem", b"not a certificate", "not a PEM certificate"),
        ("host_certificates.json", b'{"a": 1}', "not a JSON list"),
        ("accounts.json", b'{"applied_revision": "x"}', "not a revision number"),
    ],
)
def test_a_corrupt_state_file_is_refused_by_name_and_left_alone(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    state, _ = _enrolled(tmp_path)
    state.path(name).write_bytes(content)
    with pytest.raises(StateError) as caught:
        state.read_identity()
        state.read_host_certificates()
        state.read_applied_revision()
    message = str(caught.value)
    assert str(state.path(name)) in message
    assert why in message
    assert "move" in message and "enrollment token" in message
    assert state.path(name).read_bytes() == content


def test_a_key_other_than_the_enrolled_one_is_refused(tmp_path: Path) -> None:
    state, _ = _enrolled(tmp_path)
    state.path(AgentState.KEY).unlink()
    state.key()  # a new key
    with pytest.raises(StateError, match="not the key this server enrolled with"):
        state.read_identity()


def test_a_replaced_platform_ca_is_refused(tmp_path: Path) -> None:
    state, _ = _enrolled(tmp_path)
    state.path(AgentState.CA).write_bytes(_ca_pem("somebody else"))
    with pytest.raises(StateError, match="not the CA pinned at enrollment"):
        state.read_identity()


def test_a_missing_key_after_enrollment_is_refused(tmp_path: Path) -> None:
    state, _ = _enrolled(tmp_path)
    state.path(AgentState.KEY).unlink()
    with pytest.raises(StateError, match=r"missing, but server\.json says"):
        state.read_identity()


def test_the_status_report_round_trips_and_a_damaged_one_is_ignored(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    report = StatusReport(
        pid=7,
        updated_at=NOW,
        platform_reachable=False,
        last_heartbeat_time=NOW,
        applied_revision=3,
        managed_accounts=2,
        problems=("sshd -t failed",),
    )
    state.write_status(report)
    assert state.read_status() == report
    state.path(AgentState.STATUS).write_text("{")
    assert state.read_status() is None


def test_an_unusable_state_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"cannot use .* as the state dir"):
        AgentState(blocker / "state").ensure_directory()
