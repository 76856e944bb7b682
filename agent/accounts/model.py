"""What the platform wants on this server, as plain values (no protobuf here).

The daemon turns each `WatchAccounts` message into a `DesiredState` and hands it to
the reconciler; the reconciler compares it with what the backend reports and applies
the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DesiredAccount", "DesiredState"]


@dataclass(frozen=True)
class DesiredAccount:
    """One account the platform wants on this server."""

    #: The Linux account name ([a-z_][a-z0-9_-], at most 32 characters).
    name: str
    #: The platform user it belongs to: teams/T/users/U.
    user: str
    uid: int
    gid: int
    #: The account's own group (same name as the account).
    primary_group: str
    #: Other groups (the user's groups granted on this server's project), sorted.
    supplementary_groups: tuple[str, ...]
    #: Sudo on Linux (group sft-admin + sudoers drop-in), Administrators on Windows.
    admin: bool
    #: The Windows account name (at most 20 characters).
    windows_name: str
    #: GECOS / full name.
    full_name: str


@dataclass(frozen=True)
class DesiredState:
    """The complete desired account list at one revision of the team."""

    revision: int
    accounts: tuple[DesiredAccount, ...]
    #: Whether missing accounts are created (the project's create_server_users).
    create_missing: bool
