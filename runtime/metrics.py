"""Prometheus metrics for gRPC servers and the HTTP endpoint that exposes them.

Metric names follow go-grpc-prometheus so existing dashboards work unchanged.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "RPC_HANDLED",
    "RPC_HANDLING_SECONDS",
    "RPC_IN_FLIGHT",
    "RPC_STARTED",
    "MetricsEndpoint",
]

_LABELS = ("grpc_type", "grpc_service", "grpc_method")

RPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS)
RPC_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server, by status.", (*_LABELS, "grpc_code")
)
RPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (seconds).",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_IN_FLIGHT = Gauge("grpc_server_in_flight", "RPCs currently running.", _LABELS[1:])


class MetricsEndpoint:
    """The /metrics HTTP listener, started and stopped with the server that owns it."""

    def __init__(self, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host)

    @property
    def port(self) -> int:
        """Return the bound port (useful when asked for port 0)."""
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
