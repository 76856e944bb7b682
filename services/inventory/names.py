"""Rules for the names and values people give the directory: teams, users, groups,
projects, bastions, account names, addresses. Pure; no I/O.

Each check returns the value it accepts, or raises InvalidInput with one line saying
what is wrong and what to use instead.
"""

from __future__ import annotations

import ipaddress
import re

from runtime.errors import InvalidInput

__all__ = [
    "MAX_ADMIN_ACCOUNT_NAMES",
    "MAX_DESCRIPTION",
    "MAX_DISPLAY_NAME",
    "MAX_EMAIL",
    "RESERVED_ACCOUNT_NAMES",
    "RESERVED_GROUP_NAMES",
    "WINDOWS_NAME_LIMIT",
    "check_account_name",
    "check_bastion_name",
    "check_description",
    "check_display_name",
    "check_email",
    "check_group_name",
    "check_host_address",
    "check_project_name",
    "check_team_name",
    "check_user_name",
    "check_windows_account_name",
    "split_bastion_name",
    "split_grant_name",
    "split_group_name",
]

#: Column sizes of the directory tables (inventory models), which the limits follow.
MAX_DISPLAY_NAME = 200
MAX_EMAIL = 254
MAX_DESCRIPTION = 500
WINDOWS_NAME_LIMIT = 20
MAX_ADMIN_ACCOUNT_NAMES = 16

_TEAM = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Project and bastion ids appear in resource names and certificate URIs: like a team
# name, but starting with a letter.
_PROJECT = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A user's name is also their Linux account name on every server: [a-z0-9_-], <= 32
# characters, starting with a letter or underscore (useradd's portable subset).
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# A group becomes a unix group on servers (groupadd's portable subset, <= 32).
_GROUP = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Shared accounts admins may log in as: a Linux account name, or a Windows one (which
# may have capitals, e.g. Administrator, and dots).
_LINUX_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_WINDOWS_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,19}$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
RESERVED_ACCOUNT_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news",
        "uucp", "proxy", "www-data", "backup", "list", "irc", "nobody", "sshd", "admin",
        "administrator", "guest", "systemd-network", "systemd-resolve", "messagebus",
        "sft-broker", "sftd",
    }
)  # fmt: skip
# Groups that already mean something on servers; sft-admin is how sft grants sudo.
RESERVED_GROUP_NAMES = RESERVED_ACCOUNT_NAMES | frozenset(
    {
        "sft-admin", "sudo", "wheel", "adm", "users", "staff", "nogroup", "shadow",
        "disk", "kmem", "tty", "utmp", "video", "audio", "docker", "lxd", "systemd-journal",
        "administrators", "remote-desktop-users",
    }
)  # fmt: skip
_RESERVED_WINDOWS_NAMES = frozenset(
    {"administrator", "guest", "defaultaccount", "wdagutilityaccount", "system", "krbtgt"}
)


def check_team_name(name: str) -> str:
    """Return `name` if it is a valid team name, else raise InvalidInput saying why."""
    if not _TEAM.fullmatch(name):
        raise InvalidInput(
            f"team name {name!r} is not valid: use 1-63 lowercase letters, digits and "
            "dashes, starting and ending with a letter or digit"
        )
    return name


def check_user_name(name: str) -> str:
    """Return `name` if it can be a user (and server account) name, else raise InvalidInput."""
    if not _USER.fullmatch(name):
        raise InvalidInput(
            f"user name {name!r} is not valid: it becomes the server account name, so use "
            "up to 32 lowercase letters, digits, '_' and '-', starting with a letter or '_'"
        )
    # The user's primary group on servers is named like the user, so a user called
    # `sudo` or `sft-admin` would be an admin everywhere.
    if name in RESERVED_ACCOUNT_NAMES or name in RESERVED_GROUP_NAMES:
        raise InvalidInput(f"user name {name!r} is reserved on servers; choose another name")
    return name


def check_group_name(name: str) -> str:
    """Return `name` if it can be a group (and server unix group) name, else raise."""
    if not _GROUP.fullmatch(name):
        raise InvalidInput(
            f"group name {name[:80]!r} is not valid: it becomes a unix group on servers, so "
            "use up to 32 lowercase letters, digits, '_' and '-', starting with a letter"
        )
    if name in RESERVED_GROUP_NAMES:
        raise InvalidInput(f"group name {name!r} is reserved on servers; choose another name")
    return name


def check_project_name(name: str) -> str:
    """Return `name` if it is a valid project id, else raise InvalidInput saying why."""
    if not _PROJECT.fullmatch(name):
        raise InvalidInput(
            f"project id {name[:80]!r} is not valid: use 1-63 lowercase letters, digits and "
            "dashes, starting with a letter and ending with a letter or digit"
        )
    return name


