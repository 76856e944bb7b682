"""X.509 signing: request checks, key refusals, and what real OpenSSL and TLS make of the result."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import FailedPrecondition, InvalidInput
from services.ca.x509_signer import (
    CLIENT_MAX_TTL_SECONDS,
    SERVER_DEFAULT_TTL_SECONDS,
    SERVER_MAX_TTL_SECONDS,
    X509_CA_VALIDITY_SECONDS,
    ClientCertificateRequest,
    ServerCertificateRequest,
    SignedX509Certificate,
    make_x509_authority,
    parse_csr_pem,
    parse_public_key_pem,
    sign_client_certificate,
    sign_server_certificate,
    spki_fingerprint,
    x509_fingerprint,
)
from tests.support.real_software import find_program, require

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
PROJECT = "teams/acme/projects/web"
OTHER_PROJECT = "teams/acme/projects/db"
SERVER = f"{PROJECT}/servers/7f3c9a"

# OpenSSL's X509_V_ERR_* codes; stable, unlike their texts (3.0 says "unsuitable
# certificate purpose" where 1.1 said "unsupported certificate purpose").
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_INVALID_PURPOSE = 26

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
Authority = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _p256() -> ec.EllipticCurvePrivateKey:
    """Return a new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _authority(project: str = PROJECT, now: dt.datetime = NOW) -> Authority:
    """Return a new CA key and its certificate for `project`."""
    key = _p256()
    return key, make_x509_authority(project, key, now, serial=1)


