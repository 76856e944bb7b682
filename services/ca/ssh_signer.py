"""Signs short-lived OpenSSH user and host certificates with an Ed25519 CA key.

Pure: no I/O, no clock of its own, no database; never logs or stores a private key.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from runtime.errors import InvalidInput
from services.ca.limits import CLOCK_SKEW_SECONDS, MIN_RSA_BITS, check_request_id, check_ttl
from services.ca.principals import check_account_name, check_host_principal

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "HOST_DEFAULT_TTL_SECONDS",
    "HOST_MAX_TTL_SECONDS",
    "MIN_RSA_BITS",
    "USER_DEFAULT_TTL_SECONDS",
    "USER_MAX_TTL_SECONDS",
    "HostCertificateRequest",
    "SignedSSHCertificate",
    "SubjectPublicKey",
    "UserCertificateRequest",
    "parse_public_key",
    "sign_host_certificate",
    "sign_user_certificate",
    "ssh_fingerprint",
]

USER_DEFAULT_TTL_SECONDS = 600
#: Hard cap on a user certificate, whatever a project allows.
USER_MAX_TTL_SECONDS = 86_400
HOST_DEFAULT_TTL_SECONDS = 7 * 86_400
HOST_MAX_TTL_SECONDS = 30 * 86_400
_MAX_KEY_TEXT = 16_384
_MAX_PRINCIPALS = 256
_MAX_SOURCE_ADDRESSES = 64
_CERT_SUFFIX = "-cert-v01@openssh.com"
# Key id fields are joined with spaces and '='; a field containing either could forge another.
_KEY_ID_FIELD = re.compile(r"^[A-Za-z0-9._@:+-]{1,128}$")

SubjectPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SignedSSHCertificate:
    """A signed certificate and the facts about it the issuance log and caller need."""

    certificate: str  # OpenSSH one-line format: "<type>-cert-v01@openssh.com <base64>"
    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: dt.datetime
    valid_before: dt.datetime
    ca_fingerprint: str  # "SHA256:…", as ssh-keygen -l prints it
    subject_fingerprint: str


@dataclass(frozen=True)
class UserCertificateRequest:
    """What a user certificate should say; validity is derived from ttl_seconds and the clock."""

    public_key: str  # OpenSSH authorized_keys format
    user: str
    account: str  # the server account name; the only principal
    project: str
    device_id: str
    request_id: str
    ttl_seconds: int = USER_DEFAULT_TTL_SECONDS
    max_ttl_seconds: int = USER_MAX_TTL_SECONDS  # the project's maximum
    permit_pty: bool = True
    permit_port_forwarding: bool = True
    permit_agent_forwarding: bool = True
    permit_user_rc: bool = True
    permit_x11_forwarding: bool = False
    source_addresses: tuple[str, ...] = ()  # CIDRs; empty means from anywhere
    allow_privileged_account: bool = False

    @functools.cached_property
    def subject_key(self) -> SubjectPublicKey:
        """Return the parsed key to certify (parsed once; raises InvalidInput)."""
        return parse_public_key(self.public_key)

    def check(self) -> None:
        """Raise InvalidInput naming the first thing wrong with this request."""
        _ = self.subject_key
        check_account_name(self.account, allow_privileged=self.allow_privileged_account)
        _check_key_id_field("user", self.user)
        _check_key_id_field("project", self.project)
        _check_key_id_field("device_id", self.device_id)
        check_request_id(self.request_id)
        if not 0 < self.max_ttl_seconds <= USER_MAX_TTL_SECONDS:
            raise InvalidInput(
                f"max_ttl_seconds {self.max_ttl_seconds} is out of range; set the project's "
                f"maximum between 1 and {USER_MAX_TTL_SECONDS} seconds"
            )
        check_ttl(self.ttl_seconds, self.max_ttl_seconds, "the project's maximum")
        _source_address_option(self.source_addresses)

    @property
    def key_id(self) -> str:
        """Return the key id sshd logs: who, where, from which device, for which request."""
        return (
            f"user={self.user} project={self.project} "
            f"device={self.device_id} request={self.request_id}"
        )

    def extensions(self) -> tuple[str, ...]:
        """Return the OpenSSH extensions this request turns on."""
        wanted = {
            "permit-X11-forwarding": self.permit_x11_forwarding,
            "permit-agent-forwarding": self.permit_agent_forwarding,
            "permit-port-forwarding": self.permit_port_forwarding,
            "permit-pty": self.permit_pty,
            "permit-user-rc": self.permit_user_rc,
        }
        return tuple(name for name, on in wanted.items() if on)


@dataclass(frozen=True)
class HostCertificateRequest:
    """What a host certificate should say: the server's names and addresses."""

    public_key: str  # OpenSSH authorized_keys format (the server's host key)
    host_name: str
    server_id: str
    principals: tuple[str, ...]  # DNS names and IP addresses clients connect to
    ttl_seconds: int = HOST_DEFAULT_TTL_SECONDS

    @functools.cached_property
    def subject_key(self) -> SubjectPublicKey:
        """Return the parsed key to certify (parsed once; raises InvalidInput)."""
        return parse_public_key(self.public_key)

    def check(self) -> None:
        """Raise InvalidInput naming the first thing wrong with this request."""
        _ = self.subject_key
        _check_key_id_field("host_name", self.host_name)
        _check_key_id_field("server_id", self.server_id)
        if not self.principals:
            raise InvalidInput(
                "a host certificate needs at least one principal; pass the server's DNS "
                "names and addresses"
            )
        if len(self.principals) > _MAX_PRINCIPALS:
            raise InvalidInput(
                f"a host certificate takes at most {_MAX_PRINCIPALS} principals, "
                f"not {len(self.principals)}"
            )
        for principal in self.principals:
            check_host_principal(principal)
        if len(set(self.principals)) != len(self.principals):
            raise InvalidInput("host principals are repeated; list each name or address once")
        check_ttl(self.ttl_seconds, HOST_MAX_TTL_SECONDS, "the host certificate maximum")

    @property
    def key_id(self) -> str:
        """Return the key id clients see: the host's name and server id."""
        return f"host={self.host_name} server={self.server_id}"


