"""The broker identity check, the mTLS channel and certificate renewal, against a real TLS
server and a small echoing BrokerService on loopback, with certificates made here.

The helpers (a throwaway project PKI and `EchoBroker`) are shared by the other
test_rdp_* files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from client.errors import ClientError
from client.rdp_broker import (
    BrokerAddress,
    broker_channel,
    check_broker_identity,
    release_access,
    request_access,
)
from client.rdp_cache import RDPCache, RDPRecord
from client.rdp_credentials import ensure_client_key
from client.rdp_link import BrokerLink
from sft.broker.v1 import broker_pb2, broker_service_pb2, broker_service_pb2_grpc

SERVER_URI = "sft://acme/win/servers/srv1"
SERVER = "teams/acme/projects/win/servers/srv1"
NOW = dt.datetime.now(dt.UTC)
PASSWORD = "one-time-Secret-" + "123456789"  # what the echo broker grants


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class ProjectCA:
    """A project's X.509 CA, made here."""

    name: str = "win"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    certificate: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        """Return the CA certificate, PEM."""
        return _pem(self.certificate)

    def issue(
        self,
        public_key: Any,
        *,
        dns: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        client: bool = False,
        not_after: dt.datetime | None = None,
    ) -> str:
        """Return a leaf for `public_key` (PEM) naming `dns`, `uris` and `ips`."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.UniformResourceIdentifier(uri) for uri in uris]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=1))
            .not_valid_after(not_after or NOW + dt.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _pem(builder.sign(self.key, hashes.SHA256()))

    def server_identity(self, **names: Any) -> tuple[bytes, bytes]:
        """Return (private key PEM, certificate PEM) of a broker naming `names`."""
        key = ec.generate_private_key(ec.SECP256R1())
        return _key_pem(key), self.issue(key.public_key(), **names).encode()


def client_record(
    cache: RDPCache, ca: ProjectCA, *, valid_for: float = 3600, **changes: Any
) -> RDPRecord:
    """Store (and return) a record with a client certificate for the cache's key, from `ca`."""
    key = ensure_client_key(cache)
    public = serialization.load_pem_public_key(key.public_pem.encode())
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(valid_for, 1))
    certificate = ca.issue(
        public,
        uris=("sft://acme/win/users/bob", "sft://acme/win/accounts/bob", SERVER_URI),
        client=True,
        not_after=not_after,
    )
    record = RDPRecord(
        server=SERVER,
        project="teams/acme/projects/win",
        canonical_name="win-1",
        hostname="win-1",
        address="127.0.0.1",
        broker_port=4421,
        broker_uri=SERVER_URI,
        ca_bundle_pem=ca.pem,
        account="bob",
        certificate_pem=certificate,
        serial=1,
        valid_after=NOW.timestamp() - 60,
        valid_before=dt.datetime.now(dt.UTC).timestamp() + valid_for,
        public_key_pem=key.public_pem,
    )._replace(**changes)
    cache.store(record, ["win-1"])
    return record


