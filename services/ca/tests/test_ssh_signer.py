"""SSH certificate signing: request checks, key refusals, and what real ssh-keygen reads back."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from services.ca.principals import check_account_name, check_host_principal
from services.ca.ssh_signer import (
    HOST_DEFAULT_TTL_SECONDS,
    HOST_MAX_TTL_SECONDS,
    USER_MAX_TTL_SECONDS,
    HostCertificateRequest,
    UserCertificateRequest,
    parse_public_key,
    sign_host_certificate,
    sign_user_certificate,
    ssh_fingerprint,
)
from tests.support.real_software import find_program, require

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CA_KEY = ed25519.Ed25519PrivateKey.generate()


def _openssh(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | dsa.DSAPublicKey) -> str:
    """Return `key` as an OpenSSH public key line."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


SUBJECT = _openssh(ed25519.Ed25519PrivateKey.generate().public_key())


def _user_request(**changes: object) -> UserCertificateRequest:
    """Return a valid user request with `changes` applied."""
    request = UserCertificateRequest(
        public_key=SUBJECT,
        user="alice",
        account="alice",
        project="web",
        device_id="dev-7f3c",
        request_id="req-1",
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def _host_request(**changes: object) -> HostCertificateRequest:
    """Return a valid host request with `changes` applied."""
    request = HostCertificateRequest(
        public_key=SUBJECT,
        host_name="web-1",
        server_id="7f3c9a",
        principals=("web-1.example.com", "web-1", "192.0.2.10", "2001:db8::10"),
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ssh_keygen() -> str:
    """Return the path of the real ssh-keygen (fail under CI if it is missing)."""
    return require(
        "ssh-keygen",
        find_program("ssh-keygen", "/usr/bin/ssh-keygen"),
        "install openssh-client (apt-get install openssh-client)",
    )


def _run(ssh_keygen: str, *args: str) -> str:
    """Run ssh-keygen with `args` in UTC and return its stdout."""
    result = subprocess.run(
        [ssh_keygen, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    return result.stdout


def _keygen(ssh_keygen: str, tmp_path: Path, name: str, *args: str) -> str:
    """Generate a key with ssh-keygen and return its public key line."""
    path = tmp_path / name
    _run(ssh_keygen, "-q", "-N", "", "-C", name, "-f", str(path), *args)
    return (tmp_path / f"{name}.pub").read_text()


def _read_back(ssh_keygen: str, tmp_path: Path, certificate: str) -> str:
    """Return what `ssh-keygen -L` prints for `certificate`."""
    path = tmp_path / "subject-cert.pub"
    path.write_text(certificate + "\n")
    return _run(ssh_keygen, "-L", "-f", str(path))


def _stamp(when: dt.datetime) -> str:
    """Return `when` as ssh-keygen -L prints validity times (in UTC)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- what real OpenSSH reads back ----------------------------------------------------


def test_ssh_keygen_reads_user_certificate_as_signed(ssh_keygen: str, tmp_path: Path) -> None:
    subject = _keygen(ssh_keygen, tmp_path, "user", "-t", "ed25519")
    request = _user_request(
        public_key=subject,
        ttl_seconds=900,
        source_addresses=("203.0.113.7/32", "10.0.0.0/8", "203.0.113.7"),
    )
    signed = sign_user_certificate(CA_KEY, request, serial=4242, now=NOW)

    shown = _read_back(ssh_keygen, tmp_path, signed.certificate)

    assert "user certificate" in shown
    assert 'Key ID: "user=alice project=web device=dev-7f3c request=req-1"' in shown
    assert "Serial: 4242" in shown
    after, before = NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(seconds=900)
    assert f"Valid: from {_stamp(after)} to {_stamp(before)}" in shown
    assert (signed.valid_after, signed.valid_before) == (after, before)
    assert "Principals: \n                alice\n" in shown
    assert "source-address 203.0.113.7/32,10.0.0.0/8\n" in shown
    extensions = shown.split("Extensions:")[1].split()
    assert extensions == [
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
    ]
    assert f"Signing CA: ED25519 {signed.ca_fingerprint} " in shown
    assert signed.principals == ("alice",)


def test_fingerprints_match_ssh_keygen(ssh_keygen: str, tmp_path: Path) -> None:
    subject = _keygen(ssh_keygen, tmp_path, "user", "-t", "ecdsa", "-b", "384")
    signed = sign_user_certificate(CA_KEY, _user_request(public_key=subject), serial=1, now=NOW)
    ca_pub = tmp_path / "ca.pub"
    ca_pub.write_text(_openssh(CA_KEY.public_key()) + "\n")
    assert _run(ssh_keygen, "-l", "-f", str(ca_pub)).split()[1] == signed.ca_fingerprint
    subject_print = _run(ssh_keygen, "-l", "-f", str(tmp_path / "user.pub")).split()[1]
    assert subject_print == signed.subject_fingerprint


def test_project_policy_switches_extensions(ssh_keygen: str, tmp_path: Path) -> None:
    request = _user_request(
        permit_x11_forwarding=True,
        permit_port_forwarding=False,
        permit_agent_forwarding=False,
        permit_user_rc=False,
    )
    signed = sign_user_certificate(CA_KEY, request, serial=2, now=NOW)
    shown = _read_back(ssh_keygen, tmp_path, signed.certificate)
    assert shown.split("Extensions:")[1].split() == ["permit-X11-forwarding", "permit-pty"]
    assert "Critical Options: (none)" in shown


def test_ssh_keygen_reads_host_certificate_as_signed(ssh_keygen: str, tmp_path: Path) -> None:
    subject = _keygen(ssh_keygen, tmp_path, "host", "-t", "rsa", "-b", "2048")
    signed = sign_host_certificate(CA_KEY, _host_request(public_key=subject), serial=9, now=NOW)

    shown = _read_back(ssh_keygen, tmp_path, signed.certificate)

    assert "host certificate" in shown
    assert 'Key ID: "host=web-1 server=7f3c9a"' in shown
    week = NOW + dt.timedelta(seconds=HOST_DEFAULT_TTL_SECONDS)
    assert f"Valid: from {_stamp(NOW - dt.timedelta(minutes=1))} to {_stamp(week)}" in shown
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["web-1.example.com", "web-1", "192.0.2.10", "2001:db8::10"]
    assert "Extensions: (none)" in shown


def test_certificate_signature_verifies_against_the_ca() -> None:
    signed = sign_user_certificate(CA_KEY, _user_request(), serial=3, now=NOW)
    certificate = serialization.load_ssh_public_identity(signed.certificate.encode())
    assert isinstance(certificate, serialization.SSHCertificate)
    certificate.verify_cert_signature()
    assert ssh_fingerprint(certificate.signature_key()) == signed.ca_fingerprint


# --- public keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("-t", "ed25519"),
        ("-t", "ecdsa", "-b", "256"),
        ("-t", "ecdsa", "-b", "384"),
        ("-t", "ecdsa", "-b", "521"),
        ("-t", "rsa", "-b", "2048"),
    ],
)
def test_strong_keys_are_accepted(ssh_keygen: str, tmp_path: Path, args: tuple[str, ...]) -> None:
    line = _keygen(ssh_keygen, tmp_path, "key", *args)
    assert ssh_fingerprint(parse_public_key(line)) in _run(
        ssh_keygen, "-l", "-f", str(tmp_path / "key.pub")
    )


def test_rsa_1024_is_refused(ssh_keygen: str, tmp_path: Path) -> None:
    line = _keygen(ssh_keygen, tmp_path, "weak", "-t", "rsa", "-b", "1024")
    with pytest.raises(InvalidInput, match="RSA key of 1024 bits is too weak"):
        parse_public_key(line)
    with pytest.raises(InvalidInput, match="too weak"):
        sign_user_certificate(CA_KEY, _user_request(public_key=line), serial=1, now=NOW)


def test_dsa_is_refused(ssh_keygen: str, tmp_path: Path) -> None:
    try:
        line = _keygen(ssh_keygen, tmp_path, "dsa", "-t", "dsa")
    except subprocess.CalledProcessError:
        # OpenSSH >= 9.8 no longer makes DSA keys; build the same line ourselves.
        line = _openssh(dsa.generate_private_key(1024).public_key())  # noqa: S505
    assert line.startswith("ssh-dss ")
    with pytest.raises(InvalidInput, match="DSA keys are not accepted"):
        parse_public_key(line)


def test_certificate_given_as_public_key_is_refused() -> None:
    signed = sign_user_certificate(CA_KEY, _user_request(), serial=1, now=NOW)
    with pytest.raises(InvalidInput, match="certificate was given"):
        parse_public_key(signed.certificate)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "public key is empty"),
        ("   \n", "public key is empty"),
        (SUBJECT + "\n" + SUBJECT, "not one OpenSSH public key line"),
        ("ssh-ed25519 AAAA cömment", "not one OpenSSH public key line"),
        ("x" * 20_000, "not one OpenSSH public key line"),
        ("ssh-ed25519 !!!", "cannot be parsed"),
        ("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t", "cannot"),
        ('from="10.0.0.1" ' + SUBJECT, "cannot be parsed"),
    ],
    ids=[
        "empty",
        "blank",
        "two-lines",
        "non-ascii",
        "oversized",
        "bad-base64",
        "sk-key",
        "options",
    ],
)
def test_unparsable_public_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_public_key(text)


@given(st.text(max_size=300))
def test_parse_public_key_raises_only_invalid_input(text: str) -> None:
    try:
        parse_public_key(text)
    except InvalidInput:
        pass


@given(st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ssh-dss"]), st.binary())
def test_parse_public_key_on_random_blobs_raises_only_invalid_input(
    key_type: str, blob: bytes
) -> None:
    try:
        parse_public_key(f"{key_type} {base64.b64encode(blob).decode()}")
    except InvalidInput:
        pass


# --- user request checks -------------------------------------------------------------


def test_valid_user_request_passes_check() -> None:
    _user_request().check()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"public_key": "nonsense"}, "cannot be parsed"),
        ({"account": ""}, "account name '' is not valid"),
        ({"account": "Alice Smith"}, "is not valid"),
        ({"account": "alice,bob"}, "is not valid"),
        ({"account": "a" * 33}, "is not valid"),
        ({"account": "alice\n"}, "is not valid"),
        ({"account": "name."}, "is not valid"),
        ({"account": "root"}, "'root' is privileged"),
        ({"account": "Administrator"}, "'Administrator' is privileged"),
        ({"account": "ADMINISTRATOR"}, "is privileged"),
        ({"user": ""}, "user '' is not valid in a certificate key id"),
        ({"user": "alice project=admin"}, "user 'alice project=admin' is not valid"),
        ({"project": "a=b"}, "project 'a=b' is not valid"),
        ({"device_id": "d 1"}, "device_id 'd 1' is not valid"),
        ({"request_id": "r\n"}, "request_id 'r\\\\n' is not valid"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive, not 0"),
        ({"ttl_seconds": -5}, "ttl_seconds must be positive, not -5"),
        ({"ttl_seconds": 3601, "max_ttl_seconds": 3600}, "exceeds the project's maximum of 3600"),
        ({"ttl_seconds": USER_MAX_TTL_SECONDS + 1}, "exceeds the project's maximum of 86400"),
        ({"max_ttl_seconds": 0}, "max_ttl_seconds 0 is out of range"),
        ({"max_ttl_seconds": USER_MAX_TTL_SECONDS + 1}, "max_ttl_seconds 86401 is out of range"),
        ({"source_addresses": ("10.0.0.1/8",)}, "'10.0.0.1/8' is not a CIDR"),
        ({"source_addresses": ("example.com",)}, "'example.com' is not a CIDR"),
        ({"source_addresses": ("10.0.0.0/33",)}, "is not a CIDR"),
        ({"source_addresses": ("",)}, "is not a CIDR"),
        ({"source_addresses": ("10.0.0.1",) * 65}, "at most 64 source addresses"),
    ],
)
def test_bad_user_request_is_refused(changes: dict[str, object], message: str) -> None:
    request = _user_request(**changes)
    with pytest.raises(InvalidInput, match=message):
        request.check()
    with pytest.raises(InvalidInput, match=message):
        sign_user_certificate(CA_KEY, request, serial=1, now=NOW)


@pytest.mark.parametrize("account", ["root", "Administrator"])
def test_privileged_account_is_signed_when_explicitly_allowed(account: str) -> None:
    request = _user_request(account=account, allow_privileged_account=True)
    assert sign_user_certificate(CA_KEY, request, serial=1, now=NOW).principals == (account,)


@pytest.mark.parametrize("account", ["alice", "_svc", "deploy-1", "J.Smith", "Admin_2", "svc-ci"])
def test_unix_and_windows_account_names_are_accepted(account: str) -> None:
    assert check_account_name(account) == account


def test_ttl_at_the_hard_cap_is_accepted() -> None:
    request = _user_request(ttl_seconds=USER_MAX_TTL_SECONDS)
    signed = sign_user_certificate(CA_KEY, request, serial=1, now=NOW)
    assert signed.valid_before - NOW == dt.timedelta(days=1)


def test_serial_out_of_range_is_refused() -> None:
    for serial in (-1, 2**64):
        with pytest.raises(InvalidInput, match=r"serial .* out of range"):
            sign_user_certificate(CA_KEY, _user_request(), serial=serial, now=NOW)


def test_naive_clock_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_user_certificate(CA_KEY, _user_request(), serial=1, now=NOW.replace(tzinfo=None))


def test_validity_is_the_same_instant_whatever_the_clocks_zone() -> None:
    tokyo = NOW.astimezone(dt.timezone(dt.timedelta(hours=9)))
    a = sign_user_certificate(CA_KEY, _user_request(), serial=1, now=NOW)
    b = sign_user_certificate(CA_KEY, _user_request(), serial=1, now=tokyo)
    assert (a.valid_after, a.valid_before) == (b.valid_after, b.valid_before)


@given(st.text(max_size=40), st.booleans())
def test_account_name_check_raises_only_invalid_input(name: str, allow: bool) -> None:
    try:
        assert check_account_name(name, allow_privileged=allow) == name
    except InvalidInput:
        pass


@given(st.lists(st.text(max_size=45), max_size=3))
def test_source_address_check_raises_only_invalid_input(cidrs: list[str]) -> None:
    try:
        _user_request(source_addresses=tuple(cidrs)).check()
    except InvalidInput:
        pass


# --- host request checks -------------------------------------------------------------


def test_valid_host_request_passes_check() -> None:
    _host_request().check()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"public_key": ""}, "public key is empty"),
        ({"host_name": ""}, "host_name '' is not valid"),
        ({"host_name": "web 1"}, "host_name 'web 1' is not valid"),
        ({"server_id": "x=y"}, "server_id 'x=y' is not valid"),
        ({"principals": ()}, "at least one principal"),
        ({"principals": tuple(f"h{i}" for i in range(257))}, "at most 256 principals"),
        ({"principals": ("Web-1",)}, "host principal 'Web-1' is not valid"),
        ({"principals": ("web_1",)}, "host principal 'web_1' is not valid"),
        ({"principals": ("-web",)}, "is not valid"),
        ({"principals": ("",)}, "host principal '' is not valid"),
        ({"principals": ("web-1\n",)}, "is not valid"),
        ({"principals": ("fe80::1%eth0",)}, "is not valid"),
        ({"principals": ("web-1", "web-1")}, "repeated"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
        ({"ttl_seconds": HOST_MAX_TTL_SECONDS + 1}, "exceeds the host certificate maximum"),
    ],
)
def test_bad_host_request_is_refused(changes: dict[str, object], message: str) -> None:
    request = _host_request(**changes)
    with pytest.raises(InvalidInput, match=message):
        request.check()
    with pytest.raises(InvalidInput, match=message):
        sign_host_certificate(CA_KEY, request, serial=1, now=NOW)


def test_host_ttl_of_thirty_days_is_accepted() -> None:
    request = _host_request(ttl_seconds=HOST_MAX_TTL_SECONDS)
    signed = sign_host_certificate(CA_KEY, request, serial=1, now=NOW)
    assert signed.valid_before - NOW == dt.timedelta(days=30)


@given(st.text(max_size=80))
def test_host_principal_check_raises_only_invalid_input(principal: str) -> None:
    try:
        assert check_host_principal(principal) == principal
    except InvalidInput:
        pass