def _csr(key: PrivateKey | dsa.DSAPrivateKey, common_name: str = "alice") -> str:
    """Return a PEM CSR for `key`, signed by it."""
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _public_pem(key: object) -> str:
    """Return the PEM SubjectPublicKeyInfo of `key`."""
    assert hasattr(key, "public_bytes")
    data: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def _pem(label: str, der: bytes) -> str:
    """Return `der` armored as one PEM block."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


CA_KEY, CA_CERT = _authority()
SUBJECT_KEY = _p256()
SUBJECT_CSR = _csr(SUBJECT_KEY)
RSA_KEY = rsa.generate_private_key(65537, 2048)
WEAK_RSA_KEY = rsa.generate_private_key(65537, 1024)  # noqa: S505 - the refusal under test
DSA_KEY = dsa.generate_private_key(1024)  # noqa: S505 - refused whatever its size


def _client_request(**changes: object) -> ClientCertificateRequest:
    """Return a valid client request with `changes` applied."""
    request = ClientCertificateRequest(
        project=PROJECT,
        user="teams/acme/users/alice",
        account="alice",
        request_id="req-1",
        server=SERVER,
        csr_pem=SUBJECT_CSR,
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def _server_request(**changes: object) -> ServerCertificateRequest:
    """Return a valid server request with `changes` applied."""
    request = ServerCertificateRequest(
        project=PROJECT,
        server=SERVER,
        csr_pem=SUBJECT_CSR,
        request_id="req-2",
        dns_names=("web-1.example.com", "web-1"),
        ip_addresses=("192.0.2.10", "2001:DB8:0::10"),
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def _load(signed: SignedX509Certificate) -> x509.Certificate:
    """Return the certificate in `signed`, parsed."""
    return x509.load_pem_x509_certificate(signed.certificate_pem.encode())


# --- the project CA ------------------------------------------------------------------


def test_authority_is_a_p256_ca_that_only_signs_certificates() -> None:
    cert = CA_CERT
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sft CA acme/web"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "sft"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    key_id = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert key_id == x509.SubjectKeyIdentifier.from_public_key(CA_KEY.public_key())
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(seconds=X509_CA_VALIDITY_SECONDS)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.serial_number == 1
    cert.verify_directly_issued_by(cert)


def test_long_team_and_project_ids_get_a_short_distinct_common_name() -> None:
    team, project = "t" * 63, "p" * 63
    key = _p256()
    first = make_x509_authority(f"teams/{team}/projects/{project}", key, NOW, serial=1)
    second = make_x509_authority(f"teams/{team}/projects/{project[:-1]}q", key, NOW, serial=1)
    names = [
        str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        for cert in (first, second)
    ]
    assert all(len(name) == 64 and name.startswith("sft CA tttt") for name in names)
    assert names[0] != names[1]


@pytest.mark.parametrize(
    "curve", [ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()], ids=["p384", "p521", "k256"]
)
def test_authority_key_must_be_p256(curve: ec.EllipticCurve) -> None:
    with pytest.raises(InvalidInput, match=r"X\.509 CA key must be ECDSA P-256"):
        make_x509_authority(PROJECT, ec.generate_private_key(curve), NOW, serial=1)


def test_authority_needs_a_project_resource_name() -> None:
    with pytest.raises(InvalidInput, match=r"use teams/\{team\}/projects/\{project\}"):
        make_x509_authority("web", _p256(), NOW, serial=1)


# --- client certificates -------------------------------------------------------------


def test_client_certificate_names_user_account_and_server() -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), serial=77, now=NOW)
    cert = _load(signed)

    uris = (
        "sft://acme/web/users/alice",
        "sft://acme/web/accounts/alice",
        "sft://acme/web/servers/7f3c9a",
    )
    assert signed.uris == signed.san_entries == uris
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == list(uris)
    assert len(san.value) == 3
    assert cert.subject.rfc4514_string() == "CN=alice,O=acme"
    assert cert.issuer == CA_CERT.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _assert_leaf_extensions(cert, key_encipherment=False)
    assert cert.serial_number == signed.serial == 77
    after, before = NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(seconds=600)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (after, before)
    assert (signed.valid_after, signed.valid_before) == (after, before)
    assert signed.ca_fingerprint == x509_fingerprint(CA_CERT)
    assert signed.subject_fingerprint == spki_fingerprint(SUBJECT_KEY.public_key())
    cert.verify_directly_issued_by(CA_CERT)


def _assert_leaf_extensions(cert: x509.Certificate, *, key_encipherment: bool) -> None:
    """Assert what client and server certificates share: not a CA, signing only, key ids."""
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert usage.value.key_encipherment is key_encipherment
    assert not (usage.value.key_cert_sign or usage.value.crl_sign)
    authority = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_id = CA_CERT.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert authority.key_identifier == ca_id.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_client_certificate_without_a_server_names_user_and_account_only() -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(server=""), 2, NOW)
    assert signed.uris == ("sft://acme/web/users/alice", "sft://acme/web/accounts/alice")


def test_windows_account_is_percent_encoded_only_where_needed() -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(account="J.Smith"), 3, NOW)
    assert signed.uris[1] == "sft://acme/web/accounts/J.Smith"


def test_public_key_pem_and_csr_certify_the_same_key() -> None:
    from_csr = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 4, NOW)
    request = _client_request(csr_pem="", public_key_pem=_public_pem(SUBJECT_KEY.public_key()))
    from_key = sign_client_certificate(CA_KEY, CA_CERT, request, 4, NOW)
    assert from_csr.subject_fingerprint == from_key.subject_fingerprint


def test_csr_subject_and_extensions_are_ignored() -> None:
    csr = _csr(SUBJECT_KEY, common_name="root")
    cert = _load(sign_client_certificate(CA_KEY, CA_CERT, _client_request(csr_pem=csr), 5, NOW))
    assert cert.subject.rfc4514_string() == "CN=alice,O=acme"


def test_rsa_client_key_also_gets_key_encipherment() -> None:
    request = _client_request(csr_pem=_csr(RSA_KEY))
    cert = _load(sign_client_certificate(CA_KEY, CA_CERT, request, 6, NOW))
    _assert_leaf_extensions(cert, key_encipherment=True)


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["p384", "ed25519"],
)
def test_p384_and_ed25519_keys_are_certified(key: PrivateKey) -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(csr_pem=_csr(key)), 7, NOW)
    assert signed.subject_fingerprint == spki_fingerprint(key.public_key())


@pytest.mark.parametrize("account", ["root", "Administrator"])
def test_privileged_account_is_certified_only_when_explicitly_allowed(account: str) -> None:
    with pytest.raises(InvalidInput, match="is privileged"):
        _client_request(account=account).check()
    request = _client_request(account=account, allow_privileged_account=True)
    assert sign_client_certificate(CA_KEY, CA_CERT, request, 8, NOW).uris[1].endswith(account)


def test_ttl_at_the_hard_cap_is_accepted() -> None:
    request = _client_request(ttl_seconds=CLIENT_MAX_TTL_SECONDS)
    signed = sign_client_certificate(CA_KEY, CA_CERT, request, 9, NOW)
    assert signed.valid_before - NOW == dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project": "web"}, r"use teams/\{team\}/projects/\{project\}"),
        ({"user": "alice"}, r"use teams/\{team\}/users/\{user\}"),
        ({"user": "teams/evil/users/alice"}, "is in team 'evil', but project"),
        ({"server": "teams/acme/projects/db/servers/7f3c9a"}, "is not in project"),
        ({"server": "teams/evil/projects/web/servers/7f3c9a"}, "is not in project"),
        ({"server": "7f3c9a"}, "is not a server resource name"),
        ({"account": "root"}, "'root' is privileged"),
        ({"account": "Alice Smith"}, "account name 'Alice Smith' is not valid"),
        ({"account": ""}, "account name '' is not valid"),
        ({"request_id": ""}, "request_id is required"),
        ({"request_id": "r 1"}, "request_id 'r 1' is not valid"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive, not 0"),
        ({"ttl_seconds": -1}, "ttl_seconds must be positive, not -1"),
        ({"ttl_seconds": 3601, "max_ttl_seconds": 3600}, "exceeds the project's maximum of 3600"),
        ({"ttl_seconds": CLIENT_MAX_TTL_SECONDS + 1}, "exceeds the project's maximum of 86400"),
        ({"max_ttl_seconds": 0}, "max_ttl_seconds 0 is out of range"),
        ({"max_ttl_seconds": CLIENT_MAX_TTL_SECONDS + 1}, "max_ttl_seconds 86401 is out of"),
        ({"csr_pem": ""}, "no key to certify"),
        ({"public_key_pem": _public_pem(SUBJECT_KEY.public_key())}, "pass exactly one of them"),
        ({"csr_pem": _csr(WEAK_RSA_KEY)}, "RSA key of 1024 bits is too weak"),
        (
            {"csr_pem": "", "public_key_pem": "nonsense"},
            "public key must be exactly one PEM block, not 0",
        ),
    ],
    ids=[
        "bad-project",
        "bad-user",
        "cross-team-user",
        "server-in-other-project",
        "server-in-other-team",
        "bare-server-id",
        "privileged-account",
        "bad-account",
        "empty-account",
        "empty-request-id",
        "request-id-with-space",
        "ttl-zero",
        "ttl-negative",
        "ttl-over-project-max",
        "ttl-over-cap",
        "max-ttl-zero",
        "max-ttl-over-cap",
        "no-key",
        "csr-and-public-key",
        "weak-csr-key",
        "bad-public-key",
    ],
)
def test_bad_client_request_is_refused(changes: dict[str, object], message: str) -> None:
    request = _client_request(**changes)
    with pytest.raises(InvalidInput, match=message):
        request.check()
    with pytest.raises(InvalidInput, match=message):
        sign_client_certificate(CA_KEY, CA_CERT, request, serial=1, now=NOW)


# --- server certificates -------------------------------------------------------------


def test_server_certificate_names_dns_names_addresses_and_server() -> None:
    signed = sign_server_certificate(CA_KEY, CA_CERT, _server_request(), serial=12, now=NOW)
    cert = _load(signed)

    assert signed.san_entries == (
        "web-1.example.com",
        "web-1",
        "192.0.2.10",
        "2001:db8::10",
        "sft://acme/web/servers/7f3c9a",
    )
    assert signed.uris == ("sft://acme/web/servers/7f3c9a",)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web-1.example.com", "web-1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("2001:db8::10"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == list(signed.uris)
    assert cert.subject.rfc4514_string() == "CN=web-1.example.com"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    _assert_leaf_extensions(cert, key_encipherment=False)
    week = NOW + dt.timedelta(seconds=SERVER_DEFAULT_TTL_SECONDS)
    assert cert.not_valid_after_utc == signed.valid_before == week
    cert.verify_directly_issued_by(CA_CERT)


def test_server_with_addresses_only_is_named_by_its_first_address() -> None:
    request = _server_request(dns_names=(), ip_addresses=("2001:db8::10", "192.0.2.10"))
    cert = _load(sign_server_certificate(CA_KEY, CA_CERT, request, 13, NOW))
    assert cert.subject.rfc4514_string() == "CN=2001:db8::10"


def test_names_too_long_for_a_common_name_leave_the_subject_empty_and_san_critical() -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "example", "com"])
    request = _server_request(dns_names=(long_name,), ip_addresses=())
    cert = _load(sign_server_certificate(CA_KEY, CA_CERT, request, 14, NOW))
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project": "teams/acme"}, r"use teams/\{team\}/projects/\{project\}"),
        ({"server": "teams/acme/projects/db/servers/7f3c9a"}, "is not in project"),
        ({"server": "teams/acme/projects/web/servers/a.b"}, "is not a server resource name"),
        ({"request_id": "a=b"}, "request_id 'a=b' is not valid"),
        ({"dns_names": (), "ip_addresses": ()}, "at least one DNS name or IP address"),
        ({"dns_names": tuple(f"h{i}" for i in range(65))}, "dns_names takes at most 64"),
        ({"ip_addresses": tuple(f"10.0.0.{i}" for i in range(65))}, "ip_addresses takes at"),
        ({"dns_names": ("Web-1",)}, "host principal 'Web-1' is not valid"),
        ({"dns_names": ("*.example.com",)}, "host principal '\\*.example.com' is not valid"),
        ({"dns_names": ("web_1",)}, "is not valid"),
        ({"dns_names": ("",)}, "host principal '' is not valid"),
        ({"dns_names": ("192.0.2.10",)}, "'192.0.2.10' is an IP address; pass it in ip_add"),
        ({"dns_names": ("2001:db8::1",)}, "is an IP address"),
        ({"dns_names": ("web-1", "web-1")}, "dns_names are repeated"),
        ({"ip_addresses": ("web-1",)}, "'web-1' is not an IP address"),
        ({"ip_addresses": ("10.0.0.0/8",)}, "is not an IP address"),
        ({"ip_addresses": ("fe80::1%eth0",)}, "'fe80::1%eth0' is not an IP address"),
        ({"ip_addresses": ("2001:db8::1", "2001:DB8:0::1")}, "ip_addresses are repeated"),
        ({"ttl_seconds": 0}, "ttl_seconds must be positive"),
        ({"ttl_seconds": SERVER_MAX_TTL_SECONDS + 1}, "exceeds the server certificate maximum"),
        ({"csr_pem": ""}, "CSR is empty"),
        ({"csr_pem": _public_pem(SUBJECT_KEY.public_key())}, "CSR cannot be parsed"),
    ],
    ids=[
        "bad-project",
        "server-in-other-project",
        "bad-server-id",
        "bad-request-id",
        "no-names",
        "too-many-dns-names",
        "too-many-addresses",
        "uppercase-dns-name",
        "wildcard-dns-name",
        "underscore-dns-name",
        "empty-dns-name",
        "ipv4-in-dns-names",
        "ipv6-in-dns-names",
        "repeated-dns-name",
        "name-in-addresses",
        "network-in-addresses",
        "scoped-ipv6",
        "repeated-address",
        "ttl-zero",
        "ttl-over-max",
        "no-csr",
        "public-key-as-csr",
    ],
)
def test_bad_server_request_is_refused(changes: dict[str, object], message: str) -> None:
    request = _server_request(**changes)
    with pytest.raises(InvalidInput, match=message):
        request.check()
    with pytest.raises(InvalidInput, match=message):
        sign_server_certificate(CA_KEY, CA_CERT, request, serial=1, now=NOW)


def test_server_ttl_at_the_maximum_is_accepted() -> None:
    request = _server_request(ttl_seconds=SERVER_MAX_TTL_SECONDS)
    signed = sign_server_certificate(CA_KEY, CA_CERT, request, 15, NOW)
    assert signed.valid_before - NOW == dt.timedelta(days=30)


# --- keys and CSRs -------------------------------------------------------------------


def _tampered_csr() -> str:
    """Return SUBJECT_CSR with its subject changed after signing."""
    der = x509.load_pem_x509_csr(SUBJECT_CSR.encode()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"alice") == 1
    return _pem("CERTIFICATE REQUEST", der.replace(b"alice", b"mallo"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(_tampered_csr(), "CSR signature does not match its public key", id="tampered"),
        pytest.param(_csr(WEAK_RSA_KEY), "RSA key of 1024 bits is too weak", id="rsa-1024"),
        pytest.param(_csr(DSA_KEY), "DSA keys are not accepted", id="dsa"),
        pytest.param(_csr(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1", id="p521"),
        pytest.param("", "CSR is empty", id="empty"),
        pytest.param("-----BEGIN CERTIFICATE REQUEST-----\n!!\n", "cannot be parsed", id="junk"),
        pytest.param(SUBJECT_CSR + SUBJECT_CSR, "exactly one PEM block, not 2", id="two-blocks"),
        pytest.param(SUBJECT_CSR + "é", "at most 16384 ASCII characters", id="non-ascii"),
        pytest.param(SUBJECT_CSR + " " * 16_384, "at most 16384", id="oversized"),
        pytest.param(CA_CERT.public_bytes(serialization.Encoding.PEM).decode(), "CSR cannot be"),
    ],
)
def test_bad_csrs_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_csr_pem(text)


def _oversized_rsa_public_key() -> rsa.RSAPublicKey:
    """Return an RSA public key with a 16401-bit modulus (not a real key; never used to sign)."""
    return rsa.RSAPublicNumbers(65537, 2**16400 + 3).public_key()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        pytest.param(WEAK_RSA_KEY.public_key(), "RSA key of 1024 bits is too weak", id="rsa-1024"),
        pytest.param(_oversized_rsa_public_key(), "RSA key of 16401 bits is larger", id="rsa-16k"),
        pytest.param(DSA_KEY.public_key(), "DSA keys are not accepted", id="dsa"),
        pytest.param(
            ec.generate_private_key(ec.SECP256K1()).public_key(), "curve secp256k1", id="k256"
        ),
        pytest.param(
            ec.generate_private_key(ec.SECP521R1()).public_key(), "curve secp521r1", id="p521"
        ),
        pytest.param(x25519.X25519PrivateKey.generate().public_key(), "X25519 keys", id="x25519"),
        pytest.param(x448.X448PrivateKey.generate().public_key(), "X448 keys", id="x448"),
        pytest.param(ed448.Ed448PrivateKey.generate().public_key(), "Ed448 keys", id="ed448"),
    ],
)
def test_weak_and_unsigned_key_kinds_are_refused(key: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_public_key_pem(_public_pem(key))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "public key is empty", id="empty"),
        pytest.param("  \n", "public key is empty", id="blank"),
        pytest.param("ssh-ed25519 AAAA", "exactly one PEM block, not 0", id="openssh-line"),
        pytest.param(_pem("PUBLIC KEY", b"\x30\x03\x02\x01\x00"), "cannot be parsed", id="junk"),
        pytest.param(SUBJECT_CSR, "public key cannot be parsed", id="csr"),
        pytest.param(
            SUBJECT_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            "public key cannot be parsed",
            id="private-key",
        ),
    ],
)
def test_unparsable_public_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_public_key_pem(text)


@pytest.mark.parametrize(
    "key",
    [
        _p256(),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
        RSA_KEY,
    ],
    ids=["p256", "p384", "ed25519", "rsa-2048"],
)
def test_accepted_public_keys_parse_to_the_same_key(key: PrivateKey) -> None:
    expected = spki_fingerprint(key.public_key())
    assert spki_fingerprint(parse_public_key_pem(_public_pem(key.public_key()))) == expected
    assert spki_fingerprint(parse_csr_pem(_csr(key))) == expected


@given(st.text(max_size=300))
def test_pem_parsers_raise_only_invalid_input(text: str) -> None:
    for parse in (parse_public_key_pem, parse_csr_pem):
        try:
            parse(text)
        except InvalidInput:
            pass


@given(st.sampled_from(["PUBLIC KEY", "CERTIFICATE REQUEST", "RSA PUBLIC KEY"]), st.binary())
def test_pem_parsers_on_random_der_raise_only_invalid_input(label: str, der: bytes) -> None:
    for parse in (parse_public_key_pem, parse_csr_pem):
        try:
            parse(_pem(label, der))
        except InvalidInput:
            pass


# --- validity, serials and the CA in use ---------------------------------------------


def test_certificate_outliving_the_ca_is_refused() -> None:
    late = NOW + dt.timedelta(seconds=X509_CA_VALIDITY_SECONDS - 300)
    with pytest.raises(FailedPrecondition, match="CA expires at 2036-02-27T12:00:00Z, before"):
        sign_client_certificate(CA_KEY, CA_CERT, _client_request(), serial=1, now=late)
    ok = sign_client_certificate(CA_KEY, CA_CERT, _client_request(ttl_seconds=240), 1, late)
    assert ok.valid_before < CA_CERT.not_valid_after_utc


def test_expired_ca_is_refused() -> None:
    later = NOW + dt.timedelta(seconds=X509_CA_VALIDITY_SECONDS + 1)
    with pytest.raises(FailedPrecondition, match=r"rotate the project's X\.509 CA"):
        sign_server_certificate(CA_KEY, CA_CERT, _server_request(), serial=1, now=later)


def test_ca_not_yet_valid_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="not valid until 2026-03-01T11:59:00Z"):
        sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 1, NOW - dt.timedelta(hours=1))


@pytest.mark.parametrize("serial", [0, -1, 2**63], ids=["zero", "negative", "2-to-the-63"])
def test_serial_out_of_range_is_a_programming_error(serial: int) -> None:
    with pytest.raises(ValueError, match=r"between 1 and 2\*\*63 - 1"):
        sign_client_certificate(CA_KEY, CA_CERT, _client_request(), serial=serial, now=NOW)
    with pytest.raises(ValueError, match="out of range"):
        make_x509_authority(PROJECT, _p256(), NOW, serial=serial)


def test_largest_serial_is_accepted() -> None:
    signed = sign_server_certificate(CA_KEY, CA_CERT, _server_request(), 2**63 - 1, NOW)
    assert _load(signed).serial_number == 2**63 - 1


def test_naive_clock_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 1, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        make_x509_authority(PROJECT, _p256(), NOW.replace(tzinfo=None), serial=1)


def test_validity_is_the_same_instant_whatever_the_clocks_zone() -> None:
    tokyo = NOW.astimezone(dt.timezone(dt.timedelta(hours=9))) + dt.timedelta(microseconds=999)
    a = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 1, NOW)
    b = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 1, tokyo)
    assert (a.valid_after, a.valid_before) == (b.valid_after, b.valid_before)


def test_signing_with_a_key_that_is_not_the_cas_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="ca_key is not the key of ca_cert"):
        sign_client_certificate(_p256(), CA_CERT, _client_request(), 1, NOW)


def test_signing_with_another_projects_ca_is_a_programming_error() -> None:
    other_key, other_cert = _authority(OTHER_PROJECT)
    with pytest.raises(ValueError, match="not the CA of the request's project"):
        sign_server_certificate(other_key, other_cert, _server_request(), 1, NOW)


def test_fingerprints_are_sha256_of_der() -> None:
    der = CA_CERT.public_bytes(serialization.Encoding.DER)
    digest = base64.b64encode(_sha256(der)).decode().rstrip("=")
    assert x509_fingerprint(CA_CERT) == f"SHA256:{digest}"
    assert "=" not in spki_fingerprint(SUBJECT_KEY.public_key())


def _sha256(data: bytes) -> bytes:
    """Return the SHA-256 of `data` via cryptography (independent of hashlib in the module)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


