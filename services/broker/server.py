"""Runs the broker: the mTLS gRPC listener, the agent link, metrics, and an orderly stop.

The listening port is bound before anything slow, so sftd can probe readiness with a
TCP connect. Stopping refuses new calls, ends every grant at the agent
(DISABLE_REASON_BROKER_STOPPING), then closes open tunnels. Needs no privilege.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio
import structlog

from agent.control_client import ControlClient, read_loopback_endpoint
from runtime.metrics import MetricsEndpoint
from runtime.server import Endpoint, ListenError, check_port_free
from runtime.tunnels import MAX_FRAME_BYTES
from services.broker.grants import AccountSwitch, GrantBook
from services.broker.identity import PeerIdentities
from services.broker.limits import TunnelLimits
from services.broker.service import BrokerServicer
from services.broker.tls import BrokerTLS, ReloadingServerCredentials
from sft.broker.v1 import broker_service_pb2_grpc

__all__ = ["BrokerServer", "BrokerSettings", "control_client"]

log = structlog.get_logger("sft.broker")

#: Open tunnels get this long to finish after a stop before they are cut.
STOP_GRACE_SECONDS = 2.0
# A frame plus protobuf framing; anything larger is not a tunnel message.
_MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + 1024


@dataclass(frozen=True)
class BrokerSettings:
    """What `sft-broker` was started with (see services.broker.cli)."""

    listen: Endpoint
    tls_dir: Path
    control: Path
    target: Endpoint
    grace_seconds: float = 60
    grant_seconds: float = 300
    max_tunnels: int = 1000
    max_tunnels_per_user: int = 64
    idle_timeout_seconds: float = 3600
    metrics_listen: Endpoint | None = None


class ClosableSwitch(AccountSwitch, Protocol):
    """An agent link the server closes when it stops."""

    async def close(self) -> None:
        """Release the link."""
        ...


def control_client(path: Path) -> ControlClient:
    """Return a client of sftd's control channel: its socket, or its endpoint file (Windows)."""
    if sys.platform == "win32":
        return ControlClient.loopback(read_loopback_endpoint(path))
    return ControlClient.unix(path)


class BrokerServer:
    """One running broker."""

    def __init__(self, settings: BrokerSettings, tls: BrokerTLS, agent: ClosableSwitch) -> None:
        self.settings = settings
        self._agent = agent
        self._credentials = ReloadingServerCredentials(settings.tls_dir, tls)
        self.grants = GrantBook(
            agent, grant_seconds=settings.grant_seconds, grace_seconds=settings.grace_seconds
        )
        self.limits = TunnelLimits(settings.max_tunnels, settings.max_tunnels_per_user)
        self._server = grpc.aio.server(
            options=[
                # A second broker on the same port must fail, not share it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        servicer = BrokerServicer(
            PeerIdentities(tls.identity),
            self.grants,
            self.limits,
            settings.target,
            idle_timeout_seconds=settings.idle_timeout_seconds,
        )
        broker_service_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, self._server)
        self._metrics: MetricsEndpoint | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind the port, then start serving."""
        listen = self.settings.listen
        check_port_free(listen)
        try:
            self.port = int(
                self._server.add_secure_port(str(listen), self._credentials.credentials)
            )
        except RuntimeError:
            raise ListenError(f"cannot listen on {listen}") from None
        await self._server.start()
        if self.settings.metrics_listen is not None:
            check_port_free(self.settings.metrics_listen)
            metrics = self.settings.metrics_listen
            self._metrics = MetricsEndpoint(metrics.host, metrics.port)
        log.info(
            "broker serving",
            address=str(Endpoint(listen.host, self.port)),
            server=str(self._credentials.current.identity),
            target=str(self.settings.target),
            metrics=str(self.settings.metrics_listen) if self.settings.metrics_listen else None,
        )

    async def stop(self) -> None:
        """Refuse new calls, end every grant at the agent, then close the open tunnels."""
        stopping = asyncio.ensure_future(self._server.stop(STOP_GRACE_SECONDS))
        await asyncio.sleep(0)
        await self.grants.stop()
        await stopping
        await self._agent.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        log.info("broker stopped")

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stopping.set)
            except NotImplementedError:  # Windows' event loops have no signal handlers
                signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stopping.set))
        try:
            await self.start()
            await stopping.wait()
        finally:
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                if sys.platform != "win32":
                    loop.remove_signal_handler(signum)
