"""The server runtime through a real TLS gRPC server on loopback: errors, ids, metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.errors import Conflict, InvalidInput, NotFound
from runtime.identity import CallerKind, Identity, current_identity
from runtime.server import Endpoint, ListenError, PlatformServer, ServiceBinding
from runtime.tls import ensure_dev_pki
from tests.support.ports import free_port

SERVICE = "sft.test.v1.ProbeService"


def _identity(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return str(current_identity.get()).encode()


async def _fail_with(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    kind = request.decode()
    if kind == "invalid":
        raise InvalidInput("ttl_seconds must be at most 86400; ask for a shorter certificate")
    if kind == "missing":
        raise NotFound("project 'web' does not exist")
    if kind == "conflict":
        raise Conflict("team 'acme' already exists")
    raise RuntimeError("secret internal detail")


async def _count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for index in range(int(request.decode())):
        yield str(index).encode()
    raise NotFound("stream ran out")


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Fail": grpc.unary_unary_rpc_method_handler(_fail_with),
        "Whoami": grpc.unary_unary_rpc_method_handler(_identity),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


async def _authenticate(metadata: object) -> Identity:
    return Identity(CallerKind.USER, "alice", "acme")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[PlatformServer, bytes, int]]:
    tls = ensure_dev_pki(tmp_path / "tls", ["127.0.0.1", "localhost"])
    metrics_port = free_port()
    platform = PlatformServer(
        [ServiceBinding("probe", (SERVICE,), _register)],
        Endpoint("127.0.0.1", free_port()),
        tls,
        authenticate=_authenticate,
        metrics_listen=Endpoint("127.0.0.1", metrics_port),
        grace_seconds=1,
    )
    await platform.start()
    try:
        yield platform, tls.ca_file.read_bytes(), metrics_port
    finally:
        await platform.stop()


def _channel(port: int, ca: bytes) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        (
            "invalid",
            grpc.StatusCode.INVALID_ARGUMENT,
            "ttl_seconds must be at most 86400; ask for a shorter certificate",
        ),
        ("missing", grpc.StatusCode.NOT_FOUND, "project 'web' does not exist"),
        ("conflict", grpc.StatusCode.ALREADY_EXISTS, "team 'acme' already exists"),
    ],
)
async def test_domain_errors_become_status_codes_with_their_message(
    server: tuple[PlatformServer, bytes, int], kind: str, code: grpc.StatusCode, message: str
) -> None:
    platform, ca, _ = server
    async with _channel(platform.port, ca) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Fail")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(kind.encode())
    assert caught.value.code() == code
    assert caught.value.details() == message


async def test_unexpected_error_is_internal_with_request_id_and_no_detail(
    server: tuple[PlatformServer, bytes, int],
) -> None:
    platform, ca, _ = server
    async with _channel(platform.port, ca) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Fail")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"boom", metadata=(("x-request-id", "req-123"),))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "req-123" in (caught.value.details() or "")
    assert "secret internal detail" not in (caught.value.details() or "")
    assert "Traceback" not in (caught.value.details() or "")
    assert ("x-request-id", "req-123") in tuple(caught.value.trailing_metadata() or ())


async def test_caller_identity_is_bound_per_call(server: tuple[PlatformServer, bytes, int]) -> None:
    platform, ca, _ = server
    async with _channel(platform.port, ca) as channel:
        reply = await channel.unary_unary(f"/{SERVICE}/Whoami")(b"")
    assert reply == b"user:acme/alice"


async def test_streaming_errors_are_mapped_after_the_messages(
    server: tuple[PlatformServer, bytes, int],
) -> None:
    platform, ca, _ = server
    async with _channel(platform.port, ca) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Count")(b"3")
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for item in call:
                received.append(item)
    assert received == [b"0", b"1", b"2"]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_reports_each_service_and_metrics_count_calls(
    server: tuple[PlatformServer, bytes, int],
) -> None:
    platform, ca, metrics_port = server
    async with _channel(platform.port, ca) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="sft.nope.v1.Nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        await channel.unary_unary(f"/{SERVICE}/Whoami")(b"")
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    )
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Whoami",'
        f'grpc_service="{SERVICE}",grpc_type="unary"}}'
    ) in body
    assert "grpc_server_handling_seconds_bucket" in body


async def test_a_second_server_on_the_same_port_is_refused(
    server: tuple[PlatformServer, bytes, int], tmp_path: Path
) -> None:
    platform, _, _ = server
    tls = ensure_dev_pki(tmp_path / "tls2", ["127.0.0.1"])
    second = PlatformServer([], Endpoint("127.0.0.1", platform.port), tls)
    with pytest.raises(ListenError, match="already in use"):
        await second.start()
