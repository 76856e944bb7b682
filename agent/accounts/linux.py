"""Linux accounts through the system's own tools (shadow-utils and visudo).

Runs useradd, usermod, groupadd, chpasswd and visudo as argument lists (never a
shell), checks their exit codes, and quotes their stderr in errors. Reads accounts
straight from /etc/passwd, /etc/group and /etc/shadow: one parse, no command per
account. Passwords travel on chpasswd's stdin, never on a command line or in a log.

What the states mean in the password database (sshd, with or without PAM, agrees):
- usable with certificates only: password field `*` (no password matches it). Not
  `!`: with `UsePAM no`, sshd refuses `!`-prefixed accounts even with a valid
  certificate.
- locked: password field `!*` (any password forgotten) and the account expired on
  1970-01-02. sshd refuses both with `UsePAM no`; with PAM, pam_unix's account stage
  refuses the expired account. Home and files stay; running sessions are not killed.
- enabled by the broker: a one-time password hash (SHA-512), not expired.

Admin = membership of group `sft-admin`, which the drop-in
`/etc/sudoers.d/sft-admin` grants `ALL=(ALL:ALL) NOPASSWD: ALL`. NOPASSWD because
sft accounts have no password to type: they log in with certificates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.accounts.backend import (
    AccountChange,
    BackendError,
    LocalAccount,
    LocalSystem,
    NewAccount,
)
from agent.accounts.model import DesiredAccount

__all__ = [
    "ADMIN_GROUP",
    "SUDOERS_RULE",
    "CommandRunner",
    "LinuxAccounts",
    "run_command",
]

ADMIN_GROUP = "sft-admin"
SUDOERS_RULE = (
    "# Written by sftd. Members of sft-admin were granted admin on this server's\n"
    "# project. NOPASSWD: sft accounts have no password (certificate logins only).\n"
    f"%{ADMIN_GROUP} ALL=(ALL:ALL) NOPASSWD: ALL\n"
)
SHELL = "/bin/bash"
CERTIFICATE_ONLY = "*"
LOCKED = "!*"
#: 1970-01-02: day 1 since the epoch, so the account has expired on every clock.
EXPIRED = "1970-01-02"
# A minimal, known environment: C-locale messages, and the sbin directories on PATH.
_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_COMMAND_TIMEOUT_SECONDS = 120.0

#: Runs one command: argv, optional stdin; raises BackendError when it fails.
CommandRunner = Callable[[Sequence[str], bytes | None], Awaitable[None]]


async def run_command(argv: Sequence[str], stdin: bytes | None = None) -> None:
    """Run `argv` (no shell) with a minimal environment; raise BackendError on failure."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_ENVIRONMENT,
        )
    except OSError as error:
        raise BackendError(f"{argv[0]}: cannot run it: {error}") from None
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(stdin), timeout=_COMMAND_TIMEOUT_SECONDS
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BackendError(f"{argv[0]} did not finish in {_COMMAND_TIMEOUT_SECONDS:.0f}s") from None
    if process.returncode != 0:
        said = (stderr or stdout).decode("utf-8", errors="replace").strip()
        raise BackendError(f"{argv[0]} exited with {process.returncode}: {said or 'no output'}")


@dataclass(frozen=True)
class _Entry:
    name: str
    uid: int
    gid: int
    gecos: str


