"""What a caller's standing in its team allows: the refusals auth's servicers share.

Reads the standing through the role resolver (the inventory decides it); no SQL here.
"""

from __future__ import annotations

from runtime.authorization import RoleResolver
from runtime.errors import PermissionDenied
from runtime.identity import Identity

__all__ = ["require_team_admin"]


async def require_team_admin(roles: RoleResolver, identity: Identity, refusal: str) -> None:
    """Refuse with `refusal` unless `identity` holds the team admin role in its team."""
    if not (await roles.standing(identity)).team_admin:
        raise PermissionDenied(refusal)
