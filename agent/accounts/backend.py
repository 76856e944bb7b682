"""What the reconciler needs from the operating system, and an in-memory one for tests.

This module owns the OS interface (`AccountBackend`) and the values crossing it. It
knows no OS: Linux and Windows implement it in `linux.py` and `windows.py`. It never
decides *what* should change — that is the reconciler's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.accounts.model import DesiredAccount

__all__ = [
    "AccountBackend",
    "AccountChange",
    "BackendError",
    "LocalAccount",
    "LocalSystem",
    "NewAccount",
    "RecordingBackend",
]


class BackendError(Exception):
    """An OS operation failed; the message names the tool and quotes its error."""


@dataclass(frozen=True)
class LocalAccount:
    """One local account as the OS reports it."""

    name: str
    #: None where the OS has no numeric ids (Windows).
    uid: int | None
    gid: int | None
    #: Supplementary groups, without the admin group (that is `admin`).
    groups: frozenset[str]
    #: Linux: member of sft-admin; Windows: member of Administrators.
    admin: bool
    gecos: str
    #: Nobody can log in: Linux `!`-prefixed password field or expired; Windows disabled.
    locked: bool
    #: A usable password is set (a one-time password from the broker, or someone's).
    has_password: bool


@dataclass(frozen=True)
class LocalSystem:
    """A cheap read of every local account and group (Linux: /etc/passwd, group, shadow)."""

    accounts: Mapping[str, LocalAccount]
    #: Local group name -> gid (None on Windows).
    groups: Mapping[str, int | None]
    #: Whether admin grants work already (Linux: group sft-admin and the sudoers drop-in).
    admin_rights_ready: bool
    #: Windows names are case-insensitive; lookups then compare casefolded names.
    case_insensitive: bool = False
    _uids: dict[int, str] = field(init=False, repr=False, compare=False)
    _gids: dict[int, str] = field(init=False, repr=False, compare=False)
    _folded_accounts: dict[str, LocalAccount] = field(init=False, repr=False, compare=False)
    _folded_groups: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        uids = {a.uid: a.name for a in self.accounts.values() if a.uid is not None}
        gids = {gid: name for name, gid in self.groups.items() if gid is not None}
        object.__setattr__(self, "_uids", uids)
        object.__setattr__(self, "_gids", gids)
        folded_accounts = {}
        folded_groups = {}
        if self.case_insensitive:
            folded_accounts = {n.casefold(): a for n, a in self.accounts.items()}
            folded_groups = {n.casefold(): n for n in self.groups}
        object.__setattr__(self, "_folded_accounts", folded_accounts)
        object.__setattr__(self, "_folded_groups", folded_groups)

    def account(self, name: str) -> LocalAccount | None:
        """Return the local account called `name`, if any."""
        if self.case_insensitive:
            return self._folded_accounts.get(name.casefold())
        return self.accounts.get(name)

    def owner_of_uid(self, uid: int) -> str | None:
        """Return the name of the local account with `uid`, if any."""
        return self._uids.get(uid)

    def group_of_gid(self, gid: int) -> str | None:
        """Return the name of the local group with `gid`, if any."""
        return self._gids.get(gid)

    def has_group(self, name: str) -> bool:
        """Return whether a local group called `name` exists."""
        if self.case_insensitive:
            return name.casefold() in self._folded_groups
        return name in self.groups

    def gid_of(self, name: str) -> int | None:
        """Return the gid of group `name` (None if missing or the OS has no gids)."""
        if self.case_insensitive:
            name = self._folded_groups.get(name.casefold(), name)
        return self.groups.get(name)


@dataclass(frozen=True)
class NewAccount:
    """An account to create: the platform's facts, resolved for this OS."""

    #: The local name (Linux name, or the Windows name).
    name: str
    uid: int
    gid: int
    primary_group: str
    groups: tuple[str, ...]
    admin: bool
    gecos: str
    #: Create it locked (Windows always; Linux under zero standing privilege).
    locked: bool