class LinuxAccounts:
    """The AccountBackend for Linux (shadow-utils; sudo for admin rights).

    `etc_dir` is where the account files are read (tests point it at fixtures); the
    tools always change the system's own /etc. `run` runs each command (tests and
    the benchmark count or fake them).
    """

    numeric_ids = True

    def __init__(
        self,
        *,
        etc_dir: Path = Path("/etc"),
        sudoers_file: Path = Path("/etc/sudoers.d/sft-admin"),
        home_base: Path = Path("/home"),
        run: CommandRunner = run_command,
    ) -> None:
        self.etc_dir = etc_dir
        self.sudoers_file = sudoers_file
        self.home_base = home_base
        self.run = run

    def local_name(self, account: DesiredAccount) -> str:
        """Return the Linux name."""
        return account.name

    def name_problem(self, name: str) -> str | None:
        """Return None: the reconciler's rules are Linux's."""
        return None

    async def read(self) -> LocalSystem:
        """Parse passwd, group and shadow (in a thread: no blocking on the event loop)."""
        return await asyncio.to_thread(self.read_now)

    def read_now(self) -> LocalSystem:
        """Parse passwd, group and shadow now."""
        entries = _parse_passwd(_read(self.etc_dir / "passwd"))
        groups, members = _parse_group(_read(self.etc_dir / "group"))
        passwords = _parse_shadow(_read(self.etc_dir / "shadow"))
        today = (dt.datetime.now(dt.UTC).date() - dt.date(1970, 1, 1)).days
        memberships: dict[str, set[str]] = {}
        for group, names in members.items():
            for name in names:
                memberships.setdefault(name, set()).add(group)
        accounts = {}
        for entry in entries:
            field, expire = passwords.get(entry.name, ("*", None))
            groups_of = memberships.get(entry.name, set())
            accounts[entry.name] = LocalAccount(
                name=entry.name,
                uid=entry.uid,
                gid=entry.gid,
                groups=frozenset(groups_of - {ADMIN_GROUP}),
                admin=ADMIN_GROUP in groups_of,
                gecos=entry.gecos,
                locked=field.startswith("!") or (expire is not None and expire <= today),
                has_password=_usable(field),
            )
        ready = ADMIN_GROUP in groups and _read_optional(self.sudoers_file) == SUDOERS_RULE
        return LocalSystem(accounts=accounts, groups=groups, admin_rights_ready=ready)

    async def prepare_admin_rights(self) -> None:
        """Create group sft-admin (a system group) if missing, and the sudoers drop-in."""
        groups, _ = await asyncio.to_thread(lambda: _parse_group(_read(self.etc_dir / "group")))
        if ADMIN_GROUP not in groups:
            await self.run(["groupadd", "--system", "--", ADMIN_GROUP], None)
        await self.install_sudoers(SUDOERS_RULE)

    async def install_sudoers(self, content: str) -> None:
        """Put `content` at the sudoers drop-in if `visudo -c` accepts it; else keep the old.

        Written beside it under a name with a '.', which sudo's @includedir skips, so
        sudo never reads the unchecked file; then renamed into place, mode 0440.
        """
        directory = self.sudoers_file.parent
        checking = directory / f".{self.sudoers_file.name}.sftd-new"
        await asyncio.to_thread(_write_private, checking, content, 0o440)
        try:
            await self.run(["visudo", "--check", "--quiet", "--file", str(checking)], None)
        except BackendError as error:
            await asyncio.to_thread(_unlink, checking)
            raise BackendError(
                f"sudoers drop-in refused by visudo, {self.sudoers_file} unchanged: {error}"
            ) from None
        await asyncio.to_thread(_replace, checking, self.sudoers_file)

    async def create_group(self, name: str, gid: int | None) -> None:
        """Run groupadd."""
        argv = ["groupadd"]
        if gid is not None:
            argv += ["--gid", str(gid)]
        await self.run([*argv, "--", name], None)

    async def create_account(self, account: NewAccount) -> None:
        """Run useradd: platform uid/gid, home, bash, password field `*` (or locked)."""
        groups = [*account.groups, *([ADMIN_GROUP] if account.admin else [])]
        argv = [
            "useradd",
            # Without it useradd writes lastlog/faillog records at offset uid x record
            # size: ever larger sparse files for the platform's 60001+ uids.
            "--no-log-init",
            "--uid", str(account.uid),
            "--gid", str(account.gid),
            "--home-dir", str(self.home_base / account.name),
            "--create-home",
            "--shell", SHELL,
            "--comment", account.gecos,
            "--password", LOCKED if account.locked else CERTIFICATE_ONLY,
        ]  # fmt: skip
        if groups:
            argv += ["--groups", ",".join(groups)]
        if account.locked:
            argv += ["--expiredate", EXPIRED]
        await self.run([*argv, "--", account.name], None)

    async def change_account(self, name: str, change: AccountChange) -> None:
        """Run one usermod with every change."""
        argv = ["usermod"]
        if change.groups is not None:
            groups = [*change.groups, *([ADMIN_GROUP] if change.admin else [])]
            argv += ["--groups", ",".join(groups)]
        if change.gecos is not None:
            argv += ["--comment", change.gecos]
        if change.locked is True:
            argv += ["--password", LOCKED, "--expiredate", EXPIRED]
        elif change.locked is False:
            # Empty --expiredate removes the expiry; --unlock drops the leading '!'.
            argv += ["--unlock", "--expiredate", ""]
        if len(argv) > 1:
            await self.run([*argv, "--", name], None)

    async def set_password(self, name: str, password: str) -> None:
        """Run chpasswd with `name:password` on stdin (hashed with SHA-512, not via PAM)."""
        if any(c in password for c in ":\n\r\0"):
            raise BackendError("chpasswd: the password contains ':' or a line break")
        line = f"{name}:{password}\n".encode()
        await self.run(["chpasswd", "--crypt-method", "SHA512"], line)

    async def forget_password(self, name: str) -> None:
        """Set the password field back to `*` (`!*` if it was locked)."""
        passwords = await asyncio.to_thread(lambda: _parse_shadow(_read(self.etc_dir / "shadow")))
        field, _ = passwords.get(name, ("", None))
        await self.run(
            ["usermod", "--password", LOCKED if field.startswith("!") else "*", "--", name], None
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise BackendError(f"cannot read {path}: {error}") from None


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BackendError(f"cannot read {path}: {error}") from None


def _fields(text: str, count: int) -> list[list[str]]:
    """Split colon-separated lines; skip blanks, comments, NIS `+`/`-` lines, short lines."""
    rows = []
    for line in text.splitlines():
        if not line or line[0] in "#+-":
            continue
        parts = line.split(":")
        if len(parts) >= count:
            rows.append(parts)
    return rows


def _parse_passwd(text: str) -> list[_Entry]:
    entries = []
    for parts in _fields(text, 7):
        try:
            entries.append(_Entry(parts[0], int(parts[2]), int(parts[3]), parts[4]))
        except ValueError:
            continue
    return entries


def _parse_group(text: str) -> tuple[dict[str, int | None], dict[str, list[str]]]:
    groups: dict[str, int | None] = {}
    members: dict[str, list[str]] = {}
    for parts in _fields(text, 4):
        try:
            groups[parts[0]] = int(parts[2])
        except ValueError:
            continue
        members[parts[0]] = [m for m in parts[3].split(",") if m]
    return groups, members


def _parse_shadow(text: str) -> dict[str, tuple[str, int | None]]:
    """Return name -> (password field, expiry in days since the epoch or None)."""
    passwords = {}
    for parts in _fields(text, 8):
        expire = parts[7].strip()
        passwords[parts[0]] = (parts[1], int(expire) if expire.isdigit() else None)
    return passwords


def _usable(field: str) -> bool:
    """Return whether a password field holds a password (an empty one counts: it lets anyone in)."""
    bare = field.lstrip("!")
    return not bare.startswith("*") and bare != "x"


def _write_private(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    _unlink(path)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _replace(source: Path, target: Path) -> None:
    os.replace(source, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
