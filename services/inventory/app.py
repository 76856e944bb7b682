"""How the inventory service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.peers import Peers
from runtime.server import ServiceBinding

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="inventory", script_location="services.inventory:migrations", table_prefix="inventory_"
)


def binding(database: Database, peers: Peers, clock: Clock = utc_now) -> ServiceBinding:
    """Return the inventory service's gRPC services, bound to `database` and its peers."""
    # RPCs without an implementation yet answer UNIMPLEMENTED (see ServiceBinding).
    return ServiceBinding.from_package("inventory", "sft.inventory.v1", implementations={})
