"""How the auth service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.peers import Peers
from runtime.remote_roles import RemoteRoles
from runtime.server import ServiceBinding
from services.auth.service import DeviceServicer, TokenServicer

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="auth", script_location="services.auth:migrations", table_prefix="auth_"
)


def binding(database: Database, peers: Peers, clock: Clock = utc_now) -> ServiceBinding:
    """Return the auth service's gRPC services, bound to `database` and its peers."""
    roles = RemoteRoles(peers)
    # RPCs without an implementation yet answer UNIMPLEMENTED (see ServiceBinding).
    return ServiceBinding.from_package(
        "auth",
        "sft.auth.v1",
        implementations={
            "DeviceService": DeviceServicer(database, roles, clock),
            "TokenService": TokenServicer(database, clock),
        },
    )
