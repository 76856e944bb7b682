"""Real OpenSSH sshd and ssh accept the certificates our signer makes, and refuse bad ones."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.ca.ssh_signer import (
    HostCertificateRequest,
    UserCertificateRequest,
    sign_host_certificate,
    sign_user_certificate,
    ssh_fingerprint,
)
from tests.support.sshd import SSHDServer, run_ssh, run_sshd, write_private_key

pytestmark = pytest.mark.e2e

ACCOUNTS = ("alice", "bob")
HOST_PRINCIPALS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Authorities:
    """Our project's user and host CAs, and another project's, which must not be trusted."""

    user_ca: ed25519.Ed25519PrivateKey
    other_user_ca: ed25519.Ed25519PrivateKey
    host_ca: ed25519.Ed25519PrivateKey
    other_host_ca: ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class ClientKey:
    """A user's key pair on disk; ssh -i finds `<path>-cert.pub` beside it."""

    path: Path
    public_line: str

    @property
    def certificate_path(self) -> Path:
        """Return where ssh looks for this key's certificate."""
        return self.path.with_name(self.path.name + "-cert.pub")


@pytest.fixture(scope="module")
def authorities() -> Authorities:
    return Authorities(
        user_ca=ed25519.Ed25519PrivateKey.generate(),
        other_user_ca=ed25519.Ed25519PrivateKey.generate(),
        host_ca=ed25519.Ed25519PrivateKey.generate(),
        other_host_ca=ed25519.Ed25519PrivateKey.generate(),
    )


@pytest.fixture(scope="module")
def sshd(
    tmp_path_factory: pytest.TempPathFactory, authorities: Authorities
) -> Iterator[SSHDServer]:
    """One sshd for the module: trusts our user CA, serves a host cert naming 127.0.0.1."""
    directory = tmp_path_factory.mktemp("sshd")
    host_key = directory / "ssh_host_ed25519_key"
    host_public_line = write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    with run_sshd(
        directory,
        users=ACCOUNTS,
        trusted_user_ca_keys=_public_line(authorities.user_ca),
        host_key_path=host_key,
        host_certificate=_host_certificate(authorities.host_ca, host_public_line, HOST_PRINCIPALS),
    ) as server:
        yield server


@pytest.fixture
def client_key(tmp_path: Path) -> ClientKey:
    path = tmp_path / "id_ed25519"
    return ClientKey(path, write_private_key(path, ed25519.Ed25519PrivateKey.generate()))


@pytest.fixture
def known_hosts(tmp_path: Path, authorities: Authorities) -> Path:
    """A known_hosts file that trusts only our host CA, for every host."""
    return _known_hosts_trusting(tmp_path / "known_hosts", authorities.host_ca)


def test_sshd_accepts_a_user_certificate_for_its_account(
    sshd: SSHDServer, authorities: Authorities, client_key: ClientKey, known_hosts: Path
) -> None:
    _issue_user_certificate(authorities.user_ca, client_key, "alice", serial=101)
    mark = sshd.log_mark()

    result = run_ssh(sshd, "alice", client_key.path, known_hosts=known_hosts)

    assert (result.returncode, result.stdout) == (0, "alice\n"), result.stderr
    sshd.wait_for_log(
        rf"^Accepted publickey for alice from 127\.0\.0\.1 port \d+ ssh2: ED25519-CERT "
        rf"{re.escape(ssh_fingerprint(_subject(client_key)))} "
        rf"ID user=ada project=web device=laptop-1 request=req-101 \(serial 101\) "
        rf"CA ED25519 {re.escape(ssh_fingerprint(authorities.user_ca))}$",
        since=mark,
    )


def test_expired_certificate_is_refused_by_sshd(
    sshd: SSHDServer, authorities: Authorities, client_key: ClientKey, known_hosts: Path
) -> None:
    # Issued two days ago for ten minutes: expired without sleeping.
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    _issue_user_certificate(authorities.user_ca, client_key, "alice", serial=102, now=two_days_ago)
    mark = sshd.log_mark()

    result = run_ssh(sshd, "alice", client_key.path, known_hosts=known_hosts)

    _assert_login_refused(result)
    sshd.wait_for_log(r"^Certificate invalid: expired$", since=mark)
    sshd.wait_for_log(r"^Failed publickey for alice .* ED25519-CERT .*\(serial 102\)", since=mark)
    assert "Accepted publickey" not in sshd.log_text(mark)


