"""Talk to a server's broker: check who it is, then RequestAccess and ReleaseAccess over mTLS.

The broker must present a certificate that chains to its project's X.509 CA *and*
carries the server's URI (`sft://T/P/servers/ID`). grpcio cannot check a URI SAN, so
one TLS handshake with Python's `ssl` comes first (our client certificate presented,
the project's CAs the only trust) and its leaf's URIs are compared; a mismatch is a
hard failure before any request is sent. The grpc channel then checks the chain and
the server's canonical name (a DNS name of the broker's certificate) on the
connection it really uses. Never logs or prints a password or private key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from cryptography import x509

from client.errors import ClientError
from client.rdp_cache import RDPRecord

if TYPE_CHECKING:
    from sft.broker.v1.broker_service_pb2_grpc import BrokerServiceStub

__all__ = [
    "BROKER_TIMEOUT_SECONDS",
    "BrokerAddress",
    "Grant",
    "broker_channel",
    "check_broker_identity",
    "describe_broker_failure",
    "os_reason",
    "release_access",
    "request_access",
]

BROKER_TIMEOUT_SECONDS = 15.0
#: Statuses whose message is the broker's reason for saying no (shown as it is).
_REFUSALS = frozenset(
    {
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "INVALID_ARGUMENT",
    }
)


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is dialed (maybe a local SSH forward) and how to name it to a person."""

    host: str
    port: int
    shown: str

    @property
    def target(self) -> str:
        """Return the grpc target, `host:port`."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Grant:
    """A broker's grant: the account to log in as and its one-time password (hidden in repr)."""

    grant_id: str
    account: str
    password: str = field(repr=False)
    expire_time: dt.datetime
    target: str


def _client_context(record: RDPRecord, certificate_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The name is checked below (the URI) and by grpc (the DNS name); the chain here.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=record.ca_bundle_pem)
    context.load_cert_chain(certificate_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context


def _named_by(certificate: x509.Certificate) -> tuple[list[str], str]:
    """Return (the certificate's URIs, words saying what it names) for a refusal message."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], "no server (it has no subjectAltName)"
    uris = [str(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier)]
    if uris:
        return uris, ", ".join(uris)
    dns = [str(name) for name in names.get_values_for_type(x509.DNSName)]
    return [], (", ".join(dns) + " (and no sft server URI)") if dns else "no sft server"


def _mitm(address: BrokerAddress, what: str) -> ClientError:
    return ClientError(
        f"the broker at {address.shown} {what}; possible man-in-the-middle; nothing was sent"
    )


async def check_broker_identity(
    address: BrokerAddress, record: RDPRecord, certificate_file: str, key_file: str
) -> None:
    """Handshake once with the broker and refuse it unless its certificate names `record`'s
    server (`broker_uri`) and chains to the project's CAs. Sends no request."""
    context = _client_context(record, certificate_file, key_file)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, ssl=context),
            BROKER_TIMEOUT_SECONDS,
        )
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or exc.reason or "unverifiable"
        raise _mitm(
            address,
            f"presented a certificate that project {record.project.rsplit('/', 1)[-1]}'s CA "
            f"did not issue ({why})",
        ) from None
    except TimeoutError:
        raise ClientError(
            f"the broker at {address.shown} did not answer in time",
            hint="check the network and that sftd runs its broker there",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ClientError(
            f"cannot reach the broker of {record.display_name} at {address.shown}: "
            f"{os_reason(exc)}",
            hint="check that sftd runs its broker there (`Broker` in sftd.yaml) and that "
            "its port is open",
        ) from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise _mitm(address, "presented no certificate")
        uris, named = _named_by(x509.load_der_x509_certificate(der))
        if record.broker_uri not in uris:
            raise _mitm(address, f"presented a certificate for {named}, not {record.display_name}")
    finally:
        # Drop the connection without a TLS shutdown: the broker (an HTTP/2 server) has
        # already sent its settings, and waiting for its close_notify would only stall.
        writer.transport.abort()


def os_reason(exc: BaseException) -> str:
    """Return why a connection failed, in a few lowercase words (no repeated address)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own strerror repeats the address
    return str(exc) or type(exc).__name__


def broker_channel(
    address: BrokerAddress, record: RDPRecord, private_key_pem: bytes
) -> grpc.aio.Channel:
    """Return an mTLS channel to the broker that checks its chain and the server's DNS name."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=record.ca_bundle_pem.encode(),
        private_key=private_key_pem,
        certificate_chain=record.certificate_pem.encode(),
    )
    # The broker's certificate names the server's canonical name (first of its DNS names),
    # not the address we dial (often a local SSH forward).
    name = record.canonical_name or record.hostname
    return grpc.aio.secure_channel(
        address.target, credentials, options=[("grpc.ssl_target_name_override", name)]
    )


def describe_broker_failure(error: Any, address: BrokerAddress, record: RDPRecord) -> ClientError:
    """Return the one line to show for a failed broker call."""
    status = getattr(error.code(), "name", str(error.code()))
    details = (error.details() or "").strip() or status.lower().replace("_", " ")
    server = record.display_name
    if status == "UNAVAILABLE":
        return ClientError(
            f"cannot reach the broker of {server} at {address.shown}: {details}",
            hint="check that sftd runs its broker there; try again",
        )
    if status == "DEADLINE_EXCEEDED":
        return ClientError(f"the broker of {server} at {address.shown} did not answer in time")
    if status in _REFUSALS:
        return ClientError(f"the broker of {server} refused: {details}")
    return ClientError(
        f"the broker of {server} at {address.shown} failed ({status}: {details})",
        hint="try again, and quote this line to the server's administrator if it persists",
    )


async def request_access(
    stub: BrokerServiceStub, address: BrokerAddress, record: RDPRecord
) -> Grant:
    """Ask the broker to enable our account with a one-time password; return the grant."""
    from sft.broker.v1 import broker_service_pb2

    try:
        reply = await stub.RequestAccess(
            broker_service_pb2.RequestAccessRequest(), timeout=BROKER_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        raise describe_broker_failure(error, address, record) from None
    grant = reply.grant
    return Grant(
        grant_id=grant.grant_id,
        account=grant.account_name or record.account,
        password=grant.password,
        expire_time=grant.expire_time.ToDatetime(tzinfo=dt.UTC),
        target=grant.target,
    )


async def release_access(stub: BrokerServiceStub, grant_id: str) -> None:
    """End the grant now (the account is disabled once its tunnels close). Raises AioRpcError."""
    from sft.broker.v1 import broker_service_pb2

    await stub.ReleaseAccess(
        broker_service_pb2.ReleaseAccessRequest(grant_id=grant_id),
        timeout=BROKER_TIMEOUT_SECONDS,
    )
