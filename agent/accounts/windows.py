"""Windows local accounts through pywin32 (NetUser* / NetLocalGroup*).

UNTESTED ON LINUX: this module is only imported on Windows and pywin32 is imported
inside the functions that call it. The reconciler's logic it serves is covered by
the tests with `RecordingBackend(windows=True)`; these calls themselves need a
Windows host to test.

Accounts are created **disabled** (zero standing privilege): only the broker's
enable turns one on, with a one-time password. Disabling sets UF_ACCOUNTDISABLE and
replaces the password with a random one nobody knows. Every sft account is a member
of Remote Desktop Users; admins also of Administrators. Both groups are found by
their well-known SIDs, since their names are localised.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from agent.accounts.backend import (
    AccountChange,
    BackendError,
    LocalAccount,
    LocalSystem,
    NewAccount,
)
from agent.accounts.model import DesiredAccount
from agent.accounts.passwords import one_time_password

__all__ = ["WindowsAccounts"]

_ADMINISTRATORS_SID = "S-1-5-32-544"
_REMOTE_DESKTOP_USERS_SID = "S-1-5-32-555"
_BUILTIN_SID_PREFIX = "S-1-5-32-"
# From lmaccess.h (also in win32netcon); spelled here so this module imports on Linux.
_UF_SCRIPT = 0x0001
_UF_ACCOUNTDISABLE = 0x0002
_UF_PASSWD_CANT_CHANGE = 0x0040
_UF_DONT_EXPIRE_PASSWD = 0x10000
_USER_PRIV_USER = 1
_FILTER_NORMAL_ACCOUNT = 0x0002
_MAX_PREFERRED_LENGTH = -1
_NAME_LENGTH = 20
_FORBIDDEN = set('"/\\[]:;|=,+*?<>@')
_RESERVED = frozenset({"administrator", "guest", "defaultaccount", "wdagutilityaccount", "krbtgt"})

T = TypeVar("T")


class WindowsAccounts:
    """The AccountBackend for Windows (pywin32). See the module docstring: untested on Linux."""

    numeric_ids = False

    def local_name(self, account: DesiredAccount) -> str:
        """Return the Windows name (at most 20 characters)."""
        return account.windows_name

    def name_problem(self, name: str) -> str | None:
        """Return why `name` cannot be a Windows local account name, or None."""
        if not name or len(name) > _NAME_LENGTH:
            return f"Windows account names are 1 to {_NAME_LENGTH} characters; {name!r} is not"
        bad = sorted(_FORBIDDEN.intersection(name))
        if bad or name.endswith(".") or any(ord(c) < 32 for c in name):
            return f"{name!r} has characters Windows refuses in account names"
        if name.casefold() in _RESERVED:
            return f"{name!r} is a built-in Windows account"
        return None

    async def read(self) -> LocalSystem:
        """Enumerate local users and groups (NetUserEnum, NetLocalGroupEnum/GetMembers)."""
        return await _in_thread(self._read)

    def _read(self) -> LocalSystem:
        win32net = _win32net()
        administrators = _builtin_name(_ADMINISTRATORS_SID)
        groups: dict[str, int | None] = {}
        memberships: dict[str, set[str]] = {}
        for group in _enumerate(lambda resume: win32net.NetLocalGroupEnum(None, 0, resume)):
            name = group["name"]
            builtin = _sid_of(name).startswith(_BUILTIN_SID_PREFIX)
            if not builtin:
                groups[name] = None
            if builtin and name != administrators:
                continue  # Users, Remote Desktop Users, …: not the platform's to set
            members = _enumerate(functools.partial(win32net.NetLocalGroupGetMembers, None, name, 1))
            for member in members:
                memberships.setdefault(member["name"].casefold(), set()).add(name)
        accounts = {}
        users = _enumerate(
            lambda resume: win32net.NetUserEnum(None, 20, _FILTER_NORMAL_ACCOUNT, resume)
        )
        for user in users:
            name = user["name"]
            member_of = memberships.get(name.casefold(), set())
            disabled = bool(user["flags"] & _UF_ACCOUNTDISABLE)
            accounts[name] = LocalAccount(
                name=name,
                uid=None,
                gid=None,
                groups=frozenset(member_of - {administrators}),
                admin=administrators in member_of,
                gecos=user.get("full_name") or "",
                locked=disabled,
                # Windows cannot say; an enabled account is treated as having one.
                has_password=not disabled,
            )
        return LocalSystem(
            accounts=accounts, groups=groups, admin_rights_ready=True, case_insensitive=True
        )

    async def prepare_admin_rights(self) -> None:
        """Do nothing: Administrators always exists."""

    async def create_group(self, name: str, gid: int | None) -> None:
        """NetLocalGroupAdd (Windows has no gids; `gid` is ignored)."""
        data = {"name": name, "comment": "Created by sftd for the sft platform"}
        await _in_thread(lambda: _win32net().NetLocalGroupAdd(None, 1, data))

    async def create_account(self, account: NewAccount) -> None:
        """NetUserAdd, disabled, with a random unknown password; then groups and full name."""
        await _in_thread(lambda: self._create(account))

    def _create(self, account: NewAccount) -> None:
        win32net = _win32net()
        flags = _UF_SCRIPT | _UF_ACCOUNTDISABLE | _UF_DONT_EXPIRE_PASSWD | _UF_PASSWD_CANT_CHANGE
        data = {
            "name": account.name,
            "password": one_time_password(),  # never told to anyone
            "priv": _USER_PRIV_USER,
            "home_dir": None,
            "comment": "Managed by sftd",
            "flags": flags,
            "script_path": None,
        }
        win32net.NetUserAdd(None, 1, data)
        win32net.NetUserSetInfo(None, account.name, 1011, {"full_name": account.gecos})
        wanted = [*account.groups, _builtin_name(_REMOTE_DESKTOP_USERS_SID)]
        if account.admin:
            wanted.append(_builtin_name(_ADMINISTRATORS_SID))
        for group in wanted:
            _add_member(group, account.name)

    async def change_account(self, name: str, change: AccountChange) -> None:
        """Group membership, full name and enabled flag, each through its own Net call."""
        await _in_thread(lambda: self._change(name, change))

    def _change(self, name: str, change: AccountChange) -> None:
        win32net = _win32net()
        if change.locked is True:
            # Disable first, then forget the password: never enabled with an old one.
            _set_disabled(name, True)
            win32net.NetUserSetInfo(None, name, 1003, {"password": one_time_password()})
        if change.groups is not None:
            administrators = _builtin_name(_ADMINISTRATORS_SID)
            current = {
                g
                for g in win32net.NetUserGetLocalGroups(None, name, 0)
                if not _sid_of(g).startswith(_BUILTIN_SID_PREFIX) or g == administrators
            }
            wanted = {*change.groups, *([administrators] if change.admin else [])}
            for group in sorted(current - wanted):
                win32net.NetLocalGroupDelMembers(None, group, [name])
            for group in sorted(wanted - current):
                _add_member(group, name)
        if change.gecos is not None:
            win32net.NetUserSetInfo(None, name, 1011, {"full_name": change.gecos})
        if change.locked is False:
            _set_disabled(name, False)

    async def set_password(self, name: str, password: str) -> None:
        """NetUserSetInfo level 1003."""
        await _in_thread(
            lambda: _win32net().NetUserSetInfo(None, name, 1003, {"password": password})
        )

    async def forget_password(self, name: str) -> None:
        """Replace the password with a random one nobody is told."""
        await self.set_password(name, one_time_password())


def _win32net() -> Any:
    # pywin32 exists only on Windows; imported on first use so this module loads anywhere.
    return importlib.import_module("win32net")


def _win32security() -> Any:
    return importlib.import_module("win32security")


def _set_disabled(name: str, disabled: bool) -> None:
    win32net = _win32net()
    flags = win32net.NetUserGetInfo(None, name, 1)["flags"]
    flags = flags | _UF_ACCOUNTDISABLE if disabled else flags & ~_UF_ACCOUNTDISABLE
    win32net.NetUserSetInfo(None, name, 1008, {"flags": flags})


def _add_member(group: str, name: str) -> None:
    _win32net().NetLocalGroupAddMembers(None, group, 3, [{"domainandname": name}])


def _sid_of(name: str) -> str:
    win32security = _win32security()
    sid, _, _ = win32security.LookupAccountName(None, name)
    return str(win32security.ConvertSidToStringSid(sid))


def _builtin_name(sid: str) -> str:
    win32security = _win32security()
    name, _, _ = win32security.LookupAccountSid(None, win32security.ConvertStringSidToSid(sid))
    return str(name)


def _enumerate(
    call: Callable[[int], tuple[list[dict[str, Any]], int, int]],
) -> list[dict[str, Any]]:
    """Collect every page of a Net*Enum call (they return data, total, resume handle)."""
    items: list[dict[str, Any]] = []
    resume = 0
    while True:
        data, _, resume = call(resume)
        items.extend(data)
        if not resume:
            return items


async def _in_thread(call: Callable[[], T]) -> T:
    """Run a blocking pywin32 call in a thread; turn its errors into BackendError."""
    try:
        return await asyncio.to_thread(call)
    except BackendError:
        raise
    except Exception as error:  # pywintypes.error: (winerror, function, message)
        details: tuple[Any, ...] = tuple(error.args)
        if len(details) == 3:
            raise BackendError(f"{details[1]} failed: {details[2]} ({details[0]})") from None
        raise BackendError(f"Windows account call failed: {error}") from None
