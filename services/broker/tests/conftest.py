"""A broker served in-process over real mTLS gRPC, with a stand-in agent and real TCP targets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from agent.control_client import ControlClient
from runtime.server import Endpoint
from services.broker.server import BrokerServer, BrokerSettings
from services.broker.tls import load_broker_tls
from sft.broker.v1 import broker_service_pb2, broker_service_pb2_grpc
from tests.support.broker import (
    AgentControlStub,
    IssuedCert,
    TestPKI,
    agent_control_stub,
    broker_channel,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo everything, then half-close when the peer does."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@dataclass
class BrokerWorld:
    """One in-process broker and what surrounds it."""

    pki: TestPKI
    agent: AgentControlStub
    server: BrokerServer
    tmp: Path
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    targets: list[asyncio.Server] = field(default_factory=list)

    def stub(self, client: IssuedCert | None = None) -> broker_service_pb2_grpc.BrokerServiceStub:
        """Return a stub on a new channel presenting `client` (default: alice's cert)."""
        channel = broker_channel(self.server.port, self.pki, client or self.pki.client_cert())
        self.channels.append(channel)
        return broker_service_pb2_grpc.BrokerServiceStub(channel)

    async def grant(self, stub: broker_service_pb2_grpc.BrokerServiceStub | None = None) -> str:
        """Request access and return the grant id."""
        stub = stub or self.stub()
        reply = await stub.RequestAccess(broker_service_pb2.RequestAccessRequest())
        return str(reply.grant.grant_id)


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.fixture
def target_handler() -> Handler:
    """The target's behaviour; tests override this fixture (default: echo)."""
    return echo


@pytest.fixture
def broker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """BrokerSettings overrides: parametrize it indirectly (`target` replaces the echo's)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def world(
    tmp_path: Path, target_handler: Handler, broker_options: dict[str, Any]
) -> AsyncIterator[BrokerWorld]:
    """Start the target, the stand-in agent and the broker; stop them all afterwards."""
    pki = TestPKI()
    tls_dir = pki.write_tls_dir(tmp_path / "tls")
    target, target_port = await _serve(target_handler)
    socket_path = tmp_path / "control.sock"
    async with agent_control_stub(socket_path, ["alice", "bob"]) as agent:
        options = {"target": Endpoint("127.0.0.1", target_port), **broker_options}
        settings = BrokerSettings(
            listen=Endpoint("127.0.0.1", 0), tls_dir=tls_dir, control=socket_path, **options
        )
        server = BrokerServer(settings, load_broker_tls(tls_dir), ControlClient.unix(socket_path))
        await server.start()
        world = BrokerWorld(pki, agent, server, tmp_path, targets=[target])
        try:
            yield world
        finally:
            for channel in world.channels:
                await channel.close()
            await server.stop()
            target.close()