@dataclass(frozen=True)
class AccountChange:
    """Changes to one existing account, applied together (Linux: one `usermod`).

    `groups` and `admin` go together: the OS call sets the complete list.
    """

    groups: tuple[str, ...] | None = None
    admin: bool | None = None
    gecos: str | None = None
    #: True: lock and forget any password. False: unlock. None: leave.
    locked: bool | None = None

    def __post_init__(self) -> None:
        if (self.groups is None) != (self.admin is None):
            raise ValueError("AccountChange sets groups and admin together (the full list)")

    def is_empty(self) -> bool:
        """Return whether this change changes nothing."""
        return self.groups is None and self.gecos is None and self.locked is None

    def describe(self) -> str:
        """Return a short text of what changes, for logs (never a secret)."""
        parts = []
        if self.groups is not None:
            parts.append(f"groups={','.join(self.groups) or '-'} admin={self.admin}")
        if self.gecos is not None:
            parts.append("gecos")
        if self.locked is not None:
            parts.append("lock" if self.locked else "unlock")
        return " ".join(parts) or "nothing"


class AccountBackend(Protocol):
    """The operating system's side of account reconciliation.

    Every method changes one thing and raises BackendError when the OS refuses; none
    decides whether an account is sftd's (the reconciler does, from its record).
    """

    #: Whether accounts have numeric uids/gids and a primary group (Linux yes, Windows no).
    numeric_ids: bool

    def local_name(self, account: DesiredAccount) -> str:
        """Return the name `account` has on this OS."""
        ...

    def name_problem(self, name: str) -> str | None:
        """Return why `name` cannot be a local account here, or None if it can."""
        ...

    async def read(self) -> LocalSystem:
        """Return every local account and group (cheap: no command per account)."""
        ...

    async def prepare_admin_rights(self) -> None:
        """Make admin grants work (Linux: group sft-admin + checked sudoers drop-in)."""
        ...

    async def create_group(self, name: str, gid: int | None) -> None:
        """Create local group `name` (gid None: the OS picks one)."""
        ...

    async def create_account(self, account: NewAccount) -> None:
        """Create `account` with its home; the password field allows no password login."""
        ...

    async def change_account(self, name: str, change: AccountChange) -> None:
        """Apply `change` to account `name`."""
        ...

    async def set_password(self, name: str, password: str) -> None:
        """Set `password` on account `name` (does not unlock it)."""
        ...

    async def forget_password(self, name: str) -> None:
        """Remove any password from account `name` (lock state unchanged)."""
        ...


@dataclass
class _Simulated:
    uid: int
    gid: int
    groups: set[str]
    admin: bool
    gecos: str
    locked: bool
    password: str | None


