"""Makes a project's X.509 CA and signs short-lived mTLS client and server certificates with it.

Pure: no I/O, no clock of its own, no database; never logs or stores a private key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from runtime.cert_uris import (
    account_uri,
    server_uri,
    split_project_name,
    split_server_name,
    split_user_name,
    user_uri,
)
from runtime.errors import FailedPrecondition, InvalidInput
from services.ca.limits import CLOCK_SKEW_SECONDS, MIN_RSA_BITS, check_request_id, check_ttl
from services.ca.principals import check_account_name, check_host_principal

__all__ = [
    "CLIENT_DEFAULT_TTL_SECONDS",
    "CLIENT_MAX_TTL_SECONDS",
    "SERVER_DEFAULT_TTL_SECONDS",
    "SERVER_MAX_TTL_SECONDS",
    "X509_CA_VALIDITY_SECONDS",
    "ClientCertificateRequest",
    "ServerCertificateRequest",
    "SignedX509Certificate",
    "X509SubjectPublicKey",
    "make_x509_authority",
    "parse_csr_pem",
    "parse_public_key_pem",
    "sign_client_certificate",
    "sign_server_certificate",
    "spki_fingerprint",
    "x509_fingerprint",
]

X509_CA_VALIDITY_SECONDS = 10 * 365 * 86_400
CLIENT_DEFAULT_TTL_SECONDS = 600
#: Hard cap on a client certificate, whatever a project allows.
CLIENT_MAX_TTL_SECONDS = 86_400
SERVER_DEFAULT_TTL_SECONDS = 7 * 86_400
SERVER_MAX_TTL_SECONDS = 30 * 86_400
# OpenSSL refuses RSA moduli over 16384 bits (OPENSSL_RSA_MAX_MODULUS_BITS) in TLS anyway.
_MAX_RSA_BITS = 16_384
_MAX_PEM_TEXT = 16_384
_MAX_NAMES = 64
# RFC 5280's upper bound on a commonName (ub-common-name); cryptography enforces it.
_MAX_COMMON_NAME = 64
_MAX_SERIAL = 2**63 - 1
_SUBJECT_CURVES = frozenset({"secp256r1", "secp384r1"})
_UNSIGNABLE_KEYS: tuple[tuple[type, str], ...] = (
    (ed448.Ed448PublicKey, "Ed448"),
    (x25519.X25519PublicKey, "X25519"),
    (x448.X448PublicKey, "X448"),
)

X509SubjectPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SignedX509Certificate:
    """A signed certificate and the facts about it the issuance log and caller need."""

    certificate_pem: str
    serial: int
    san_entries: tuple[str, ...]  # DNS names, then IP addresses, then URIs, as text
    uris: tuple[str, ...]  # the sft:// URIs among san_entries
    valid_after: dt.datetime
    valid_before: dt.datetime
    ca_fingerprint: str  # x509_fingerprint of the CA certificate
    subject_fingerprint: str  # spki_fingerprint of the certified key


@dataclass(frozen=True)
class ClientCertificateRequest:
    """Who a client (mTLS) certificate is for: a user, as a server account, in one project."""

    project: str  # teams/{team}/projects/{project}
    user: str  # teams/{team}/users/{user}; same team as project
    account: str  # the server account the user acts as
    request_id: str
    server: str = ""  # teams/{team}/projects/{project}/servers/{id}; empty: no one server
    csr_pem: str = ""  # PEM PKCS#10; exactly one of csr_pem and public_key_pem
    public_key_pem: str = ""  # PEM SubjectPublicKeyInfo
    ttl_seconds: int = CLIENT_DEFAULT_TTL_SECONDS
    max_ttl_seconds: int = CLIENT_MAX_TTL_SECONDS  # the project's maximum
    allow_privileged_account: bool = False

    def check(self) -> None:
        """Raise InvalidInput naming the first thing wrong with this request."""
        team, project = split_project_name(self.project)
        user_team, _ = split_user_name(self.user)
        if user_team != team:
            raise InvalidInput(
                f"user {self.user} is in team {user_team!r}, but project {self.project} is in "
                f"team {team!r}; certificates are issued only to the project's own team"
            )
        check_account_name(self.account, allow_privileged=self.allow_privileged_account)
        if self.server:
            _check_server_in_project(self.server, team, project, self.project)
        check_request_id(self.request_id)
        if not 0 < self.max_ttl_seconds <= CLIENT_MAX_TTL_SECONDS:
            raise InvalidInput(
                f"max_ttl_seconds {self.max_ttl_seconds} is out of range; set the project's "
                f"maximum between 1 and {CLIENT_MAX_TTL_SECONDS} seconds"
            )
        check_ttl(self.ttl_seconds, self.max_ttl_seconds, "the project's maximum")
        self.public_key()

    def public_key(self) -> X509SubjectPublicKey:
        """Return the key to certify, from the CSR or the PEM public key (exactly one is set)."""
        if self.csr_pem and self.public_key_pem:
            raise InvalidInput("both csr_pem and public_key_pem are set; pass exactly one of them")
        if self.csr_pem:
            return parse_csr_pem(self.csr_pem)
        if self.public_key_pem:
            return parse_public_key_pem(self.public_key_pem)
        raise InvalidInput(
            "no key to certify; pass a PEM CSR in csr_pem or a PEM public key in public_key_pem"
        )


@dataclass(frozen=True)
class ServerCertificateRequest:
    """What a server (broker) certificate should say: the names and addresses clients dial."""

    project: str  # teams/{team}/projects/{project}
    server: str  # teams/{team}/projects/{project}/servers/{id}; in that project
    csr_pem: str  # PEM PKCS#10 from the server, which keeps its private key
    request_id: str
    dns_names: tuple[str, ...] = ()  # lowercase DNS names, no wildcards
    ip_addresses: tuple[str, ...] = ()  # IPv4 or IPv6 addresses, no zone
    ttl_seconds: int = SERVER_DEFAULT_TTL_SECONDS

    def check(self) -> None:
        """Raise InvalidInput naming the first thing wrong with this request."""
        team, project = split_project_name(self.project)
        _check_server_in_project(self.server, team, project, self.project)
        check_request_id(self.request_id)
        if not self.dns_names and not self.ip_addresses:
            raise InvalidInput(
                "a server certificate needs at least one DNS name or IP address; pass the "
                "names and addresses clients connect to"
            )
        for field, names in (("dns_names", self.dns_names), ("ip_addresses", self.ip_addresses)):
            if len(names) > _MAX_NAMES:
                raise InvalidInput(f"{field} takes at most {_MAX_NAMES} entries, not {len(names)}")
        for name in self.dns_names:
            check_host_principal(name)
            if _is_ip_address(name):
                raise InvalidInput(
                    f"dns_names entry {name!r} is an IP address; pass it in ip_addresses"
                )
        if len(set(self.dns_names)) != len(self.dns_names):
            raise InvalidInput("dns_names are repeated; list each name once")
        addresses = self.addresses()
        if len(set(addresses)) != len(addresses):
            raise InvalidInput("ip_addresses are repeated; list each address once")
        check_ttl(self.ttl_seconds, SERVER_MAX_TTL_SECONDS, "the server certificate maximum")
        parse_csr_pem(self.csr_pem)

    def addresses(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        """Return ip_addresses parsed; refuse anything that is not a plain IP address."""
        return tuple(_parse_ip_address(text) for text in self.ip_addresses)


def make_x509_authority(
    project: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime, serial: int
) -> x509.Certificate:
    """Return a self-signed CA certificate for `project`, valid from now - 1 min for 10 years."""
    team, project_id = split_project_name(project)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidInput(
            "an X.509 CA key must be ECDSA P-256; generate one with "
            "ec.generate_private_key(ec.SECP256R1())"
        )
    issued = _issued_at(now)
    _check_serial(serial)
    name = _authority_name(team, project_id)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(issued - dt.timedelta(seconds=CLOCK_SKEW_SECONDS))
        .not_valid_after(issued + dt.timedelta(seconds=X509_CA_VALIDITY_SECONDS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def sign_client_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    request: ClientCertificateRequest,
    serial: int,
    now: dt.datetime,
) -> SignedX509Certificate:
    """Check `request` and return a clientAuth certificate naming its user, account and server."""
    request.check()
    team, project = split_project_name(request.project)
    _, user = split_user_name(request.user)
    uris = [user_uri(team, project, user), account_uri(team, project, request.account)]
    if request.server:
        uris.append(server_uri(team, project, split_server_name(request.server)[2]))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, team),
            x509.NameAttribute(NameOID.COMMON_NAME, user),
        ]
    )
    return _sign(
        ca_key,
        ca_cert,
        authority=_authority_name(team, project),
        subject=subject,
        subject_key=request.public_key(),
        dns_names=(),
        addresses=(),
        uris=tuple(uris),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        ttl_seconds=request.ttl_seconds,
        serial=serial,
        now=now,
    )


def sign_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    request: ServerCertificateRequest,
    serial: int,
    now: dt.datetime,
) -> SignedX509Certificate:
    """Check `request` and return a serverAuth certificate for its names and its server URI."""
    request.check()
    team, project = split_project_name(request.project)
    addresses = request.addresses()
    # A commonName over 64 characters is invalid, so the first name that fits is used; with
    # none, the subject is empty and _sign marks the subjectAltName critical (RFC 5280 4.2.1.6).
    common_names = [n for n in (*request.dns_names, *map(str, addresses)) if len(n) <= 64]
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name) for name in common_names[:1]]
    )
    return _sign(
        ca_key,
        ca_cert,
        authority=_authority_name(team, project),
        subject=subject,
        subject_key=parse_csr_pem(request.csr_pem),
        dns_names=request.dns_names,
        addresses=addresses,
        uris=(server_uri(team, project, split_server_name(request.server)[2]),),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        ttl_seconds=request.ttl_seconds,
        serial=serial,
        now=now,
    )


def parse_public_key_pem(text: str) -> X509SubjectPublicKey:
    """Return the key of a PEM public key; refuse weak, odd or unparsable keys."""
    data = _pem_bytes(text, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput(
            "public key cannot be parsed; pass one PEM public key (-----BEGIN PUBLIC KEY-----, "
            "as `openssl pkey -pubout` writes it)"
        ) from None
    return _check_subject_key(key)


def parse_csr_pem(text: str) -> X509SubjectPublicKey:
    """Return the key of a PEM CSR signed by that key; refuse weak keys and bad signatures.

    Only the key is taken from a CSR: the subject and extensions it asks for are ignored,
    because what a certificate says is decided by the request, not by its holder.
    """
    data = _pem_bytes(text, "CSR")
    try:
        csr = x509.load_pem_x509_csr(data)
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput(
            "CSR cannot be parsed; pass one PEM certificate signing request "
            "(-----BEGIN CERTIFICATE REQUEST-----, as `openssl req -new` writes it)"
        ) from None
    checked = _check_subject_key(key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise InvalidInput(
            "CSR signature does not match its public key; make a new CSR with the key to certify"
        )
    return checked


def x509_fingerprint(cert: x509.Certificate) -> str:
    """Return "SHA256:" + unpadded base64 of the SHA-256 of the DER certificate."""
    return _sha256_print(cert.public_bytes(serialization.Encoding.DER))


def spki_fingerprint(public_key: X509SubjectPublicKey) -> str:
    """Return "SHA256:" + unpadded base64 of the SHA-256 of the DER SubjectPublicKeyInfo."""
    return _sha256_print(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _sign(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    authority: x509.Name,
    subject: x509.Name,
    subject_key: X509SubjectPublicKey,
    dns_names: tuple[str, ...],
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
    uris: tuple[str, ...],
    usage: ObjectIdentifier,
    ttl_seconds: int,
    serial: int,
    now: dt.datetime,
) -> SignedX509Certificate:
    """Fill in the parts client and server certificates share, sign, and describe the result."""
    issued = _issued_at(now)
    _check_serial(serial)
    if _spki(ca_cert.public_key()) != _spki(ca_key.public_key()):
        raise ValueError("ca_key is not the key of ca_cert")
    if ca_cert.subject != authority:
        raise ValueError(
            f"ca_cert is {ca_cert.subject.rfc4514_string()}, not the CA of the request's project"
        )
    valid_after = issued - dt.timedelta(seconds=CLOCK_SKEW_SECONDS)
    valid_before = issued + dt.timedelta(seconds=ttl_seconds)
    if issued < ca_cert.not_valid_before_utc:
        raise FailedPrecondition(
            f"the project's X.509 CA is not valid until {_stamp(ca_cert.not_valid_before_utc)}; "
            "check the CA host's clock"
        )
    if valid_before > ca_cert.not_valid_after_utc:
        raise FailedPrecondition(
            f"the project's X.509 CA expires at {_stamp(ca_cert.not_valid_after_utc)}, before "
            f"this certificate would ({_stamp(valid_before)}); rotate the project's X.509 CA"
        )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(address) for address in addresses]
    names += [x509.UniformResourceIdentifier(uri) for uri in uris]
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(valid_after)
        .not_valid_after(valid_before)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(subject_key, rsa.RSAPublicKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return SignedX509Certificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        serial=serial,
        san_entries=(*dns_names, *map(str, addresses), *uris),
        uris=uris,
        valid_after=valid_after,
        valid_before=valid_before,
        ca_fingerprint=x509_fingerprint(ca_cert),
        subject_fingerprint=spki_fingerprint(subject_key),
    )


def _authority_name(team: str, project: str) -> x509.Name:
    """Return the subject of `team`/`project`'s CA: O=sft, CN=sft CA team/project."""
    label = f"sft CA {team}/{project}"
    if len(label) > _MAX_COMMON_NAME:
        # Long team and project ids do not fit a commonName; a digest keeps each CA distinct.
        digest = hashlib.sha256(f"{team}/{project}".encode()).hexdigest()[:12]
        label = f"{label[: _MAX_COMMON_NAME - 13]}~{digest}"
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sft"),
            x509.NameAttribute(NameOID.COMMON_NAME, label),
        ]
    )