def check_bastion_name(name: str) -> str:
    """Return `name` if it is a valid bastion id, else raise InvalidInput saying why."""
    if not _PROJECT.fullmatch(name):
        raise InvalidInput(
            f"bastion id {name[:80]!r} is not valid: use 1-63 lowercase letters, digits and "
            "dashes, starting with a letter and ending with a letter or digit"
        )
    return name


def check_windows_account_name(name: str) -> str:
    """Return `name` if it can be a Windows account name sft creates, else raise."""
    if not _WINDOWS_ACCOUNT.fullmatch(name) or name.endswith("."):
        raise InvalidInput(
            f"windows_account_name {name[:80]!r} is not valid: use 1-{WINDOWS_NAME_LIMIT} "
            "letters, digits, '_', '.' and '-', starting with a letter, digit or '_' and "
            "not ending with '.'"
        )
    if name.lower() in _RESERVED_WINDOWS_NAMES:
        raise InvalidInput(
            f"windows_account_name {name!r} is a built-in Windows account; choose another name"
        )
    return name


def check_account_name(name: str) -> str:
    """Return `name` if it is a valid shared server account name (Linux or Windows)."""
    if not (
        _LINUX_ACCOUNT.fullmatch(name) or (_WINDOWS_ACCOUNT.fullmatch(name) and name[-1] != ".")
    ):
        raise InvalidInput(
            f"account name {name[:80]!r} is not valid: use a Linux account name (up to 32 "
            "lowercase letters, digits, '_' and '-') or a Windows one (up to 20 letters, "
            "digits, '_', '.' and '-')"
        )
    return name


def check_display_name(value: str, what: str = "display_name") -> str:
    """Return `value` if it fits a display name (≤ 200 characters, one line)."""
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidInput(
            f"{what} is {len(value)} characters long; shorten it to {MAX_DISPLAY_NAME}"
        )
    if any(ch in value for ch in "\n\r\0"):
        raise InvalidInput(f"{what} must be one line; remove line breaks and NUL characters")
    return value


def check_email(value: str) -> str:
    """Return `value` if it is empty or looks like one email address."""
    if not value:
        return value
    if len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        raise InvalidInput(
            f"email {value[:80]!r} is not valid: use one address like name@example.com, "
            f"at most {MAX_EMAIL} characters, or leave it empty"
        )
    return value


def check_description(value: str) -> str:
    """Return `value` if it fits a description (≤ 500 characters, no NUL)."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"description is {len(value)} characters long; shorten it to {MAX_DESCRIPTION}"
        )
    if "\0" in value:
        raise InvalidInput("description must not contain NUL characters")
    return value


def check_host_address(value: str) -> str:
    """Return `value` if it is a host name or an IP address (no port, no scheme)."""
    shown = repr(value[:80])
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.removesuffix(".").split(".")
    if (
        not value
        or len(value) > 253
        or not all(_HOST_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidInput(
            f"address {shown} is not a host name or IP address; give just the host (e.g. "
            "bastion.example.com or 10.0.0.5) and put the port in ssh_port"
        )
    return value


def _segments(name: str, kind: str, shape: str, pattern: str) -> tuple[str, ...]:
    match = re.fullmatch(pattern, name)
    if match is None:
        raise InvalidInput(f"{name[:200]!r} is not a {kind} resource name; use {shape}")
    return match.groups()


_ID = r"([a-z0-9][a-z0-9-]{0,62})"
_GROUP_ID = r"([a-z][a-z0-9_-]{0,31})"


def split_group_name(name: str) -> tuple[str, str]:
    """Return (team, group) of a group resource name `teams/{team}/groups/{group}`."""
    team, group = _segments(
        name, "group", "teams/TEAM/groups/GROUP", rf"teams/{_ID}/groups/{_GROUP_ID}"
    )
    return team, group


def split_grant_name(name: str) -> tuple[str, str, str]:
    """Return (team, project, group) of `teams/{team}/projects/{project}/grants/{group}`."""
    team, project, group = _segments(
        name,
        "grant",
        "teams/TEAM/projects/PROJECT/grants/GROUP",
        rf"teams/{_ID}/projects/{_ID}/grants/{_GROUP_ID}",
    )
    return team, project, group


def split_bastion_name(name: str) -> tuple[str, str]:
    """Return (team, bastion) of `teams/{team}/bastions/{bastion}`.

    Bastions belong to the team; the project-scoped spelling the contract documents
    (`teams/{team}/projects/{project}/bastions/{bastion}`) is accepted too.
    """
    team, _project, bastion = _segments(
        name,
        "bastion",
        "teams/TEAM/bastions/BASTION",
        rf"teams/{_ID}/(?:projects/{_ID}/)?bastions/{_ID}",
    )
    return team, bastion