def test_certificate_for_another_account_is_refused_by_sshd(
    sshd: SSHDServer, authorities: Authorities, client_key: ClientKey, known_hosts: Path
) -> None:
    _issue_user_certificate(authorities.user_ca, client_key, "bob", serial=103)
    mark = sshd.log_mark()

    as_alice = run_ssh(sshd, "alice", client_key.path, known_hosts=known_hosts)

    _assert_login_refused(as_alice)
    sshd.wait_for_log(r"^Certificate invalid: name is not a listed principal$", since=mark)
    sshd.wait_for_log(r"^Failed publickey for alice .* ED25519-CERT .*\(serial 103\)", since=mark)
    # The same certificate is good for the account it names.
    as_bob = run_ssh(sshd, "bob", client_key.path, known_hosts=known_hosts)
    assert (as_bob.returncode, as_bob.stdout) == (0, "bob\n"), as_bob.stderr


def test_certificate_from_another_projects_ca_is_refused_by_sshd(
    tmp_path: Path, authorities: Authorities, client_key: ClientKey
) -> None:
    _issue_user_certificate(authorities.other_user_ca, client_key, "alice", serial=104)
    # sshd says why it refuses an unknown CA only at DEBUG2; a server of our own for that.
    with run_sshd(
        tmp_path,
        users=["alice"],
        trusted_user_ca_keys=_public_line(authorities.user_ca),
        extra_config=["LogLevel DEBUG2"],
    ) as server:
        result = run_ssh(
            server, "alice", client_key.path, known_hosts=None, strict_host_key_checking=False
        )

        _assert_login_refused(result)
        other_ca = re.escape(ssh_fingerprint(authorities.other_user_ca))
        server.wait_for_log(
            rf"^debug2: user_cert_trusted_ca: CA ED25519 {other_ca} is not listed in "
            rf"{re.escape(str(server.trusted_user_ca_keys))}: key not found$"
        )
        server.wait_for_log(rf"^Failed publickey for alice .*\(serial 104\) CA ED25519 {other_ca}$")


def test_sshd_trusts_a_new_user_ca_as_soon_as_trusted_user_ca_keys_lists_it(
    tmp_path: Path, authorities: Authorities, client_key: ClientKey
) -> None:
    _issue_user_certificate(authorities.other_user_ca, client_key, "alice", serial=105)
    with run_sshd(
        tmp_path, users=["alice"], trusted_user_ca_keys=_public_line(authorities.user_ca)
    ) as server:
        before = run_ssh(
            server, "alice", client_key.path, known_hosts=None, strict_host_key_checking=False
        )
        _assert_login_refused(before)

        # What a CA rotation does: both keys listed while certificates of either are live.
        server.set_trusted_user_ca_keys(
            _public_line(authorities.user_ca) + "\n" + _public_line(authorities.other_user_ca)
        )
        after = run_ssh(
            server, "alice", client_key.path, known_hosts=None, strict_host_key_checking=False
        )

        assert (after.returncode, after.stdout) == (0, "alice\n"), after.stderr


def test_ssh_accepts_a_host_certificate_from_the_trusted_host_ca(
    sshd: SSHDServer, authorities: Authorities, client_key: ClientKey, known_hosts: Path
) -> None:
    _issue_user_certificate(authorities.user_ca, client_key, "alice", serial=106)

    result = run_ssh(
        sshd, "alice", client_key.path, known_hosts=known_hosts, extra_options=["LogLevel=DEBUG1"]
    )

    assert (result.returncode, result.stdout) == (0, "alice\n"), result.stderr
    # Matched by the certificate, not by a plain host key (known_hosts holds none).
    assert re.search(
        rf"Server host certificate: ssh-ed25519-cert-v01@openssh.com \S+, serial 7 "
        rf'ID "host=web-1 server=srv-1" CA ssh-ed25519 '
        rf"{re.escape(ssh_fingerprint(authorities.host_ca))} valid from",
        result.stderr,
    ), result.stderr
    assert (
        f"Host '[127.0.0.1]:{sshd.port}' is known and matches the ED25519-CERT host certificate."
        in result.stderr
    )


