"""How the CA service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.server import ServiceBinding

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="ca", script_location="services.ca:migrations", table_prefix="ca_"
)


def binding(database: Database) -> ServiceBinding:
    """Return the CA service's gRPC services, bound to `database`."""
    # RPCs without an implementation yet answer UNIMPLEMENTED (see ServiceBinding).
    return ServiceBinding.from_package("ca", "sft.ca.v1", implementations={})
