"""Fill the RDP cache from the platform: a broker client certificate per server.

The team's EC P-256 key is made here and never leaves the machine: the platform gets
its public half (`IssueCredentials`, kind X509) and signs a short-lived certificate
naming the user, the account and the server. One writer at a time per team (a file
lock), and the cache is read again once the lock is held, so several `sft rdp`
started together sign one certificate. Never logs or prints a private key.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.commands.calls import explain_status
from client.errors import ClientError
from client.files import write_atomic
from client.rdp_cache import RDPCache, RDPRecord
from client.resolve import resolve_server
from client.ssh_cache import RENEW_BEFORE_SECONDS, Hop
from client.ssh_credentials import cache_lock

if TYPE_CHECKING:
    from client.session import Session
    from sft.auth.v1 import access_service_pb2

__all__ = ["ClientKey", "X509Fetcher", "ensure_client_key", "read_client_key", "record_from_reply"]

#: What to do when the platform refuses an X.509 credential, by status.
_REFUSAL_HINTS = {
    "PERMISSION_DENIED": "ask a team admin to grant you the server's project",
    "NOT_FOUND": "see the servers you can reach with `sft list-servers`",
}


class ClientKey:
    """The team's client key: the private half as PEM (for TLS) and the public half as PEM."""

    def __init__(self, private_pem: bytes, public_pem: str) -> None:
        self.private_pem = private_pem
        self.public_pem = public_pem


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _load(path: str) -> ClientKey | None:
    """Return the key in `path` if it is an EC P-256 private key, else None."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return None
    return ClientKey(data, _public_pem(key))


def ensure_client_key(cache: RDPCache) -> ClientKey:
    """Return the team's client key, making it (0600) when there is none or it is damaged.

    Call under the cache lock when it may have to be made.
    """
    existing = _load(cache.key_file)
    if existing is not None:
        return existing
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cache.ensure_directories()
    write_atomic(cache.key_file, private_pem)
    return ClientKey(private_pem, _public_pem(key))


def read_client_key(cache: RDPCache) -> ClientKey | None:
    """Return the team's client key if there is one (never makes one)."""
    return _load(cache.key_file) if os.path.isfile(cache.key_file) else None


class X509Fetcher:
    """Gets broker client certificates for the servers of one team, under its cache lock."""

    def __init__(self, session: Session, cache: RDPCache) -> None:
        self.session = session
        self.cache = cache

    async def record(self, name: str, *, project: str | None = None) -> RDPRecord:
        """Return a record for `name` whose certificate lasts a minute more, fetching if needed."""
        self.cache.ensure_directories()
        async with cache_lock(self.cache.lock_file):
            key = ensure_client_key(self.cache)
            cached = self.cache.lookup(name, key.public_pem, margin=RENEW_BEFORE_SECONDS)
            if cached is not None:
                return cached
            resource = name
            if not name.startswith("teams/"):  # a resource name: IssueCredentials checks it
                resource = (await resolve_server(self.session, name, project=project)).name
            record = await self._issue(resource, key)
            self.cache.store(record, [name])
            return record

    async def renew(self, record: RDPRecord) -> RDPRecord:
        """Return a record for the same server with a certificate good for a minute more."""
        return await self.record(record.server)

    async def _issue(self, resource: str, key: ClientKey) -> RDPRecord:
        from sft.auth.v1 import access_pb2, access_service_pb2, access_service_pb2_grpc

        stub = access_service_pb2_grpc.AccessServiceStub(self.session.channel())
        request = access_service_pb2.IssueCredentialsRequest(
            server=resource, kind=access_pb2.CREDENTIAL_KIND_X509, public_key_pem=key.public_pem
        )
        try:
            reply: access_service_pb2.IssueCredentialsResponse = await stub.IssueCredentials(
                request
            )
        except ClientError as exc:
            raise explain_status(exc, _REFUSAL_HINTS) from None
        return record_from_reply(reply, key.public_pem)


def record_from_reply(
    reply: access_service_pb2.IssueCredentialsResponse, public_key_pem: str
) -> RDPRecord:
    """Return the cache record of an IssueCredentials (X509) answer; refuse an unusable one."""
    connection = reply.connection
    if not connection.broker_port:
        raise ClientError(
            f"server {connection.canonical_name or connection.server} runs no broker",
            hint="RDP needs `Broker: true` in its sftd.yaml; ask its administrator",
        )
    if not (reply.certificate and connection.x509_ca_bundle_pem and connection.broker_uri):
        raise ClientError(
            "the platform's answer lacks the certificate, CA bundle or broker URI",
            hint="the platform is older than this sft; upgrade the platform",
        )
    return RDPRecord(
        server=connection.server,
        project=connection.project,
        canonical_name=connection.canonical_name,
        hostname=connection.hostname,
        address=connection.address,
        broker_port=connection.broker_port,
        broker_uri=connection.broker_uri,
        ca_bundle_pem=connection.x509_ca_bundle_pem,
        account=reply.account_name,
        certificate_pem=reply.certificate,
        serial=reply.serial,
        valid_after=float(reply.valid_after.ToSeconds()),
        valid_before=float(reply.valid_before.ToSeconds()),
        public_key_pem=public_key_pem,
        bastions=tuple(
            Hop(address=hop.address, ssh_port=hop.ssh_port or 22, server=hop.server)
            for hop in connection.bastions
        ),
    )