# --- what cryptography's RFC 5280 verifier makes of them -----------------------------


def test_rfc5280_verifier_accepts_client_certificate_and_reads_its_uris() -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 20, NOW)
    verifier = PolicyBuilder().store(Store([CA_CERT])).time(NOW).build_client_verifier()
    verified = verifier.verify(_load(signed), [])
    assert verified.subjects is not None
    uris = [n.value for n in verified.subjects if isinstance(n, x509.UniformResourceIdentifier)]
    assert uris == list(signed.uris)


@pytest.mark.parametrize(
    "name",
    [x509.DNSName("web-1.example.com"), x509.IPAddress(ipaddress.ip_address("2001:db8::10"))],
    ids=["dns", "ipv6"],
)
def test_rfc5280_verifier_accepts_server_certificate(name: x509.DNSName | x509.IPAddress) -> None:
    signed = sign_server_certificate(CA_KEY, CA_CERT, _server_request(), 21, NOW)
    verifier = PolicyBuilder().store(Store([CA_CERT])).time(NOW).build_server_verifier(name)
    verifier.verify(_load(signed), [])


# --- what real OpenSSL makes of them -------------------------------------------------


@pytest.fixture(scope="module")
def openssl() -> str:
    """Return the path of the real openssl (fail under CI if it is missing)."""
    return require(
        "openssl", find_program("openssl", "/usr/bin/openssl"), "install openssl (apt-get)"
    )


