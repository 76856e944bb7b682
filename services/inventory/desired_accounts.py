"""The accounts each server of a project should have, computed from grants and memberships.

One query per project and revision; takes a session and never commits; no protobuf.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.inventory.models import (
    Grant,
    GrantRole,
    Group,
    GroupMember,
    Project,
    User,
    UserStatus,
)

__all__ = [
    "DesiredAccount",
    "DesiredAccounts",
    "desired_accounts",
    "own_account",
]


@dataclass(frozen=True)
class DesiredAccount:
    """One account a server should have (the domain twin of ServerAccount)."""

    name: str
    user: str
    uid: int
    gid: int
    primary_group: str
    supplementary_groups: tuple[str, ...]
    admin: bool
    windows_name: str
    full_name: str


# eq=False: identity hashing, so a rendered message can be cached per list cheaply.
@dataclass(frozen=True, eq=False)
class DesiredAccounts:
    """The complete account list of a project's servers at one accounts revision."""

    project_id: str
    revision: int
    accounts: tuple[DesiredAccount, ...]
    create_missing: bool
    #: Digest of the content, so a stream skips re-sending an unchanged list cheaply.
    digest: str


async def desired_accounts(
    session: AsyncSession, project_id: str, revision: int
) -> DesiredAccounts | None:
    """Return the accounts every server of the project should have, or None if it is gone.

    Active users in groups granted on the project; admin if any of their grants there is
    ADMIN; supplementary groups are their granted groups' names. One query.
    """
    create_missing = await session.scalar(
        select(Project.create_server_users).where(Project.id == project_id)
    )
    if create_missing is None:
        return None
    rows = await session.execute(
        select(User, Group.name, Grant.role)
        .join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .join(Grant, Grant.group_id == Group.id)
        .where(Grant.project_id == project_id, User.status == UserStatus.ACTIVE)
    )
    users: dict[str, User] = {}
    groups: dict[str, set[str]] = {}
    admins: set[str] = set()
    for user, group, role in rows:
        users[user.id] = user
        groups.setdefault(user.id, set()).add(group)
        if role is GrantRole.ADMIN:
            admins.add(user.id)
    accounts = tuple(
        sorted(
            (own_account(user, groups[user.id], user.id in admins) for user in users.values()),
            key=lambda account: account.name,
        )
    )
    digest = hashlib.sha256(repr((accounts, create_missing)).encode()).hexdigest()
    return DesiredAccounts(project_id, revision, accounts, bool(create_missing), digest)


def own_account(user: User, groups: Iterable[str], admin: bool) -> DesiredAccount:
    """Return a user's own account with the given groups and admin right."""
    return DesiredAccount(
        name=user.name,
        user=user.name,
        uid=user.unix_uid,
        gid=user.unix_gid,
        primary_group=user.name,
        supplementary_groups=tuple(sorted(groups)),
        admin=admin,
        windows_name=user.windows_name,
        full_name=user.display_name,
    )
