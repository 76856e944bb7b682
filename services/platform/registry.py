"""The composition root's list of services: the only place that knows them all."""

from __future__ import annotations

from types import ModuleType

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.identity import Authenticator
from runtime.migrations import MigrationHistory
from runtime.peers import Peers
from runtime.server import ServiceBinding
from services.auth import app as auth_app
from services.auth.service import TokenVerifier
from services.ca import app as ca_app
from services.ca.key_encryption import KeyEncryption
from services.inventory import app as inventory_app

__all__ = ["APPS", "authenticator_for", "histories_for", "service_bindings"]

#: In dependency order: auth and inventory call the CA.
APPS: dict[str, ModuleType] = {"ca": ca_app, "inventory": inventory_app, "auth": auth_app}


def histories_for(services: tuple[str, ...]) -> list[MigrationHistory]:
    """Return the migration histories of `services`, in dependency order."""
    return [APPS[name].HISTORY for name in APPS if name in services]


def service_bindings(
    services: tuple[str, ...],
    database: Database,
    *,
    ca_key_encryption: KeyEncryption | None,
    peers: Peers,
    clock: Clock = utc_now,
) -> list[ServiceBinding]:
    """Return the gRPC bindings of `services`, sharing `database`.

    `ca_key_encryption` seals the CA's keys; it is required when the CA is served.
    `peers` says where the other services are; each service calls them as itself.
    """
    bindings = []
    for name in APPS:
        if name not in services:
            continue
        if name == "ca":
            if ca_key_encryption is None:
                raise ValueError("the CA service needs its key-encryption key")
            bindings.append(ca_app.binding(database, ca_key_encryption, clock))
        else:
            bindings.append(APPS[name].binding(database, peers.for_service(name), clock))
    return bindings


def authenticator_for(
    services: tuple[str, ...], database: Database, clock: Clock = utc_now
) -> Authenticator | None:
    """Return how this process turns bearer tokens into identities.

    A process serving auth checks tokens in its own database. (A process without
    auth will ask auth's VerifyAccessToken over the internal listener: the
    multi-process deployment issue.)
    """
    if "auth" in services:
        return TokenVerifier(database, clock)
    return None
