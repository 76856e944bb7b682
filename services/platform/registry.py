"""The composition root's list of services: the only place that knows them all."""

from __future__ import annotations

from types import ModuleType

from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.server import ServiceBinding
from services.auth import app as auth_app
from services.ca import app as ca_app
from services.inventory import app as inventory_app

__all__ = ["APPS", "histories_for", "service_bindings"]

#: In dependency order: auth and inventory call the CA.
APPS: dict[str, ModuleType] = {"ca": ca_app, "inventory": inventory_app, "auth": auth_app}


def histories_for(services: tuple[str, ...]) -> list[MigrationHistory]:
    """Return the migration histories of `services`, in dependency order."""
    return [APPS[name].HISTORY for name in APPS if name in services]


def service_bindings(services: tuple[str, ...], database: Database) -> list[ServiceBinding]:
    """Return the gRPC bindings of `services`, sharing `database`."""
    return [APPS[name].binding(database) for name in APPS if name in services]
