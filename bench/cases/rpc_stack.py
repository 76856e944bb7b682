"""What the shared server stack costs: interceptor, metrics and logging context per call.

Candidate: grpc.health.v1 Check through runtime.server.PlatformServer (TLS, the
ServerCallInterceptor, Prometheus metrics). Baseline: the same health servicer on a
bare grpc.aio TLS server. Both servers run in their own process, one at a time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.harness import LoadStats, Result, case, closed_loop

Kind = Literal["sft", "bare"]
CONCURRENCY = 16


async def _serve(kind: Kind, tls_dir: str, ports: multiprocessing.Queue[int], stop: Event) -> None:
    from runtime.logging import configure_logging
    from runtime.server import Endpoint, PlatformServer
    from runtime.tls import ensure_dev_pki

    configure_logging("warning", "json")
    tls = ensure_dev_pki(Path(tls_dir), ["127.0.0.1"])
    if kind == "sft":
        platform = PlatformServer([], Endpoint("127.0.0.1", 0), tls, grace_seconds=0)
        await platform.start()
        ports.put(platform.port)
        await asyncio.to_thread(stop.wait)
        await platform.stop()
        return
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    cert, key, ca = tls.read()
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)], root_certificates=ca)
    )
    await server.start()
    ports.put(port)
    await asyncio.to_thread(stop.wait)
    await server.stop(0)


def _child(kind: Kind, tls_dir: str, ports: multiprocessing.Queue[int], stop: Event) -> None:
    asyncio.run(_serve(kind, tls_dir, ports, stop))


async def _measure(kind: Kind, tls_dir: str, seconds: float) -> LoadStats:
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(target=_child, args=(kind, tls_dir, ports, stop), daemon=True)
    process.start()
    try:
        port = await asyncio.to_thread(ports.get, True, 30)
        ca = (Path(tls_dir) / "ca.pem").read_bytes()
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            return await closed_loop(lambda: stub.Check(request), CONCURRENCY, seconds)
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.kill()


@case("rpc_stack", "unary RPC rate through the sft server stack vs a bare grpc.aio server")
async def rpc_stack(quick: bool) -> list[Result]:
    """Measure both servers back to back and compare calls/s and p99 latency."""
    seconds = 1.0 if quick else 4.0
    with tempfile.TemporaryDirectory() as tls_dir:
        bare = await _measure("bare", tls_dir, seconds)
        sft = await _measure("sft", tls_dir, seconds)
    notes: dict[str, float | str] = {"concurrency": CONCURRENCY, "seconds": seconds}
    return [
        Result(
            "rpc_stack",
            "unary calls/s @16",
            "calls/s",
            sft.rate,
            bare.rate,
            "bare grpc.aio TLS server",
            "higher",
            0.8,
            notes,
        ),
        Result(
            "rpc_stack",
            "p99 latency @16",
            "ms",
            sft.p99_ms,
            bare.p99_ms,
            "bare grpc.aio TLS server",
            "lower",
            1.5,
            notes,
        ),
    ]