def sign_user_certificate(
    ca_key: ed25519.Ed25519PrivateKey,
    request: UserCertificateRequest,
    serial: int,
    now: dt.datetime,
) -> SignedSSHCertificate:
    """Check `request` and return a user certificate for its account, valid from now - 1 min."""
    request.check()
    builder = SSHCertificateBuilder().type(SSHCertificateType.USER)
    for name in request.extensions():
        builder = builder.add_extension(name.encode(), b"")
    source_address = _source_address_option(request.source_addresses)
    if source_address:
        builder = builder.add_critical_option(b"source-address", source_address.encode())
    return _sign(
        builder,
        ca_key,
        subject=request.subject_key,
        key_id=request.key_id,
        principals=(request.account,),
        ttl_seconds=request.ttl_seconds,
        serial=serial,
        now=now,
    )


def sign_host_certificate(
    ca_key: ed25519.Ed25519PrivateKey,
    request: HostCertificateRequest,
    serial: int,
    now: dt.datetime,
) -> SignedSSHCertificate:
    """Check `request` and return a host certificate for its names, valid from now - 1 min."""
    request.check()
    return _sign(
        SSHCertificateBuilder().type(SSHCertificateType.HOST),
        ca_key,
        subject=request.subject_key,
        key_id=request.key_id,
        principals=request.principals,
        ttl_seconds=request.ttl_seconds,
        serial=serial,
        now=now,
    )