def test_ssh_refuses_a_host_certificate_from_another_host_ca(
    sshd: SSHDServer, tmp_path: Path, authorities: Authorities, client_key: ClientKey
) -> None:
    _issue_user_certificate(authorities.user_ca, client_key, "alice", serial=107)
    trusting_another_ca = _known_hosts_trusting(
        tmp_path / "known_hosts_other_ca", authorities.other_host_ca
    )
    mark = sshd.log_mark()

    result = run_ssh(sshd, "alice", client_key.path, known_hosts=trusting_another_ca)

    assert result.returncode == 255, result.stdout
    assert "Host key verification failed." in result.stderr
    assert "No ED25519 host key is known for" in result.stderr
    assert result.stdout == ""
    # ssh gives up before authenticating: sshd never saw the user's certificate.
    sshd.wait_for_log(r"^Connection closed by 127\.0\.0\.1 port \d+", since=mark)
    assert "publickey for alice" not in sshd.log_text(mark)


def test_ssh_refuses_a_host_certificate_that_does_not_name_the_address(
    tmp_path: Path, authorities: Authorities, client_key: ClientKey, known_hosts: Path
) -> None:
    _issue_user_certificate(authorities.user_ca, client_key, "alice", serial=108)
    host_key = tmp_path / "ssh_host_ed25519_key"
    host_public_line = write_private_key(host_key, ed25519.Ed25519PrivateKey.generate())
    with run_sshd(
        tmp_path,
        users=["alice"],
        trusted_user_ca_keys=_public_line(authorities.user_ca),
        host_key_path=host_key,
        host_certificate=_host_certificate(
            authorities.host_ca, host_public_line, ("db.example.com",)
        ),
    ) as server:
        result = run_ssh(server, "alice", client_key.path, known_hosts=known_hosts)

    assert result.returncode == 255, result.stdout
    assert "Certificate invalid: name is not a listed principal" in result.stderr
    assert "Host key verification failed." in result.stderr
    assert result.stdout == ""


def _assert_login_refused(result: subprocess.CompletedProcess[str]) -> None:
    """Assert ssh failed to authenticate: exit 255, no command output."""
    assert result.returncode == 255, result.stdout
    assert "Permission denied (publickey)." in result.stderr
    assert result.stdout == ""


def _issue_user_certificate(
    ca: ed25519.Ed25519PrivateKey,
    client_key: ClientKey,
    account: str,
    *,
    serial: int,
    now: dt.datetime | None = None,
) -> None:
    """Sign a 10-minute certificate for `account` and put it where ssh -i finds it."""
    request = UserCertificateRequest(
        public_key=client_key.public_line,
        user="ada",
        account=account,
        project="web",
        device_id="laptop-1",
        request_id=f"req-{serial}",
    )
    signed = sign_user_certificate(ca, request, serial=serial, now=now or dt.datetime.now(dt.UTC))
    client_key.certificate_path.write_text(signed.certificate + "\n")


def _host_certificate(
    ca: ed25519.Ed25519PrivateKey, host_public_line: str, principals: tuple[str, ...]
) -> str:
    """Return a host certificate for `principals`, serial 7, valid for a week."""
    request = HostCertificateRequest(
        public_key=host_public_line, host_name="web-1", server_id="srv-1", principals=principals
    )
    return sign_host_certificate(ca, request, serial=7, now=dt.datetime.now(dt.UTC)).certificate


def _known_hosts_trusting(path: Path, host_ca: ed25519.Ed25519PrivateKey) -> Path:
    """Write a known_hosts file at `path` whose only line trusts `host_ca` for every host."""
    path.write_text(f"@cert-authority * {_public_line(host_ca)}\n")
    return path


def _public_line(key: ed25519.Ed25519PrivateKey) -> str:
    """Return the OpenSSH public key line of `key`."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )


def _subject(client_key: ClientKey) -> ed25519.Ed25519PublicKey:
    """Return the client's public key (the certificate's subject)."""
    key = serialization.load_ssh_public_key(client_key.public_line.encode("ascii"))
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return key