def _key_usage(*, key_cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    """Return keyUsage for a CA (certificate and CRL signing) or a leaf (digital signature)."""
    return x509.KeyUsage(
        digital_signature=not key_cert_sign,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_subject_key(key: object) -> X509SubjectPublicKey:
    """Return `key` if we certify keys of its kind and strength; else InvalidInput."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(
                f"RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits, "
                "or an ECDSA P-256 key"
            )
        if key.key_size > _MAX_RSA_BITS:
            raise InvalidInput(
                f"RSA key of {key.key_size} bits is larger than TLS libraries accept; use at "
                f"most {_MAX_RSA_BITS} bits, or an ECDSA P-256 key"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _SUBJECT_CURVES:
            raise InvalidInput(
                f"ECDSA curve {key.curve.name} is not accepted; use P-256 (secp256r1) or "
                "P-384 (secp384r1)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, dsa.DSAPublicKey):
        raise InvalidInput("DSA keys are not accepted; use an ECDSA P-256 or Ed25519 key")
    kind = next((label for cls, label in _UNSIGNABLE_KEYS if isinstance(key, cls)), "these")
    raise InvalidInput(
        f"{kind} keys are not accepted; use an ECDSA P-256/P-384, Ed25519 or RSA "
        f"(>= {MIN_RSA_BITS} bits) key"
    )


def _pem_bytes(text: str, what: str) -> bytes:
    """Return `text` as ASCII bytes if it is one small PEM block; else InvalidInput."""
    if not text.strip():
        raise InvalidInput(f"{what} is empty; pass it in PEM format")
    if len(text) > _MAX_PEM_TEXT or not text.isascii():
        raise InvalidInput(
            f"{what} is not a PEM text of at most {_MAX_PEM_TEXT} ASCII characters; pass "
            "one PEM block"
        )
    if text.count("-----BEGIN ") != 1:
        raise InvalidInput(f"{what} must be exactly one PEM block, not {text.count('-----BEGIN ')}")
    return text.encode("ascii")


def _check_server_in_project(server: str, team: str, project: str, project_name: str) -> None:
    """Refuse a server resource name that is not in `team`/`project`."""
    server_team, server_project, _ = split_server_name(server)
    if (server_team, server_project) != (team, project):
        raise InvalidInput(
            f"server {server} is not in project {project_name}; ask for a certificate in the "
            "server's own project"
        )


def _check_serial(serial: int) -> None:
    """Refuse a serial that is not a positive 63-bit number (RFC 5280 wants 1..20 octets)."""
    if not 0 < serial <= _MAX_SERIAL:
        raise ValueError(f"serial {serial} is out of range; it must be between 1 and 2**63 - 1")


def _issued_at(now: dt.datetime) -> dt.datetime:
    """Return `now` in UTC to the whole second, as certificates record it."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return dt.datetime.fromtimestamp(int(now.timestamp()), dt.UTC)


def _is_ip_address(text: str) -> bool:
    """Return whether `text` parses as an IP address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Return `text` as an IP address; refuse names and scoped IPv6 addresses."""
    # A scoped IPv6 address ("fe80::1%eth0") names an interface, not a host: refused.
    if "%" not in text:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            pass
    raise InvalidInput(
        f"ip_addresses entry {text[:64]!r} is not an IP address; use e.g. 192.0.2.10 or "
        "2001:db8::10, without a zone"
    )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    """Return the DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _stamp(when: dt.datetime) -> str:
    """Return `when` in UTC as 2026-03-01T12:00:00Z."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256_print(data: bytes) -> str:
    """Return "SHA256:" + unpadded base64 of the SHA-256 of `data`."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
