"""The OS user the broker runs as (Linux): found, or created as a system user by root sftd.

Creates only the broker's own system user (useradd, an argument list); never changes
an existing account. Not root: the broker runs as sftd's own user, since only root
may switch users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.state import StateError

__all__ = ["BrokerAccount", "BrokerAccountError", "broker_account"]

log = structlog.get_logger("sftd.broker")

#: The broker logs in nowhere and owns no home.
NO_HOME = "/nonexistent"
NO_LOGIN_SHELL = "/usr/sbin/nologin"
_USERADD_TIMEOUT_SECONDS = 30

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class BrokerAccountError(StateError):
    """The broker's user cannot be found or made; the message says what to do (exit 1)."""


@dataclass(frozen=True)
class BrokerAccount:
    """Who the broker runs as."""

    name: str
    uid: int
    gid: int
    #: True when this is another user than sftd's (sftd switches to it at spawn).
    separate: bool

    @property
    def group(self) -> int | None:
        """Return the group to open the control socket and StateDir to (None: sftd's own)."""
        return self.gid if self.separate else None


def _useradd(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=_USERADD_TIMEOUT_SECONDS,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )


def _lookup(name: str) -> tuple[int, int] | None:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def broker_account(name: str, *, run: Runner = _useradd) -> BrokerAccount:
    """Return the broker's account: `name` when sftd is root (created if missing), else sftd's.

    Runs before sftd's event loop starts (useradd blocks). Refuses a `name` that maps
    to uid 0 or gid 0: the broker must not be root.
    """
    import pwd

    euid = os.geteuid()
    if euid != 0:
        own = pwd.getpwuid(euid)
        log.info("sftd is not root; the broker runs as sftd's user", user=own.pw_name, uid=euid)
        return BrokerAccount(own.pw_name, euid, os.getegid(), separate=False)
    found = _lookup(name)
    if found is None:
        useradd = shutil.which("useradd", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if useradd is None:
            raise BrokerAccountError(
                f"the broker's user {name!r} does not exist and useradd is not installed; "
                "create it (a system user without a home or login shell) or set BrokerUser"
            )
        argv = [
            useradd, "--system", "--no-create-home", "--home-dir", NO_HOME,
            "--shell", NO_LOGIN_SHELL, "--user-group", name,
        ]  # fmt: skip
        result = run(argv)
        if result.returncode != 0:
            output = " ".join((result.stderr or result.stdout).split())[:300]
            raise BrokerAccountError(
                f"cannot create the broker's user {name!r}: useradd exited with "
                f"{result.returncode}: {output}"
            )
        found = _lookup(name)
        if found is None:
            raise BrokerAccountError(f"useradd made no user {name!r}; check /etc/passwd")
        log.info("created the broker's system user", user=name, uid=found[0], gid=found[1])
    uid, gid = found
    if uid == 0 or gid == 0:
        raise BrokerAccountError(
            f"BrokerUser {name!r} is uid {uid}, gid {gid}: the broker must not run as root or "
            "group root; set BrokerUser to an unprivileged system user"
        )
    return BrokerAccount(name, uid, gid, separate=True)
