"""Rules for the names people give teams, users and projects. Pure; no I/O."""

from __future__ import annotations

import re

from runtime.errors import InvalidInput

__all__ = ["check_team_name", "check_user_name"]

_TEAM = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A user's name is also their Linux account name on every server: [a-z0-9_-], <= 32
# characters, starting with a letter or underscore (useradd's portable subset).
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
RESERVED_ACCOUNT_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
        "uucp", "proxy", "www-data", "backup", "list", "irc", "nobody", "sshd", "admin",
        "administrator", "guest", "systemd-network", "systemd-resolve", "messagebus",
        "sft-broker", "sftd",
    }
)  # fmt: skip


def check_team_name(name: str) -> str:
    """Return `name` if it is a valid team name, else raise InvalidInput saying why."""
    if not _TEAM.match(name):
        raise InvalidInput(
            f"team name {name!r} is not valid: use 1-63 lowercase letters, digits and "
            "dashes, starting and ending with a letter or digit"
        )
    return name


def check_user_name(name: str) -> str:
    """Return `name` if it can be a user (and server account) name, else raise InvalidInput."""
    if not _USER.match(name):
        raise InvalidInput(
            f"user name {name!r} is not valid: it becomes the server account name, so use "
            "up to 32 lowercase letters, digits, '_' and '-', starting with a letter or '_'"
        )
    if name in RESERVED_ACCOUNT_NAMES:
        raise InvalidInput(f"user name {name!r} is reserved on servers; choose another name")
    return name
