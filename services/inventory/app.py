"""How the inventory service plugs into a platform server: its migrations and its servicers."""

from __future__ import annotations

import dataclasses

from runtime.audit import RemoteAuditTrail
from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.migrations import MigrationHistory
from runtime.peers import Peers
from runtime.server import ServiceBinding
from services.inventory.accounts_watch import AccountsHub
from services.inventory.agent_service import AgentServicer
from services.inventory.bastions_service import BastionServicer
from services.inventory.enrollment_tokens_service import EnrollmentTokenServicer
from services.inventory.groups_service import GroupServicer
from services.inventory.projects_service import ProjectServicer
from services.inventory.roles import LocalRoles
from services.inventory.servers_service import ServerServicer
from services.inventory.servicer import DirectoryServicer, FleetServicer
from services.inventory.teams_service import TeamServicer
from services.inventory.users_service import UserServicer

__all__ = ["HISTORY", "binding"]

HISTORY = MigrationHistory(
    service="inventory", script_location="services.inventory:migrations", table_prefix="inventory_"
)


def binding(database: Database, peers: Peers, clock: Clock = utc_now) -> ServiceBinding:
    """Return the inventory service's gRPC services, bound to `database` and its peers."""
    roles = LocalRoles(database)
    trail = RemoteAuditTrail(peers)
    hub = AccountsHub(database, clock)

    def directory(servicer: type[DirectoryServicer]) -> object:
        return servicer(
            database, peers, roles=roles, trail=trail, clock=clock, on_accounts_changed=hub.notify
        )

    def fleet(servicer: type[FleetServicer]) -> object:
        return servicer(database, peers, roles=roles, trail=trail, hub=hub, clock=clock)

    bound = ServiceBinding.from_package(
        "inventory",
        "sft.inventory.v1",
        implementations={
            "TeamService": directory(TeamServicer),
            "UserService": directory(UserServicer),
            "GroupService": directory(GroupServicer),
            "ProjectService": directory(ProjectServicer),
            "BastionService": directory(BastionServicer),
            "ServerService": fleet(ServerServicer),
            "EnrollmentTokenService": fleet(EnrollmentTokenServicer),
            "AgentService": fleet(AgentServicer),
        },
    )
    return dataclasses.replace(bound, closers=(hub.close,))
