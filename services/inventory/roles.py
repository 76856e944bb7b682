"""A caller's standing read straight from the inventory's own tables.

The inventory's servicers authorize with this; other services ask the inventory over
gRPC (runtime.remote_roles). Reads only; at most two queries per call.
"""

from __future__ import annotations

from runtime.authorization import Standing
from runtime.database import Database
from runtime.identity import CallerKind, Identity
from services.inventory import repository
from services.inventory.models import UserKind, UserStatus

__all__ = ["LocalRoles"]

_NOT_ACTIVE = Standing(active=False, team_admin=False)
# A token's kind must match the user row's: a person's token never speaks for a
# service user of the same name, nor the other way round.
_KIND_OF = {CallerKind.USER: UserKind.HUMAN, CallerKind.SERVICE_USER: UserKind.SERVICE}


class LocalRoles:
    """Implements runtime.authorization.RoleResolver from the inventory tables."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def standing(self, identity: Identity) -> Standing:
        """Return `identity`'s standing; unknown, disabled or mismatched users are not active."""
        kind = _KIND_OF.get(identity.kind)
        if kind is None or identity.team is None:
            return _NOT_ACTIVE
        async with self._database.sessions() as session:
            user = await repository.find_user(session, identity.team, identity.name)
            if user is None or user.kind is not kind or user.status is not UserStatus.ACTIVE:
                return _NOT_ACTIVE
            if user.team_admin:
                # A team admin passes every need; their grants change nothing.
                return Standing(active=True, team_admin=True)
            projects = await repository.admin_project_names(session, user.id)
        return Standing(active=True, team_admin=False, admin_projects=projects)