def _verify(
    openssl: str,
    tmp_path: Path,
    cas: list[x509.Certificate],
    signed: SignedX509Certificate,
    purpose: str,
) -> subprocess.CompletedProcess[str]:
    """Run `openssl verify -x509_strict` on `signed` trusting `cas` at NOW, for `purpose`."""
    ca_file, leaf_file = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca_file.write_bytes(b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in cas))
    leaf_file.write_text(signed.certificate_pem)
    return subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-attime",
            str(int(NOW.timestamp())),
            "-CAfile",
            str(ca_file),
            "-purpose",
            purpose,
            str(leaf_file),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_openssl_verifies_client_certificate_for_client_auth_only(
    openssl: str, tmp_path: Path
) -> None:
    signed = sign_client_certificate(CA_KEY, CA_CERT, _client_request(), 30, NOW)
    ok = _verify(openssl, tmp_path, [CA_CERT], signed, "sslclient")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    refused = _verify(openssl, tmp_path, [CA_CERT], signed, "sslserver")
    assert refused.returncode != 0
    assert f"error {X509_V_ERR_INVALID_PURPOSE} at 0 depth" in refused.stderr


def test_openssl_verifies_server_certificate_for_server_auth_only(
    openssl: str, tmp_path: Path
) -> None:
    signed = sign_server_certificate(CA_KEY, CA_CERT, _server_request(), 31, NOW)
    ok = _verify(openssl, tmp_path, [CA_CERT], signed, "sslserver")
    assert ok.returncode == 0, ok.stderr
    refused = _verify(openssl, tmp_path, [CA_CERT], signed, "sslclient")
    assert refused.returncode != 0
    assert f"error {X509_V_ERR_INVALID_PURPOSE} at 0 depth" in refused.stderr


