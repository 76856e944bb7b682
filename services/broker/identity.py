"""Who is calling the broker, read from the client certificate's subjectAltName URIs only.

The TLS handshake has already checked the chain to the project's CA; this module checks
the rest itself (defence in depth): clientAuth usage, validity now, and that every sft://
URI names this broker's project (and server, if it names one). Pure: no grpc, no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from runtime.cert_uris import SftUri, parse_sft_uri
from runtime.errors import InvalidInput, PermissionDenied, Unauthenticated

__all__ = [
    "BrokerIdentity",
    "Caller",
    "PeerIdentities",
    "broker_identity",
    "identify_caller",
]

# A URI that starts with this names an sft resource; other URIs in a SAN are ignored.
_SFT_PREFIX = "sft://"
_CACHE_SIZE = 256


@dataclass(frozen=True)
class BrokerIdentity:
    """The server this broker runs on, from its own certificate."""

    team: str
    project: str
    server: str

    def __str__(self) -> str:
        return f"teams/{self.team}/projects/{self.project}/servers/{self.server}"


@dataclass(frozen=True)
class Caller:
    """A client as its certificate names it: a user acting as one account of this project."""

    team: str
    project: str
    user: str
    account: str
    #: When the certificate that identified the caller stops being valid.
    not_after: dt.datetime

    @property
    def user_key(self) -> tuple[str, str, str]:
        """Return what identifies the person (for per-user limits and grant ownership)."""
        return (self.team, self.project, self.user)


def _sft_uris(cert: x509.Certificate) -> list[SftUri]:
    """Return the certificate's sft:// SAN URIs parsed; raise Unauthenticated if any is garbled."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthenticated(
            "the client certificate has no subjectAltName; use a certificate from `sft rdp`"
        ) from None
    uris: list[SftUri] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(_SFT_PREFIX):
            continue
        try:
            uris.append(parse_sft_uri(uri))
        except InvalidInput as error:
            raise Unauthenticated(f"the client certificate is garbled: {error.message}") from None
    return uris


def broker_identity(cert_pem: bytes) -> BrokerIdentity:
    """Return the server named by this broker's certificate (exactly one servers URI)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        uris = _sft_uris(cert)
    except (ValueError, Unauthenticated) as error:
        raise InvalidInput(f"the broker certificate cannot be read: {error}") from None
    servers = [uri for uri in uris if uri.kind == "servers"]
    if len(servers) != 1:
        raise InvalidInput(
            "the broker certificate must name exactly one sft://{team}/{project}/servers/{id}; "
            f"it names {len(servers)}"
        )
    return BrokerIdentity(servers[0].team, servers[0].project, servers[0].name)


@dataclass(frozen=True)
class _Parsed:
    """What a client certificate says, independent of the time it is checked at."""

    caller: Caller | None
    not_before: dt.datetime
    problem: Unauthenticated | PermissionDenied | None


def _parse(cert_pem: bytes, me: BrokerIdentity) -> _Parsed:
    """Return what `cert_pem` says about its holder, or the refusal it earns."""
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return _Parsed(None, epoch, Unauthenticated("the client certificate cannot be parsed"))
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in usage
    except x509.ExtensionNotFound:
        client_auth = False
    if not client_auth:
        problem = Unauthenticated(
            "the client certificate is not for client authentication (no clientAuth usage)"
        )
        return _Parsed(None, epoch, problem)
    try:
        uris = _sft_uris(cert)
    except Unauthenticated as error:
        return _Parsed(None, epoch, error)
    try:
        caller = _caller(uris, me, cert.not_valid_after_utc)
    except (Unauthenticated, PermissionDenied) as error:
        return _Parsed(None, epoch, error)
    return _Parsed(caller, cert.not_valid_before_utc, None)


def _caller(uris: list[SftUri], me: BrokerIdentity, not_after: dt.datetime) -> Caller:
    """Return the caller the URIs name; refuse missing, repeated or foreign names."""
    users = [uri for uri in uris if uri.kind == "users"]
    accounts = [uri for uri in uris if uri.kind == "accounts"]
    servers = [uri for uri in uris if uri.kind == "servers"]
    if len(users) != 1 or len(accounts) != 1 or len(servers) > 1:
        raise Unauthenticated(
            "the client certificate must name one user and one account (and at most one "
            "server) as sft:// URIs; get a certificate with `sft rdp`"
        )
    for uri in uris:
        if (uri.team, uri.project) != (me.team, me.project):
            raise PermissionDenied(
                f"the client certificate is for project {uri.team}/{uri.project}; this server "
                f"({me}) belongs to {me.team}/{me.project}"
            )
    if servers and servers[0].name != me.server:
        raise PermissionDenied(
            f"the client certificate is for server {servers[0].name!r}, not this one "
            f"({me.server!r}); get a certificate for this server"
        )
    return Caller(me.team, me.project, users[0].name, accounts[0].name, not_after)


def identify_caller(cert_pem: bytes | None, me: BrokerIdentity, now: dt.datetime) -> Caller:
    """Return the caller `cert_pem` (the peer's leaf certificate) names, checked at `now`."""
    return PeerIdentities(me).identify(cert_pem, now)


class PeerIdentities:
    """identify_caller with the parsing of recent certificates cached (one RDP client opens
    many tunnels with one certificate); validity is checked against `now` on every call."""

    def __init__(self, me: BrokerIdentity) -> None:
        self.me = me
        self._cache: OrderedDict[bytes, _Parsed] = OrderedDict()

    def identify(self, cert_pem: bytes | None, now: dt.datetime) -> Caller:
        """Return the caller, or raise Unauthenticated / PermissionDenied saying why not."""
        if not cert_pem:
            raise Unauthenticated("no client certificate; connect with the one `sft rdp` gets")
        parsed = self._cache.get(cert_pem)
        if parsed is None:
            parsed = _parse(cert_pem, self.me)
            self._cache[cert_pem] = parsed
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cert_pem)
        if parsed.problem is not None:
            raise parsed.problem
        assert parsed.caller is not None
        if now < parsed.not_before:
            raise Unauthenticated(
                f"the client certificate is not valid until {parsed.not_before.isoformat()}; "
                "check this machine's clock"
            )
        if now >= parsed.caller.not_after:
            raise Unauthenticated(
                f"the client certificate expired at {parsed.caller.not_after.isoformat()}; "
                "`sft rdp` gets a fresh one"
            )
        return parsed.caller
