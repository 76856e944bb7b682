"""Tunnel data flow through the real gRPC server to real TCP targets: half-close, abort,
idle timeout, flow control, and a client certificate expiring under an open tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from runtime.errors import Unavailable
from runtime.tunnels import abort_writer, carry_connection
from services.broker.tests.conftest import BrokerWorld, Handler
from sft.broker.v1 import broker_pb2, broker_service_pb2

Request = broker_service_pb2.TunnelRequest


def _open(grant_id: str) -> Request:
    return Request(open=broker_pb2.TunnelOpen(grant_id=grant_id))


def _data(payload: bytes) -> Request:
    return Request(data=broker_pb2.Frame(payload=payload))


async def _opened(world: BrokerWorld, stub: Any = None) -> Any:
    """Return a Tunnel call that the broker has opened."""
    stub = stub or world.stub()
    call = stub.Tunnel()
    await call.write(_open(await world.grant(stub)))
    assert (await call.read()).HasField("opened")
    return call


async def _until(condition: Callable[[], bool], timeout_seconds: float = 5) -> None:
    """Wait until `condition()` holds (fail on timeout)."""
    async with asyncio.timeout(timeout_seconds):
        while not condition():  # noqa: ASYNC110  (the condition has no event to wait on)
            await asyncio.sleep(0.01)


class Recorder:
    """A target that records what it read and how its connection ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.ended = asyncio.Event()
        self.how = ""
        self.writer: asyncio.StreamWriter | None = None

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while data := await reader.read(65536):
                self.received += data
            self.how = "eof"
        except ConnectionResetError:
            self.how = "reset"
        self.ended.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def target_handler(request: pytest.FixtureRequest, recorder: Recorder) -> Handler:
    return getattr(request, "param", None) or recorder


async def test_client_half_close_shuts_the_targets_read_side_and_data_still_flows_back(
    world: BrokerWorld, recorder: Recorder
) -> None:
    call = await _opened(world)
    await call.write(_data(b"request"))
    await call.done_writing()
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert (recorder.how, bytes(recorder.received)) == ("eof", b"request")
    assert recorder.writer is not None
    recorder.writer.write(b"answer after the client's FIN")
    await recorder.writer.drain()
    response = await call.read()
    assert response.data.payload == b"answer after the client's FIN"
    recorder.writer.close()
    assert (await call.read()).HasField("close_write")
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def _half_closing_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say hello, half-close, then echo what still arrives in one reply at EOF."""
    writer.write(b"hello")
    writer.write_eof()
    await writer.drain()
    # Still reading after its own FIN: the late bytes arrive, then the client's EOF.
    _LATE.append(await reader.read())
    writer.close()


_LATE: list[bytes] = []


@pytest.mark.parametrize("target_handler", [_half_closing_target], indirect=True)
async def test_target_half_close_sends_one_close_write_and_the_client_may_still_send(
    world: BrokerWorld,
) -> None:
    call = await _opened(world)
    assert (await call.read()).data.payload == b"hello"
    assert (await call.read()).HasField("close_write")
    await call.write(_data(b"late bytes"))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    assert _LATE == [b"late bytes"]


async def _closing_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say goodbye and close both ways at once, as an RDP server ends a session."""
    writer.write(b"goodbye")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("target_handler", [_closing_target], indirect=True)
async def test_client_bytes_and_eof_after_the_target_closed_end_the_call_cleanly(
    world: BrokerWorld,
) -> None:
    # The client sends after the target has gone (its kernel answers with a reset) and
    # then half-closes: there is no write side left to shut, which must not be a crash.
    call = await _opened(world)
    assert (await call.read()).data.payload == b"goodbye"
    assert (await call.read()).HasField("close_write")
    await call.write(_data(b"late"))  # the target's kernel answers with a reset
    await asyncio.sleep(0.2)
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.done_writing()
    assert await call.code() in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)


async def test_client_cancel_resets_the_target_connection(
    world: BrokerWorld, recorder: Recorder
) -> None:
    call = await _opened(world)
    await call.write(_data(b"partial"))
    await _until(lambda: len(recorder.received) >= 7)
    call.cancel()
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert recorder.how == "reset"
    await asyncio.sleep(0.1)
    assert world.server.limits.open == 0


async def _resetting_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    abort_writer(writer)


@pytest.mark.parametrize("target_handler", [_resetting_target], indirect=True)
async def test_target_reset_aborts_the_tunnel_and_resets_the_local_connection(
    world: BrokerWorld,
) -> None:
    stub = world.stub()
    grant_id = await world.grant(stub)
    outcome: list[BaseException | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await carry_connection(stub, grant_id, reader, writer)
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    local = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*local.sockets[0].getsockname()[:2])
    writer.write(b"x")
    await writer.drain()
    with pytest.raises(ConnectionResetError):
        while await reader.read(65536):
            pass
    local.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Unavailable)
    assert "reset" in str(outcome[0])


@pytest.mark.parametrize(
    "broker_options", [{"idle_timeout_seconds": 0.3}], indirect=True, ids=["idle-0.3s"]
)
async def test_idle_tunnel_is_closed(world: BrokerWorld, recorder: Recorder) -> None:
    call = await _opened(world)
    await call.write(_data(b"x"))
    await asyncio.sleep(0.2)
    await call.write(_data(b"y"))  # activity pushes the deadline out
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "idle timeout" in (ended.value.details() or "")
    await asyncio.wait_for(recorder.ended.wait(), 5)
    assert bytes(recorder.received) == b"xy"


async def _stalled_target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never read."""
    await asyncio.sleep(30)


@pytest.mark.parametrize("target_handler", [_stalled_target], indirect=True)
async def test_a_target_that_stops_reading_stops_the_client_writer(world: BrokerWorld) -> None:
    call = await _opened(world)
    frame = _data(b"z" * 65536)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            await call.write(frame)
            sent += 65536

    writing = asyncio.create_task(flood())
    await asyncio.sleep(1.5)
    stalled_at = sent
    await asyncio.sleep(0.5)
    writing.cancel()
    call.cancel()
    # Socket buffers plus gRPC's flow-control windows: megabytes, never the whole flood.
    assert stalled_at == sent
    assert sent < 64 * 1024 * 1024


async def test_a_tunnel_outlives_the_client_certificate_that_opened_it(
    world: BrokerWorld, recorder: Recorder
) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    stub = world.stub(world.pki.client_cert(not_after=expires))
    call = stub.Tunnel()
    await call.write(_open(await world.grant(stub)))
    assert (await call.read()).HasField("opened")
    await asyncio.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
    await call.write(_data(b"still here"))
    await _until(lambda: bytes(recorder.received) == b"still here")
    call.cancel()
    # New calls with the expired certificate are refused.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