def parse_public_key(text: str) -> SubjectPublicKey:
    """Return the key of an OpenSSH public key line; refuse weak, odd or unparsable keys."""
    line = text.strip()
    if not line:
        raise InvalidInput("public key is empty; pass one line from a .pub file")
    if len(line) > _MAX_KEY_TEXT or not line.isascii() or "\n" in line or "\r" in line:
        raise InvalidInput(
            "public key is not one OpenSSH public key line; pass one line from a .pub file"
        )
    key_type = line.split(maxsplit=1)[0]
    # cryptography silently accepts a certificate here and returns the key inside it.
    if key_type.endswith(_CERT_SUFFIX):
        raise InvalidInput(
            "a certificate was given where a public key is needed; pass the .pub key, "
            "not the -cert.pub file"
        )
    if key_type == "ssh-dss":
        raise InvalidInput("DSA keys are not accepted; use an Ed25519 key (ssh-keygen -t ed25519)")
    try:
        key = serialization.load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"public key of type {key_type[:64]!r} cannot be parsed; pass an OpenSSH Ed25519, "
            "ECDSA (P-256/384/521) or RSA (>= 2048 bits) public key line"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidInput(
                f"RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits, "
                "or an Ed25519 key (ssh-keygen -t ed25519)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        # cryptography only loads nistp256/384/521 curves for SSH.
        return key
    raise InvalidInput("DSA keys are not accepted; use an Ed25519 key (ssh-keygen -t ed25519)")


def ssh_fingerprint(public_key: SubjectPublicKey | ed25519.Ed25519PrivateKey) -> str:
    """Return the key's fingerprint as ssh-keygen -l prints it ("SHA256:" + unpadded base64)."""
    if isinstance(public_key, ed25519.Ed25519PrivateKey):
        public_key = public_key.public_key()
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).rstrip(b"=")
    return "SHA256:" + digest.decode("ascii")


@functools.lru_cache(maxsize=256)
def _ca_fingerprint(ca_key: ed25519.Ed25519PrivateKey) -> str:
    # Keyed by the key object: the CA keeps its unsealed keys, so this is computed once.
    return ssh_fingerprint(ca_key)


def _sign(
    builder: SSHCertificateBuilder,
    ca_key: ed25519.Ed25519PrivateKey,
    *,
    subject: SubjectPublicKey,
    key_id: str,
    principals: tuple[str, ...],
    ttl_seconds: int,
    serial: int,
    now: dt.datetime,
) -> SignedSSHCertificate:
    """Fill in the parts user and host certificates share, sign, and describe the result."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if not 0 <= serial < 2**64:
        raise InvalidInput(f"serial {serial} is out of range; it must fit in 64 unsigned bits")
    issued = int(now.timestamp())
    valid_after = issued - CLOCK_SKEW_SECONDS
    valid_before = issued + ttl_seconds
    certificate = (
        builder.public_key(subject)
        .serial(serial)
        .key_id(key_id.encode())
        .valid_principals([p.encode() for p in principals])
        .valid_after(valid_after)
        .valid_before(valid_before)
        .sign(ca_key)
    )
    return SignedSSHCertificate(
        certificate=certificate.public_bytes().decode("ascii"),
        serial=serial,
        key_id=key_id,
        principals=principals,
        valid_after=dt.datetime.fromtimestamp(valid_after, dt.UTC),
        valid_before=dt.datetime.fromtimestamp(valid_before, dt.UTC),
        ca_fingerprint=_ca_fingerprint(ca_key),
        subject_fingerprint=ssh_fingerprint(subject),
    )


def _check_key_id_field(field: str, value: str) -> None:
    """Refuse a key id field that is empty or could be confused with another field."""
    if not _KEY_ID_FIELD.fullmatch(value):
        raise InvalidInput(
            f"{field} {value!r} is not valid in a certificate key id: use 1-128 letters, "
            "digits and . _ @ : + -"
        )


def _source_address_option(cidrs: tuple[str, ...]) -> str:
    """Return the source-address option value for `cidrs` ("" for none); refuse bad CIDRs."""
    if len(cidrs) > _MAX_SOURCE_ADDRESSES:
        raise InvalidInput(
            f"at most {_MAX_SOURCE_ADDRESSES} source addresses are allowed, not {len(cidrs)}"
        )
    networks: list[str] = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            raise InvalidInput(
                f"source address {cidr!r} is not a CIDR; use e.g. 203.0.113.7/32 or "
                "10.0.0.0/8 with no host bits set"
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    return ",".join(networks)
