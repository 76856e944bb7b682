"""Queries over the inventory tables. Takes a session; never commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, NotFound
from services.inventory.models import Team, User
from services.inventory.names import check_team_name, check_user_name

__all__ = ["FIRST_GID", "FIRST_UID", "create_team", "create_user", "get_team", "get_user"]

# Platform-allocated ids start above the ranges distributions hand out locally.
FIRST_UID = 60001
FIRST_GID = 63001


async def get_team(session: AsyncSession, name: str) -> Team:
    """Return the team called `name`, or raise NotFound."""
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise NotFound(f"team {name!r} does not exist")
    return team


async def create_team(session: AsyncSession, name: str) -> Team:
    """Create team `name`, refusing a name already taken."""
    check_team_name(name)
    if await session.scalar(select(Team.id).where(Team.name == name)) is not None:
        raise Conflict(f"team {name!r} already exists")
    team = Team(name=name)
    session.add(team)
    await session.flush()
    return team


async def get_user(session: AsyncSession, team: Team, name: str) -> User:
    """Return user `name` of `team`, or raise NotFound."""
    user = await session.scalar(select(User).where(User.team_id == team.id, User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} does not exist in team {team.name!r}")
    return user


async def create_user(session: AsyncSession, team: Team, name: str, *, team_admin: bool) -> User:
    """Create a user with the next free unix uid/gid of the team.

    Concurrent creations race for the same id; the unique constraints make the loser's
    transaction fail rather than hand out one id twice.
    """
    check_user_name(name)
    if (
        await session.scalar(select(User.id).where(User.team_id == team.id, User.name == name))
        is not None
    ):
        raise Conflict(f"user {name!r} already exists in team {team.name!r}")
    highest_uid, highest_gid = (
        await session.execute(
            select(func.max(User.unix_uid), func.max(User.unix_gid)).where(User.team_id == team.id)
        )
    ).one()
    user = User(
        team_id=team.id,
        name=name,
        unix_uid=max(FIRST_UID, (highest_uid or 0) + 1),
        unix_gid=max(FIRST_GID, (highest_gid or 0) + 1),
        windows_name=name[:20],
        team_admin=team_admin,
    )
    session.add(user)
    await session.flush()
    return user
