"""The broker's Prometheus metrics: tunnels, bytes, grants and refusals.

Served on --metrics-listen by runtime.metrics.MetricsEndpoint, next to the gRPC ones.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "GRANTS_ACTIVE",
    "GRANTS_ENDED",
    "REFUSALS",
    "TUNNELS_ACTIVE",
    "TUNNEL_BYTES",
    "TUNNEL_SECONDS",
]

TUNNEL_BYTES = Counter(
    "sft_broker_tunnel_bytes_total",
    "Bytes carried by tunnels, by direction (upload: client to target).",
    ("direction",),
)
TUNNELS_ACTIVE = Gauge("sft_broker_tunnels_active", "Tunnels open now.")
TUNNEL_SECONDS = Histogram(
    "sft_broker_tunnel_duration_seconds",
    "How long tunnels stayed open, by how they ended.",
    ("outcome",),
    buckets=(0.1, 1, 5, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600),
)
GRANTS_ACTIVE = Gauge("sft_broker_grants_active", "Grants live now.")
GRANTS_ENDED = Counter("sft_broker_grants_ended_total", "Grants ended, by reason.", ("reason",))
REFUSALS = Counter(
    "sft_broker_refusals_total", "Calls refused, by RPC and gRPC status.", ("method", "code")
)
