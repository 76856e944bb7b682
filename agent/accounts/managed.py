"""sftd's record of the local accounts it created: the only proof an account is ours.

The record is one JSON file in StateDir (mode 0600, replaced atomically). An account
missing from it is never changed by sftd, whatever its name. A creation is recorded
as *pending* before the OS call, so a crash between the two cannot turn an account
sftd made into one it refuses to manage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.files import write_atomic

__all__ = ["RECORD_FILE", "CorruptRecord", "ManagedAccount", "ManagedAccounts"]

#: The record's file name inside StateDir.
RECORD_FILE = "managed-accounts.json"
_VERSION = 1


class CorruptRecord(Exception):
    """The record cannot be read; sftd must not guess which accounts are its own."""


@dataclass(frozen=True)
class ManagedAccount:
    """One account sftd created."""

    #: The platform's account name (the key of DesiredAccount).
    name: str
    #: Its name on this OS (the Windows name on Windows).
    local_name: str
    #: The platform user it belongs to (teams/T/users/U), for logs.
    user: str
    uid: int
    gid: int
    #: Whether the platform still grants it. Revoked accounts stay locked, never enabled.
    granted: bool
    #: Recorded before the OS call that creates it; cleared once the call succeeded.
    pending: bool = False


_FIELDS: dict[str, type] = {
    "name": str,
    "local_name": str,
    "user": str,
    "uid": int,
    "gid": int,
    "granted": bool,
    "pending": bool,
}


class ManagedAccounts:
    """The record, in memory, with one lock that serialises every change to accounts.

    The reconciler and the broker's enable/disable share one instance, so a grant
    and a revocation of the same account never interleave.
    """

    def __init__(self, path: Path, accounts: Iterable[ManagedAccount] = ()) -> None:
        self.path = path
        self._accounts = {a.name: a for a in accounts}
        self.lock = asyncio.Lock()

    @classmethod
    def load(cls, path: Path) -> ManagedAccounts:
        """Read the record at `path` (empty if the file does not exist yet)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as error:
            raise CorruptRecord(
                f"cannot read the managed-accounts record {path}: {error}"
            ) from None
        try:
            document = json.loads(text)
            accounts = [_parse_account(item) for item in _accounts_list(document)]
        except (ValueError, TypeError) as error:
            raise CorruptRecord(
                f"the managed-accounts record {path} is corrupt ({error}); sftd will not "
                "change any account until it is restored from a backup or removed (then "
                "every existing account is treated as not sftd's)"
            ) from None
        return cls(path, accounts)

    @property
    def accounts(self) -> Mapping[str, ManagedAccount]:
        """Every recorded account, by platform name."""
        return self._accounts

    def get(self, name: str) -> ManagedAccount | None:
        """Return the record of account `name`, if sftd created it."""
        return self._accounts.get(name)

    def by_local_name(self, local_name: str) -> ManagedAccount | None:
        """Return the record whose OS name is `local_name` (linear; for the control channel)."""
        for account in self._accounts.values():
            if account.local_name == local_name:
                return account
        return None

    def put(self, account: ManagedAccount) -> None:
        """Record `account` in memory (save() writes it)."""
        self._accounts[account.name] = account

    def forget(self, name: str) -> None:
        """Drop the record of `name` in memory (a pending creation that never happened)."""
        self._accounts.pop(name, None)

    def set_granted(self, name: str, granted: bool) -> None:
        """Record whether the platform grants `name`."""
        current = self._accounts[name]
        if current.granted != granted:
            self._accounts[name] = replace(current, granted=granted)

    def save(self) -> None:
        """Write the record atomically, mode 0600 (written beside it, fsynced, renamed)."""
        # One account a line: readable, diffable, and json's fast C encoder (no indent).
        lines = [
            json.dumps({key: getattr(a, key) for key in _FIELDS})
            for a in sorted(self._accounts.values(), key=_by_name)
        ]
        text = f'{{"version": {_VERSION}, "accounts": [\n' + ",\n".join(lines) + "\n]}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, text.encode())


def _by_name(account: ManagedAccount) -> str:
    return account.name


def _accounts_list(document: Any) -> list[Any]:
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise ValueError(f"expected an object with version {_VERSION}")
    accounts = document.get("accounts")
    if not isinstance(accounts, list):
        raise ValueError("'accounts' is not a list")
    return accounts


def _parse_account(item: Any) -> ManagedAccount:
    if not isinstance(item, dict) or set(item) != set(_FIELDS):
        raise ValueError(f"an account entry must have exactly the fields {sorted(_FIELDS)}")
    for key, kind in _FIELDS.items():
        value = item[key]
        # bool is an int in Python; an uid of `true` is as corrupt as one of "x".
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"field {key!r} of {item.get('name')!r} is not a {kind.__name__}")
    return ManagedAccount(**item)
