"""Desired accounts for the tests: platform-shaped values with distinct uids and gids."""

from __future__ import annotations

from agent.accounts.model import DesiredAccount, DesiredState

TEAM = "teams/acme/users/"


def account(
    name: str,
    index: int = 1,
    *,
    groups: tuple[str, ...] = (),
    admin: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    full_name: str = "",
) -> DesiredAccount:
    """Return the platform's account `name`; `index` picks uid 60000+i and gid 63000+i."""
    return DesiredAccount(
        name=name,
        user=TEAM + name,
        uid=60000 + index if uid is None else uid,
        gid=63000 + index if gid is None else gid,
        primary_group=name,
        supplementary_groups=groups,
        admin=admin,
        windows_name=name,
        full_name=full_name or name.title(),
    )


def state(
    *accounts: DesiredAccount, create_missing: bool = True, revision: int = 1
) -> DesiredState:
    """Return a desired state listing `accounts`."""
    return DesiredState(revision=revision, accounts=accounts, create_missing=create_missing)
