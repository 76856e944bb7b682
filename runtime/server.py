"""Boot a grpc.aio server the way every sft service runs: TLS, interceptor, health,
reflection, metrics, and a graceful stop on SIGTERM.

Services contribute `ServiceBinding`s; this module never knows which services exist.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import importlib
import pkgutil
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime.authorization import declared_need
from runtime.identity import Authenticator
from runtime.interceptors import ServerCallInterceptor
from runtime.metrics import MetricsEndpoint
from runtime.tls import TLSFiles

__all__ = ["Endpoint", "ListenError", "PlatformServer", "ServiceBinding", "parse_endpoint"]

log = structlog.get_logger("sft.server")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ListenError(Exception):
    """The server could not listen where it was asked to."""


@dataclass(frozen=True)
class Endpoint:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse HOST:PORT or [IPV6]:PORT, raising ValueError with the expected form."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)")
    host = host.removeprefix("[").removesuffix("]")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return Endpoint(host, port)


def check_port_free(endpoint: Endpoint) -> None:
    """Raise ListenError if `endpoint` cannot be bound (taken, or not an address here)."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ListenError(f"cannot listen on {endpoint}: unknown host {endpoint.host!r}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"cannot listen on {endpoint}: the address is already in use; "
                    "stop the other process or choose another address"
                ) from None
            raise ListenError(f"cannot listen on {endpoint}: {exc.strerror}") from None


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _serialize(message: Any) -> bytes:
    """Serialize a response; bytes pass through (already serialized, e.g. shared by streams)."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # type: ignore[no-any-return]


def _add_servicer(descriptor: Any, servicer: object, server: grpc.aio.Server) -> None:
    """Register `servicer` for the service `descriptor` describes.

    Like the generated add_…_to_server, built from the descriptor so that a method may
    also yield a response it serialized itself (bytes): a WatchAccounts list sent to
    thousands of streams is serialized once, not once per stream.
    """
    handlers = {}
    for method in descriptor.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        make = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_class.FromString,
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    server.add_registered_method_handlers(descriptor.full_name, handlers)


@dataclass(frozen=True)
class ServiceBinding:
    """What one service contributes to a server."""

    name: str
    #: Full gRPC service names, e.g. "sft.ca.v1.CertificateAuthorityService".
    grpc_services: tuple[str, ...]
    register: Callable[[grpc.aio.Server], None]
    #: Called once after the server stopped (e.g. to end background tasks).
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    @classmethod
    def from_package(
        cls, name: str, package: str, implementations: Mapping[str, object]
    ) -> ServiceBinding:
        """Bind every gRPC service generated into `package` (e.g. "sft.ca.v1").

        `implementations` maps a service's short name to its servicer; a service with
        none gets the generated base servicer, whose RPCs answer UNIMPLEMENTED, so the
        whole contract is visible through reflection from the first version.
        """
        root = importlib.import_module(package)
        adders: list[Callable[[grpc.aio.Server], None]] = []
        full_names: list[str] = []
        remaining = dict(implementations)
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
            if not info.name.endswith("_pb2_grpc"):
                continue
            stubs = importlib.import_module(f"{package}.{info.name}")
            messages = importlib.import_module(f"{package}.{info.name.removesuffix('_grpc')}")
            for short, descriptor in messages.DESCRIPTOR.services_by_name.items():
                servicer = remaining.pop(short, None)
                if servicer is None:
                    servicer = getattr(stubs, f"{short}Servicer")()
                else:
                    _check_declared(descriptor, servicer, getattr(stubs, f"{short}Servicer"))
                adders.append(functools.partial(_add_servicer, descriptor, servicer))
                full_names.append(descriptor.full_name)
        if remaining:
            raise ValueError(f"{package} has no service named {', '.join(sorted(remaining))}")

        def register(server: grpc.aio.Server) -> None:
            for adder in adders:
                adder(server)

        return cls(name, tuple(full_names), register)


def _check_declared(descriptor: Any, servicer: object, base: type) -> None:
    """Refuse a servicer with an implemented RPC that declares no authorization need."""
    undeclared = [
        method.name
        for method in descriptor.methods
        if getattr(type(servicer), method.name, None) is not getattr(base, method.name, None)
        and declared_need(getattr(servicer, method.name)) is None
    ]
    if undeclared:
        raise ValueError(
            f"{descriptor.full_name} implements {', '.join(undeclared)} without "
            "@requires(...): declare who may call each RPC (runtime.authorization)"
        )


class PlatformServer:
    """One gRPC server hosting some services, with health, reflection and metrics."""

    def __init__(
        self,
        bindings: Sequence[ServiceBinding],
        listen: Endpoint,
        tls: TLSFiles,
        *,
        authenticate: Authenticator | None = None,
        metrics_listen: Endpoint | None = None,
        internal_listen: Endpoint | None = None,
        grace_seconds: float = 10.0,
    ) -> None:
        self._bindings = list(bindings)
        self._listen = listen
        self._internal_listen = internal_listen
        self._tls = tls
        self._metrics_listen = metrics_listen
        self._grace_seconds = grace_seconds
        self._health = health.aio.HealthServicer()
        self._metrics: MetricsEndpoint | None = None
        self._server = grpc.aio.server(
            interceptors=[ServerCallInterceptor(authenticate)],
            options=[
                # gRPC sets SO_REUSEPORT by default: a second server on the same port
                # would silently share it instead of failing.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.port = 0
        self.internal_port = 0

    @property
    def grpc_services(self) -> list[str]:
        """Return the full names of every application service hosted here."""
        return [name for binding in self._bindings for name in binding.grpc_services]

    async def start(self) -> None:
        """Bind, register everything and start serving."""
        for binding in self._bindings:
            binding.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self.grpc_services, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        cert, key, ca = self._tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=False
        )
        self.port = self._add_port(self._listen, credentials)
        if self._internal_listen is not None:
            # Platform services call each other here, each proving itself with a
            # service certificate from the platform CA (see runtime.service_identity).
            mutual = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            )
            self.internal_port = self._add_port(self._internal_listen, mutual)
        if self._metrics_listen is not None:
            check_port_free(self._metrics_listen)
            self._metrics = MetricsEndpoint(self._metrics_listen.host, self._metrics_listen.port)
        await self._server.start()
        for name in ["", *self.grpc_services]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            address=str(Endpoint(self._listen.host, self.port)),
            internal_address=(
                str(Endpoint(self._internal_listen.host, self.internal_port))
                if self._internal_listen
                else None
            ),
            services=[b.name for b in self._bindings],
            metrics=str(self._metrics_listen) if self._metrics_listen else None,
        )

    def _add_port(self, endpoint: Endpoint, credentials: grpc.ServerCredentials) -> int:
        check_port_free(endpoint)
        try:
            return int(self._server.add_secure_port(str(endpoint), credentials))
        except RuntimeError:
            raise ListenError(f"cannot listen on {endpoint}") from None

    async def stop(self) -> None:
        """Report NOT_SERVING, let calls in flight finish (bounded), then close."""
        await self._health.enter_graceful_shutdown()
        # New calls are refused from here on; closers then end long-lived streams (so
        # their clients reconnect elsewhere now rather than after the grace period),
        # while unary calls in flight get the grace period to finish.
        stopping = asyncio.ensure_future(self._server.stop(self._grace_seconds))
        await asyncio.sleep(0)
        for binding in self._bindings:
            for close in binding.closers:
                await close()
        await stopping
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await self.start()
            await stopping.wait()
            log.info("shutting down", grace_seconds=self._grace_seconds)
        finally:
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