def test_openssl_accepts_an_empty_subject_with_a_critical_san(openssl: str, tmp_path: Path) -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "example", "com"])
    request = _server_request(dns_names=(long_name,), ip_addresses=())
    signed = sign_server_certificate(CA_KEY, CA_CERT, request, 32, NOW)
    ok = _verify(openssl, tmp_path, [CA_CERT], signed, "sslserver")
    assert ok.returncode == 0, ok.stderr


def test_openssl_refuses_a_certificate_from_another_projects_ca(
    openssl: str, tmp_path: Path
) -> None:
    other_key, other_cert = _authority(OTHER_PROJECT)
    request = _client_request(project=OTHER_PROJECT, server="")
    signed = sign_client_certificate(other_key, other_cert, request, 33, NOW)
    assert _verify(openssl, tmp_path, [other_cert], signed, "sslclient").returncode == 0
    refused = _verify(openssl, tmp_path, [CA_CERT], signed, "sslclient")
    assert refused.returncode != 0
    assert f"error {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY} at 0 depth" in refused.stderr


# --- a real TLS handshake over loopback ----------------------------------------------


def _issue_files(
    tmp_path: Path, name: str, signed: SignedX509Certificate, key: PrivateKey
) -> tuple[Path, Path]:
    """Write a certificate and its private key (test material) to `tmp_path`."""
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_text(signed.certificate_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _live_server(tmp_path: Path, authority: Authority, now: dt.datetime) -> tuple[Path, Path]:
    """Issue a broker certificate for 127.0.0.1 and localhost, valid at `now`."""
    key = _p256()
    request = _server_request(
        csr_pem=_csr(key), dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    signed = sign_server_certificate(*authority, request, serial=40, now=now)
    return _issue_files(tmp_path, "server", signed, key)


def _live_client(
    tmp_path: Path, authority: Authority, now: dt.datetime, project: str = PROJECT
) -> tuple[Path, Path]:
    """Issue a client certificate for alice in `project`, valid for 10 minutes from `now`."""
    key = _p256()
    request = _client_request(project=project, server="", csr_pem=_csr(key))
    signed = sign_client_certificate(*authority, request, serial=41, now=now)
    return _issue_files(tmp_path, "client", signed, key)


def _handshake(
    ca: x509.Certificate, server: tuple[Path, Path], client: tuple[Path, Path]
) -> tuple[dict[str, object], BaseException | None, BaseException | None]:
    """Run one mutual-TLS exchange on 127.0.0.1 trusting `ca` on both sides.

    Return (what the server saw of the client's certificate, the server's error, the
    client's error).
    """
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca_pem)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_cert_chain(*map(str, server))
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    client_context.load_cert_chain(*map(str, client))
    seen: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(10)
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    seen.update(tls.getpeercert() or {})
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as error:
                errors["server"] = error

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                if tls.recv(2) != b"ok":
                    errors["client"] = ConnectionError("the server closed without a reply")
        except (OSError, ssl.SSLError) as error:
            errors["client"] = error
        thread.join(10)
        assert not thread.is_alive()
    return seen, errors.get("server"), errors.get("client")


def _verify_code(error: BaseException | None) -> int:
    """Return the OpenSSL X509_V_ERR_* code of a certificate verification failure."""
    assert isinstance(error, ssl.SSLCertVerificationError), repr(error)
    return int(error.verify_code)


def test_mutual_tls_with_issued_certificates_succeeds(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    authority = _authority(now=now)
    seen, server_error, client_error = _handshake(
        authority[1], _live_server(tmp_path, authority, now), _live_client(tmp_path, authority, now)
    )
    assert (server_error, client_error) == (None, None)
    assert seen["subjectAltName"] == (
        ("URI", "sft://acme/web/users/alice"),
        ("URI", "sft://acme/web/accounts/alice"),
    )


def test_client_certificate_from_another_projects_ca_is_refused(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    authority, other = _authority(now=now), _authority(OTHER_PROJECT, now)
    client = _live_client(tmp_path, other, now, project=OTHER_PROJECT)
    _, server_error, client_error = _handshake(
        authority[1], _live_server(tmp_path, authority, now), client
    )
    assert _verify_code(server_error) == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert client_error is not None


def test_expired_client_certificate_is_refused(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    two_days_ago = now - dt.timedelta(days=2)
    authority = _authority(now=two_days_ago)
    client = _live_client(tmp_path, authority, two_days_ago)  # expired 10 min after issue
    _, server_error, client_error = _handshake(
        authority[1], _live_server(tmp_path, authority, now), client
    )
    assert _verify_code(server_error) == X509_V_ERR_CERT_HAS_EXPIRED
    assert client_error is not None


def test_expired_server_certificate_is_refused_by_the_client(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    long_ago = now - dt.timedelta(days=SERVER_DEFAULT_TTL_SECONDS // 86_400 + 1)
    authority = _authority(now=long_ago)
    server = _live_server(tmp_path, authority, long_ago)
    _, _, client_error = _handshake(authority[1], server, _live_client(tmp_path, authority, now))
    assert _verify_code(client_error) == X509_V_ERR_CERT_HAS_EXPIRED


def test_server_certificate_presented_as_a_client_certificate_is_refused(
    tmp_path: Path,
) -> None:
    # OpenSSL verifies a client's chain for the "sslclient" purpose by default, which
    # rejects a leaf whose extendedKeyUsage lacks clientAuth: a broker cannot log in.
    now = dt.datetime.now(dt.UTC)
    authority = _authority(now=now)
    server = _live_server(tmp_path, authority, now)
    _, server_error, client_error = _handshake(authority[1], server, server)
    assert _verify_code(server_error) == X509_V_ERR_INVALID_PURPOSE
    assert client_error is not None


def test_client_certificate_presented_as_a_server_certificate_is_refused(
    tmp_path: Path,
) -> None:
    now = dt.datetime.now(dt.UTC)
    authority = _authority(now=now)
    key = _p256()
    request = _client_request(server="", csr_pem=_csr(key))
    # A client certificate names no host, so the hostname check would refuse it first;
    # with that check off, the purpose check is what is left to refuse it.
    signed = sign_client_certificate(*authority, request, serial=42, now=now)
    as_server = _issue_files(tmp_path, "as-server", signed, key)
    ca_pem = authority[1].public_bytes(serialization.Encoding.PEM).decode()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.check_hostname = False
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(*map(str, as_server))
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                connection.settimeout(10)
                with server_context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError) as error:
                errors.append(error)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError) as refused,
        ):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
        thread.join(10)
        assert not thread.is_alive()
    assert refused.value.verify_code == X509_V_ERR_INVALID_PURPOSE
    assert len(errors) == 1  # the server hears the client's alert


def test_openssl_finds_the_issuing_ca_in_a_rotation_bundle(openssl: str, tmp_path: Path) -> None:
    # During a rotation the trust bundle holds two CAs with the same subject; OpenSSL
    # picks the issuer whose subjectKeyIdentifier matches the leaf's authorityKeyIdentifier.
    new_key, new_cert = _authority()
    for key, cert in ((CA_KEY, CA_CERT), (new_key, new_cert)):
        signed = sign_client_certificate(key, cert, _client_request(), 34, NOW)
        result = _verify(openssl, tmp_path, [CA_CERT, new_cert], signed, "sslclient")
        assert result.returncode == 0, result.stderr
