"""The local listener of `sft rdp`: every connection is one Tunnel; refusals are one line.

Against the echoing BrokerService of test_rdp_broker (real mTLS gRPC on loopback) and
real local TCP connections.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from client.rdp_cache import RDPRecord
from client.rdp_tunnel import TunnelListener, refusal_line
from client.tests.test_rdp_broker import EchoWorld, client_record, connected_link, echo_world
from runtime.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    received = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return received


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[EchoWorld]:
    async with echo_world(tmp_path) as started:
        yield started


async def _refused(port: int) -> bool:
    """Connect and send nothing; return whether the connection was reset.

    (Nothing is sent: a frame racing the broker's refusal turns grpc's status into
    INTERNAL, a known grpc.aio behaviour noted in the report on runtime.tunnels.)
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return True
    finally:
        writer.close()
    return False


async def test_bytes_flow_both_ways_on_several_connections_at_once(world: EchoWorld) -> None:
    cache, ca, broker = world.cache, world.ca, world.broker
    link = await connected_link(cache, broker, client_record(cache, ca))
    reports: list[str] = []
    listener = TunnelListener(link, broker.servicer.grant_id, report=reports.append)
    port = await listener.start()
    try:
        payloads = [bytes([n]) * (200_000 + n) for n in range(5)]
        echoed = await asyncio.gather(*(_exchange(port, payload) for payload in payloads))
        assert echoed == payloads
        assert listener.accepted == 5 and reports == []
    finally:
        await listener.close()
        await link.close()


async def test_a_refused_tunnel_closes_that_connection_and_says_what_to_do(
    world: EchoWorld,
) -> None:
    cache, ca, broker = world.cache, world.ca, world.broker
    link = await connected_link(cache, broker, client_record(cache, ca))
    reports: list[str] = []
    listener = TunnelListener(
        link, broker.servicer.grant_id, report=reports.append, again="sft rdp win-1"
    )
    port = await listener.start()
    try:
        broker.servicer.refuse_tunnels = grpc.StatusCode.FAILED_PRECONDITION
        assert await _refused(port)
        assert reports == [
            "the broker refused a new connection: the grant has ended; run `sft rdp win-1` "
            "for a new grant"
        ]
        # The listener keeps serving once the broker takes tunnels again.
        broker.servicer.refuse_tunnels = None
        assert await _exchange(port, b"again") == b"again"
    finally:
        await listener.close()
        await link.close()


async def test_an_unknown_grant_is_refused_with_one_line(world: EchoWorld) -> None:
    cache, ca, broker = world.cache, world.ca, world.broker
    link = await connected_link(cache, broker, client_record(cache, ca))
    reports: list[str] = []
    listener = TunnelListener(link, "forgotten", report=reports.append)
    port = await listener.start()
    try:
        assert await _refused(port)
        (line,) = reports
        assert "no longer knows this grant (no grant forgotten)" in line
    finally:
        await listener.close()
        await link.close()


async def test_close_ends_open_tunnels_and_stops_listening(world: EchoWorld) -> None:
    cache, ca, broker = world.cache, world.ca, world.broker
    link = await connected_link(cache, broker, client_record(cache, ca))
    listener = TunnelListener(link, broker.servicer.grant_id, report=lambda line: None)
    port = await listener.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    assert listener.active == 1
    await asyncio.wait_for(listener.close(), 10)
    assert listener.active == 0
    with pytest.raises(ConnectionResetError):  # the tunnel was ended, unsent bytes dropped
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await link.close()


async def test_new_tunnels_after_renewal_use_the_new_certificate_while_old_ones_run_on(
    world: EchoWorld,
) -> None:
    cache, ca, broker = world.cache, world.ca, world.broker
    first = client_record(cache, ca)
    renewed: list[RDPRecord] = []

    async def renew(record: RDPRecord) -> RDPRecord:
        renewed.append(client_record(cache, ca))
        return renewed[-1]

    link = await connected_link(cache, broker, first, renew=renew)
    listener = TunnelListener(link, broker.servicer.grant_id, report=lambda line: None)
    port = await listener.start()
    try:
        old_reader, old_writer = await asyncio.open_connection("127.0.0.1", port)
        old_writer.write(b"old")
        assert await asyncio.wait_for(old_reader.readexactly(3), 10) == b"old"
        # The certificate enters its renewal margin: the next tunnel renews first.
        link._current.record = first._replace(valid_before=dt.datetime.now(dt.UTC).timestamp() + 10)  # type: ignore[union-attr]
        assert await _exchange(port, b"new") == b"new"
        assert len(renewed) == 1
        serials = broker.servicer.peer_serials
        certificate = x509.load_pem_x509_certificate(renewed[0].certificate_pem.encode())
        assert serials[-1] == certificate.serial_number and serials[0] != serials[-1]
        # The tunnel opened before the renewal still carries bytes.
        old_writer.write(b"still")
        assert await asyncio.wait_for(old_reader.readexactly(5), 10) == b"still"
        old_writer.close()
    finally:
        await listener.close()
        await link.close()


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (FailedPrecondition("grant ended"), "run `sft rdp` for a new grant"),
        (NotFound("no grant g"), "it may have restarted"),
        (ResourceExhausted("64 tunnels"), "close other sessions or try later"),
        (Unavailable("target reset"), "ended with an error: target reset"),
    ],
)
def test_each_refusal_says_what_to_do(error: Exception, words: str) -> None:
    assert words in refusal_line(error, "sft rdp")  # type: ignore[arg-type]
