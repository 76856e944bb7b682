"""carry_connection against a real `sft-broker` process and a real TCP echo target."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from runtime.errors import InvalidInput, NotFound, PermissionDenied, Unavailable
from runtime.tunnels import (
    MAX_FRAME_BYTES,
    abort_writer,
    carry_connection,
    check_frame,
    tunnel_error,
)
from sft.broker.v1 import broker_service_pb2, broker_service_pb2_grpc
from tests.support.broker import (
    AgentControlStub,
    BrokerProcess,
    TestPKI,
    broker_channel,
    serve_agent_control_stub,
    start_broker,
)


class EchoTarget:
    """An echo server on its own thread and loop; remembers how connections ended."""

    def __init__(self) -> None:
        self.endings: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                self.endings.append("eof")
            except ConnectionResetError:
                self.endings.append("reset")
            writer.close()

        async def start() -> None:
            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def target() -> Iterator[EchoTarget]:
    echo = EchoTarget()
    yield echo
    echo.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentControlStub]:
    with serve_agent_control_stub(tmp_path_factory.mktemp("agent") / "c.sock") as stub:
        yield stub


@pytest.fixture(scope="module")
def broker(
    pki: TestPKI,
    target: EchoTarget,
    agent: AgentControlStub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerProcess]:
    tls_dir = pki.write_tls_dir(tmp_path_factory.mktemp("broker") / "tls")
    with start_broker(tls_dir, agent.socket_path, f"127.0.0.1:{target.port}") as process:
        yield process


@pytest.fixture
async def stub(
    broker: BrokerProcess, pki: TestPKI
) -> AsyncIterator[broker_service_pb2_grpc.BrokerServiceStub]:
    channel = broker_channel(broker.port, pki, pki.client_cert())
    yield broker_service_pb2_grpc.BrokerServiceStub(channel)
    await channel.close()


async def _grant(stub: broker_service_pb2_grpc.BrokerServiceStub) -> str:
    reply = await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
    return str(reply.grant.grant_id)


async def _local_pair(
    stub: broker_service_pb2_grpc.BrokerServiceStub, grant_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Future[BaseException | None]]:
    """Return a local connection carried by carry_connection, and its outcome."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await carry_connection(stub, grant_id, reader, writer)
            outcome.set_result(None)
        except Exception as error:
            outcome.set_result(error)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    server.close()
    return reader, writer, outcome


def test_frames_are_1_to_65536_bytes() -> None:
    check_frame(b"x")
    check_frame(b"x" * MAX_FRAME_BYTES)
    with pytest.raises(InvalidInput, match="empty"):
        check_frame(b"")
    with pytest.raises(InvalidInput, match="65537 bytes"):
        check_frame(b"x" * (MAX_FRAME_BYTES + 1))


def test_broker_statuses_become_domain_errors() -> None:
    assert isinstance(tunnel_error(grpc.StatusCode.NOT_FOUND, "no grant"), NotFound)
    assert isinstance(tunnel_error(grpc.StatusCode.PERMISSION_DENIED, None), PermissionDenied)
    odd = tunnel_error(grpc.StatusCode.INTERNAL, "boom")
    assert isinstance(odd, Unavailable) and "INTERNAL" in odd.message


async def test_bytes_flow_both_ways_and_half_close_reaches_the_target(
    stub: broker_service_pb2_grpc.BrokerServiceStub, target: EchoTarget
) -> None:
    reader, writer, outcome = await _local_pair(stub, await _grant(stub))
    payload = bytes(range(256)) * 1024  # several frames
    writer.write(payload)
    writer.write_eof()
    assert await reader.read() == payload  # the echo, then EOF after the target's close
    assert await asyncio.wait_for(outcome, 10) is None
    assert target.endings[-1] == "eof"
    writer.close()


async def test_a_refused_tunnel_raises_and_closes_the_local_connection(
    stub: broker_service_pb2_grpc.BrokerServiceStub,
) -> None:
    reader, writer, outcome = await _local_pair(stub, "no-such-grant")
    error = await asyncio.wait_for(outcome, 10)
    assert isinstance(error, NotFound)
    with pytest.raises(ConnectionResetError):
        await reader.read()
    writer.close()


async def test_bytes_sent_at_once_never_hide_the_refusal(
    stub: broker_service_pb2_grpc.BrokerServiceStub,
) -> None:
    # RDP clients speak first: bytes written while the broker refuses must not turn
    # the refusal into grpc's INTERNAL (it did in about 1 of 10 before the fix).
    for _ in range(30):
        _reader, writer, outcome = await _local_pair(stub, "no-such-grant")
        while not outcome.done():
            writer.write(b"\x03\x00\x00\x13" * 1024)
            with contextlib.suppress(OSError):
                await writer.drain()
            await asyncio.sleep(0)
        assert isinstance(outcome.result(), NotFound), outcome.result()
        writer.close()


async def test_a_local_reset_aborts_the_tunnel_quietly(
    stub: broker_service_pb2_grpc.BrokerServiceStub, target: EchoTarget
) -> None:
    reader, writer, outcome = await _local_pair(stub, await _grant(stub))
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    endings = len(target.endings)
    abort_writer(writer)
    assert await asyncio.wait_for(outcome, 10) is None
    async with asyncio.timeout(5):
        while len(target.endings) == endings:  # noqa: ASYNC110  (another thread's list)
            await asyncio.sleep(0.01)
    assert target.endings[-1] == "reset"


async def test_a_grant_serves_many_concurrent_connections(
    stub: broker_service_pb2_grpc.BrokerServiceStub,
) -> None:
    grant_id = await _grant(stub)
    pairs = [await _local_pair(stub, grant_id) for _ in range(20)]
    for index, (_, writer, _) in enumerate(pairs):
        writer.write(f"connection {index}".encode())
        writer.write_eof()
    for index, (reader, writer, outcome) in enumerate(pairs):
        assert await reader.read() == f"connection {index}".encode()
        assert await asyncio.wait_for(outcome, 10) is None
        writer.close()
