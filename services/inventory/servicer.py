"""What every inventory servicer shares: its dependencies, the caller, update-mask checks
and the audit event recorded after a change commits.

No SQL and no service logic here; the servicers in `*_service.py` build on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from runtime.audit import AuditTrail, audit_event
from runtime.authorization import RoleResolver
from runtime.clock import Clock, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput
from runtime.identity import Identity, current_identity
from runtime.peers import Peers
from services.inventory.accounts_watch import AccountsHub
from services.inventory.models import Team
from sft.auth.v1 import audit_pb2

__all__ = [
    "AccountsChanged",
    "Context",
    "DirectoryServicer",
    "FleetServicer",
    "InventoryServicer",
    "audit_details",
    "caller",
    "mask_paths",
    "same_team",
]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information
#: Called with a team's id after a change to its desired accounts commits; may be async.
AccountsChanged = Callable[[str], object]

log = structlog.get_logger("sft.inventory")


def caller() -> Identity:
    """Return the identity of the current call."""
    return current_identity.get()


def mask_paths(
    given: Iterable[str], has_mask: bool, mutable: Iterable[str], fixed: Mapping[str, str]
) -> list[str]:
    """Return the update_mask paths, refusing an empty mask and fixed or unknown fields."""
    paths = list(given)
    allowed = list(mutable)
    if not has_mask or not paths:
        raise InvalidInput(
            f"update_mask is required; name the fields to change (any of {', '.join(allowed)})"
        )
    for path in paths:
        if path in fixed:
            raise InvalidInput(f"update_mask names {path!r}: {fixed[path]}")
        if path not in allowed:
            raise InvalidInput(
                f"update_mask names {path[:80]!r}, which is not a field that can change; "
                f"use any of {', '.join(allowed)}"
            )
    return list(dict.fromkeys(paths))


def same_team(resource: str, team: str, what: str) -> None:
    """Refuse a resource `what` of another team than `team`."""
    if resource != team:
        raise InvalidInput(
            f"{what} belongs to team {resource!r}, not {team!r}; name one of team {team!r}"
        )


def audit_details(changes: Mapping[str, object]) -> dict[str, str]:
    """Return audit details for changed fields: lists comma-joined, booleans lowercase."""
    details = {}
    for key, value in changes.items():
        if isinstance(value, bool):
            details[key] = str(value).lower()
        elif isinstance(value, list):
            details[key] = ",".join(value)
        else:
            details[key] = str(value)
    return details


class InventoryServicer:
    """The database, peers, role resolver, audit trail and clock of a servicer."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self._peers = peers
        self.roles = roles
        self._trail = trail
        self._clock = clock

    async def _audit(
        self,
        team: str,
        action: str,
        resource: str,
        *,
        outcome: int = audit_pb2.AUDIT_OUTCOME_SUCCESS,
        details: Mapping[str, str] | None = None,
        actor: Identity | None = None,
    ) -> None:
        """Append an event to `team`'s audit trail (failures are logged, never raised)."""
        await self._trail.record(
            team, audit_event(action, resource, outcome=outcome, details=details, actor=actor)
        )


class DirectoryServicer(InventoryServicer):
    """A servicer of the directory (teams, users, groups, projects, bastions), whose changes
    may alter servers' desired accounts and then tell `on_accounts_changed`."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        clock: Clock = utc_now,
        on_accounts_changed: AccountsChanged = lambda team_id: None,
    ) -> None:
        super().__init__(database, peers, roles=roles, trail=trail, clock=clock)
        self._on_accounts_changed = on_accounts_changed

    async def _committed(
        self,
        team: Team,
        action: str,
        resource: str,
        details: Mapping[str, str] | None = None,
        *,
        accounts_changed: bool = False,
    ) -> None:
        """After a commit: tell the account watchers (if asked), then audit the change."""
        if accounts_changed:
            try:
                result = self._on_accounts_changed(team.id)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The change is committed; watchers also poll the revision, so they
                # catch up even if this nudge failed.
                log.exception("accounts-changed hook failed", team=team.name, action=action)
        await self._audit(team.name, action, resource, details=details)


class FleetServicer(InventoryServicer):
    """A servicer of the fleet (servers, enrollment tokens, agents), with the accounts hub."""

    def __init__(
        self,
        database: Database,
        peers: Peers,
        *,
        roles: RoleResolver,
        trail: AuditTrail,
        hub: AccountsHub,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(database, peers, roles=roles, trail=trail, clock=clock)
        self._hub = hub