class RecordingBackend:
    """An in-memory OS that records every call: the reconciler's tests run against it.

    Calls are recorded as `(operation, name)` in `calls`; `fail[(operation, name)]`
    makes that call raise BackendError with the given message.
    """

    numeric_ids = True

    def __init__(self, *, windows: bool = False) -> None:
        self.windows = windows
        self.numeric_ids = not windows
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], str] = {}
        self.admin_ready = False
        self.groups: dict[str, int | None] = {}
        self.accounts: dict[str, _Simulated] = {}
        self._next_gid = 1000

    def add_foreign_account(self, name: str, uid: int, gid: int) -> None:
        """Add an account sftd did not create (a local admin's, or a system one)."""
        self.groups.setdefault(name, gid)
        self.accounts[name] = _Simulated(uid, gid, set(), False, "", False, None)

    def add_group(self, name: str, gid: int) -> None:
        """Add a group sftd did not create."""
        self.groups[name] = gid

    def passwords(self) -> dict[str, str]:
        """Return the passwords set, by account (tests only)."""
        return {n: a.password for n, a in self.accounts.items() if a.password is not None}

    def local_name(self, account: DesiredAccount) -> str:
        """Return the Windows name in Windows mode, else the Linux name."""
        return account.windows_name if self.windows else account.name

    def name_problem(self, name: str) -> str | None:
        """Refuse Windows names over 20 characters in Windows mode."""
        if self.windows and len(name) > 20:
            return f"Windows account names are at most 20 characters; {name!r} has {len(name)}"
        return None

    async def read(self) -> LocalSystem:
        """Return the simulated accounts and groups."""
        accounts = {
            name: LocalAccount(
                name=name,
                uid=None if self.windows else a.uid,
                gid=None if self.windows else a.gid,
                groups=frozenset(a.groups),
                admin=a.admin,
                gecos=a.gecos,
                locked=a.locked,
                has_password=a.password is not None,
            )
            for name, a in self.accounts.items()
        }
        groups = {n: (None if self.windows else g) for n, g in self.groups.items()}
        return LocalSystem(
            accounts=accounts,
            groups=groups,
            admin_rights_ready=self.admin_ready,
            case_insensitive=self.windows,
        )

    def _call(self, operation: str, name: str) -> None:
        self.calls.append((operation, name))
        message = self.fail.get((operation, name))
        if message is not None:
            raise BackendError(message)

    async def prepare_admin_rights(self) -> None:
        """Simulate creating sft-admin and its sudoers drop-in."""
        self._call("prepare_admin_rights", "")
        self.admin_ready = True

    async def create_group(self, name: str, gid: int | None) -> None:
        """Simulate groupadd."""
        self._call("create_group", name)
        if name in self.groups:
            raise BackendError(f"groupadd: group '{name}' already exists")
        if gid is None:
            self._next_gid += 1
            gid = self._next_gid
        self.groups[name] = gid

    async def create_account(self, account: NewAccount) -> None:
        """Simulate useradd."""
        self._call("create_account", account.name)
        if account.name in self.accounts:
            raise BackendError(f"useradd: user '{account.name}' already exists")
        self._check_groups(account.groups)
        if self.numeric_ids and account.primary_group not in self.groups:
            raise BackendError(f"useradd: group '{account.gid}' does not exist")
        self.accounts[account.name] = _Simulated(
            account.uid,
            account.gid,
            set(account.groups),
            account.admin,
            account.gecos,
            account.locked,
            None,
        )

    def _check_groups(self, groups: Iterable[str]) -> None:
        missing = [g for g in groups if g not in self.groups]
        if missing:
            raise BackendError(f"group '{missing[0]}' does not exist")

    def _existing(self, name: str) -> _Simulated:
        try:
            return self.accounts[name]
        except KeyError:
            raise BackendError(f"user '{name}' does not exist") from None

    async def change_account(self, name: str, change: AccountChange) -> None:
        """Simulate usermod."""
        self._call("change_account", name)
        account = self._existing(name)
        if change.groups is not None and change.admin is not None:
            self._check_groups(change.groups)
            account.groups = set(change.groups)
            account.admin = change.admin
        if change.gecos is not None:
            account.gecos = change.gecos
        if change.locked is not None:
            account.locked = change.locked
            if change.locked:
                account.password = None

    async def set_password(self, name: str, password: str) -> None:
        """Simulate chpasswd."""
        self._call("set_password", name)
        self._existing(name).password = password

    async def forget_password(self, name: str) -> None:
        """Simulate `usermod -p '*'`."""
        self._call("forget_password", name)
        self._existing(name).password = None

    def snapshot(self, name: str) -> LocalAccount | None:
        """Return what `read()` would say about `name` (tests only, not recorded)."""
        account = self.accounts.get(name)
        if account is None:
            return None
        return LocalAccount(
            name=name,
            uid=account.uid,
            gid=account.gid,
            groups=frozenset(account.groups),
            admin=account.admin,
            gecos=account.gecos,
            locked=account.locked,
            has_password=account.password is not None,
        )