class EchoBroker(broker_service_pb2_grpc.BrokerServiceServicer):
    """A BrokerService whose tunnels echo: enough to test the client end. Knows one grant."""

    def __init__(self) -> None:
        self.grant_id = "grant-1"
        self.released: list[str] = []
        self.peer_serials: list[int] = []
        self.refuse_tunnels: grpc.StatusCode | None = None
        self.refuse_access: grpc.StatusCode | None = None

    def _note_peer(self, context: grpc.aio.ServicerContext) -> None:
        pem = context.auth_context().get("x509_pem_cert", [b""])[0]
        self.peer_serials.append(x509.load_pem_x509_certificate(pem).serial_number)

    async def RequestAccess(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._note_peer(context)
        if self.refuse_access is not None:
            await context.abort(self.refuse_access, "account 'bob' is not managed on this server")
        expire = Timestamp()
        expire.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
        return broker_service_pb2.RequestAccessResponse(
            grant=broker_pb2.AccessGrant(
                grant_id=self.grant_id,
                account_name="bob",
                password=PASSWORD,
                expire_time=expire,
                target="127.0.0.1:3389",
            )
        )

    async def ReleaseAccess(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.released.append(request.grant_id)
        return broker_service_pb2.ReleaseAccessResponse()

    async def Tunnel(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self._note_peer(context)
        first = await requests.__anext__()
        if self.refuse_tunnels is not None:
            await context.abort(self.refuse_tunnels, "the grant has ended")
        if first.open.grant_id != self.grant_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no grant {first.open.grant_id}")
        yield broker_service_pb2.TunnelResponse(opened=broker_pb2.TunnelOpened(tunnel_id="t1"))
        async for message in requests:
            yield broker_service_pb2.TunnelResponse(data=message.data)
        yield broker_service_pb2.TunnelResponse(close_write=broker_pb2.CloseWrite())


@dataclass
class RunningBroker:
    """An EchoBroker served with mutual TLS on 127.0.0.1."""

    servicer: EchoBroker
    port: int
    server: grpc.aio.Server

    def address(self) -> BrokerAddress:
        """Return where it listens."""
        return BrokerAddress("127.0.0.1", self.port, f"127.0.0.1:{self.port}")


async def start_echo_broker(ca: ProjectCA, identity: tuple[bytes, bytes]) -> RunningBroker:
    """Serve an EchoBroker with `identity`, requiring client certificates from `ca`."""
    server = grpc.aio.server()
    servicer = EchoBroker()
    broker_service_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [identity], root_certificates=ca.pem.encode(), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return RunningBroker(servicer, port, server)


@dataclass
class EchoWorld:
    """A project CA, a client's RDP cache, and an EchoBroker whose certificate names win-1."""

    ca: ProjectCA
    cache: RDPCache
    broker: RunningBroker


@contextlib.asynccontextmanager
async def echo_world(tmp_path: Path) -> AsyncIterator[EchoWorld]:
    """Start an EchoWorld; stop its broker afterwards."""
    ca = ProjectCA()
    cache = RDPCache(tmp_path)
    cache.ensure_directories()
    identity = ca.server_identity(
        dns=("win-1", "win-1.corp"), ips=("127.0.0.1",), uris=(SERVER_URI,)
    )
    broker = await start_echo_broker(ca, identity)
    try:
        yield EchoWorld(ca, cache, broker)
    finally:
        await broker.server.stop(0)


async def connected_link(
    cache: RDPCache, broker: RunningBroker, record: RDPRecord, **options: Any
) -> BrokerLink:
    """Return a BrokerLink to `broker` with the cache's key, connected (identity checked)."""
    private_pem = ensure_client_key(cache).private_pem
    link = BrokerLink(broker.address(), cache, private_pem, record, **options)
    await link.connect()
    return link


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[EchoWorld]:
    async with echo_world(tmp_path) as started:
        yield started


@pytest.fixture
def ca(world: EchoWorld) -> ProjectCA:
    return world.ca


@pytest.fixture
def cache(world: EchoWorld) -> RDPCache:
    return world.cache


@pytest.fixture
def broker(world: EchoWorld) -> RunningBroker:
    return world.broker


async def _check(cache: RDPCache, record: RDPRecord, address: BrokerAddress) -> None:
    await check_broker_identity(
        address, record, cache.certificate_file(record.server_id), cache.key_file
    )


async def test_the_right_broker_passes_and_grants_access_over_mtls(
    cache: RDPCache, ca: ProjectCA, broker: RunningBroker
) -> None:
    record = client_record(cache, ca)
    await _check(cache, record, broker.address())
    key = ensure_client_key(cache)
    channel = broker_channel(broker.address(), record, key.private_pem)
    try:
        stub = broker_service_pb2_grpc.BrokerServiceStub(channel)
        grant = await request_access(stub, broker.address(), record)
        assert (grant.grant_id, grant.account) == ("grant-1", "bob")
        assert "one-time" not in repr(grant)  # the password never shows in a repr
        await release_access(stub, grant.grant_id)
    finally:
        await channel.close()
    assert broker.servicer.released == ["grant-1"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            grpc.StatusCode.NOT_FOUND,
            "the broker of win-1 refused: account 'bob' is not managed on this server",
        ),
        (grpc.StatusCode.INTERNAL, "the broker of win-1 at 127.0.0.1:{port} failed (INTERNAL: "),
    ],
)
async def test_a_refused_request_for_access_is_one_line(
    cache: RDPCache, ca: ProjectCA, broker: RunningBroker, status: grpc.StatusCode, expected: str
) -> None:
    record = client_record(cache, ca)
    broker.servicer.refuse_access = status
    link = await connected_link(cache, broker, record)
    try:
        with pytest.raises(ClientError) as refused:
            await request_access(link.stub, broker.address(), record)
    finally:
        await link.close()
    assert refused.value.message.startswith(expected.format(port=broker.port))


async def test_a_broker_certificate_for_another_server_is_refused_before_anything_is_sent(
    cache: RDPCache, ca: ProjectCA
) -> None:
    other_uri = "sft://acme/win/servers/srv2"
    impostor = await start_echo_broker(
        ca, ca.server_identity(dns=("win-1",), ips=("127.0.0.1",), uris=(other_uri,))
    )
    try:
        record = client_record(cache, ca)
        with pytest.raises(ClientError) as refused:
            await _check(cache, record, impostor.address())
        message = refused.value.message
        assert f"presented a certificate for {other_uri}, not win-1" in message
        assert "possible man-in-the-middle; nothing was sent" in message
        assert impostor.servicer.peer_serials == []  # no call reached it
    finally:
        await impostor.server.stop(0)


async def test_a_broker_certificate_with_no_uri_is_refused(cache: RDPCache, ca: ProjectCA) -> None:
    bare = await start_echo_broker(ca, ca.server_identity(dns=("win-1",)))
    try:
        with pytest.raises(ClientError, match=r"for win-1 \(and no sft server URI\), not win-1"):
            await _check(cache, client_record(cache, ca), bare.address())
    finally:
        await bare.server.stop(0)


async def test_a_broker_from_another_ca_is_refused(cache: RDPCache, ca: ProjectCA) -> None:
    stranger = ProjectCA("elsewhere")
    foreign = await start_echo_broker(
        ca, stranger.server_identity(dns=("win-1",), uris=(SERVER_URI,))
    )
    try:
        with pytest.raises(ClientError) as refused:
            await _check(cache, client_record(cache, ca), foreign.address())
        assert "project win's CA did not issue" in refused.value.message
        assert "possible man-in-the-middle" in refused.value.message
    finally:
        await foreign.server.stop(0)


async def test_no_broker_listening_is_one_line_naming_the_address(
    cache: RDPCache, ca: ProjectCA, unused_tcp_port: int
) -> None:
    address = BrokerAddress("127.0.0.1", unused_tcp_port, f"10.1.2.3:{unused_tcp_port}")
    with pytest.raises(ClientError) as refused:
        await _check(cache, client_record(cache, ca), address)
    assert refused.value.message.startswith(
        f"cannot reach the broker of win-1 at 10.1.2.3:{unused_tcp_port}: connection refused"
    )


async def test_grpc_itself_checks_the_canonical_name_on_the_channel_it_uses(
    cache: RDPCache, ca: ProjectCA
) -> None:
    # The right URI, but not the server's canonical name: the pre-flight passes, grpc refuses.
    odd = await start_echo_broker(ca, ca.server_identity(dns=("not-win-1",), uris=(SERVER_URI,)))
    try:
        record = client_record(cache, ca)
        await _check(cache, record, odd.address())
        channel = broker_channel(odd.address(), record, ensure_client_key(cache).private_pem)
        try:
            with pytest.raises(ClientError, match="cannot reach the broker of win-1"):
                await request_access(
                    broker_service_pb2_grpc.BrokerServiceStub(channel), odd.address(), record
                )
        finally:
            await channel.close()
    finally:
        await odd.server.stop(0)


async def test_a_certificate_due_for_renewal_gets_a_new_channel_for_new_tunnels(
    cache: RDPCache, ca: ProjectCA, broker: RunningBroker
) -> None:
    old = client_record(cache, ca, valid_for=30)  # inside the renewal margin
    renewals: list[RDPRecord] = []

    async def renew(record: RDPRecord) -> RDPRecord:
        fresh = client_record(cache, ca, serial=2)
        renewals.append(fresh)
        return fresh

    warnings: list[str] = []
    link = await connected_link(cache, broker, old, renew=renew, warn=warnings.append)
    try:
        first = await link.lease()
        assert len(renewals) == 1 and link.record.serial == 2
        second = await link.lease()
        assert second.stub is first.stub and len(renewals) == 1  # renewed once
        first.release()
        second.release()
    finally:
        await link.close()
    assert warnings == []


async def test_a_failed_renewal_keeps_the_current_certificate_while_it_works(
    cache: RDPCache, ca: ProjectCA, broker: RunningBroker
) -> None:
    record = client_record(cache, ca, valid_for=30)

    async def refuse(record: RDPRecord) -> RDPRecord:
        raise ClientError("cannot reach the platform at https://x")

    warnings: list[str] = []
    link = await connected_link(cache, broker, record, renew=refuse, warn=warnings.append)
    try:
        (await link.lease()).release()
        assert len(warnings) == 1 and "cannot renew the client certificate" in warnings[0]
        expired = record._replace(valid_before=record.valid_before - 3600)
        link._current.record = expired  # type: ignore[union-attr]
        with pytest.raises(ClientError, match="has expired and cannot be renewed"):
            await link.lease()
    finally:
        await link.close()


def test_the_record_round_trips_through_json(cache: RDPCache, ca: ProjectCA) -> None:
    record = client_record(cache, ca)
    data = json.loads(Path(cache.record_file(record.server_id)).read_text())
    assert RDPRecord.from_json(data) == record
