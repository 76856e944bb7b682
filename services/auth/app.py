"""How the auth service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.peers import Peers
from runtime.remote_roles import RemoteRoles
from runtime.server import ServiceBinding
from services.auth.access_service import AccessServicer
from services.auth.audit_service import AuditServicer, LocalAuditTrail
from services.auth.enrollment_code_service import EnrollmentCodeServicer
from services.auth.inventory_calls import InventoryCalls
from services.auth.service import DeviceServicer
from services.auth.service_user_service import ServiceUserServicer
from services.auth.token_service import TokenServicer

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="auth", script_location="services.auth:migrations", table_prefix="auth_"
)


def binding(database: Database, peers: Peers, clock: Clock = utc_now) -> ServiceBinding:
    """Return the auth service's gRPC services, bound to `database` and its peers.

    `peers` calls the inventory and the CA as service "auth".
    """
    roles = RemoteRoles(peers)
    inventory = InventoryCalls(peers)
    trail = LocalAuditTrail(database, clock)
    return ServiceBinding.from_package(
        "auth",
        "sft.auth.v1",
        implementations={
            "AccessService": AccessServicer(roles, peers, inventory, trail),
            "AuditService": AuditServicer(database, roles, trail),
            "DeviceService": DeviceServicer(database, roles, clock, trail=trail),
            "EnrollmentCodeService": EnrollmentCodeServicer(
                database, roles, peers, inventory, trail, clock
            ),
            "ServiceUserService": ServiceUserServicer(database, roles, inventory, trail, clock),
            "TokenService": TokenServicer(database, inventory, clock),
        },
    )
