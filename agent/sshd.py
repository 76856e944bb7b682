"""sftd's sshd wiring (ManageSSHD): the project's user-CA keys, this server's host
certificates, and a drop-in Included from the top of SSHDConfigFile.

Every change is checked with `sshd -t` and undone file by file if sshd refuses it, so
sshd is never left with a configuration it would not start with; sshd is reloaded only
when a file changed. Writes no file but the four kinds named here.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.config import AgentConfig
from agent.sshd_config import (
    SSHDConfigError,
    certificate_line,
    certificate_path,
    drop_in_path,
    drop_in_text,
    with_include,
)
from agent.sshd_process import SSHD, ReloadFailed, check_config, find_sshd, reload_sshd
from agent.state import HostCertificate, TrustAnchors
from runtime.files import write_atomic

__all__ = ["Installed", "SSHDTrust", "SSHDTrustError"]

log = structlog.get_logger("sftd.sshd")

PUBLIC_FILE_MODE = 0o644
DIRECTORY_MODE = 0o755


class SSHDTrustError(Exception):
    """The sshd wiring was not installed; the message says why and what was undone."""


@dataclass(frozen=True)
class Installed:
    """What one install did."""

    #: The files written, in order; empty when everything was already in place.
    changed: tuple[Path, ...]
    #: How sshd was told ("" when it did not need to be).
    reload: str


@dataclass(frozen=True)
class _Before:
    """A file as it was before an install changed it (content None: it did not exist)."""

    path: Path
    content: bytes | None
    mode: int
    uid: int
    gid: int


def _root_owner() -> tuple[int, int]:
    """Return the owner sftd's files get: root when sftd runs as root, else sftd's user."""
    return (0, 0) if os.geteuid() == 0 else (os.geteuid(), os.getegid())


def _write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Replace `path` atomically with `mode` and owner from the first byte."""
    # The ".sftd" suffix keeps a half-written file out of sshd's `sshd_config.d/*.conf`.
    write_atomic(path, data, mode, owner=(uid, gid), suffix=".sftd")


class _FileChanges:
    """The files one install wrote and what they held before, so they can be put back."""

    def __init__(self) -> None:
        self.before: list[_Before] = []
        self.made_directories: list[Path] = []

    @property
    def changed(self) -> tuple[Path, ...]:
        """Return the files written so far."""
        return tuple(before.path for before in self.before)

    def make_directory(self, path: Path) -> None:
        """Create `path` and its missing parents 0755, remembering each one made."""
        missing = []
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            directory.mkdir(mode=DIRECTORY_MODE)
            self.made_directories.append(directory)
            directory.chmod(DIRECTORY_MODE)  # mkdir's mode is cut by the umask

    def write(self, path: Path, data: bytes, *, keep_mode_and_owner: bool = False) -> None:
        """Replace `path` with `data` unless it holds it already.

        sftd's own files are root's and 0644 (rewritten when they are not); with
        `keep_mode_and_owner` (sshd_config) the file keeps what it had.
        """
        try:
            info = path.stat()
            current: bytes | None = path.read_bytes()
        except FileNotFoundError:
            info, current = None, None
        uid, gid = _root_owner()
        mode = PUBLIC_FILE_MODE
        if info is not None and keep_mode_and_owner:
            uid, gid, mode = info.st_uid, info.st_gid, info.st_mode & 0o7777
        if (
            info is not None
            and current == data
            and (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (uid, gid, mode)
        ):
            return
        _write_file(path, data, mode, uid, gid)  # on failure `path` is as it was
        self.before.append(
            _Before(path, None, 0, 0, 0)
            if info is None
            else _Before(path, current, info.st_mode & 0o7777, info.st_uid, info.st_gid)
        )

    def undo(self) -> list[str]:
        """Put every file back as it was, newest first; return what could not be put back."""
        problems = []
        for before in reversed(self.before):
            try:
                if before.content is None:
                    before.path.unlink(missing_ok=True)
                else:
                    _write_file(before.path, before.content, before.mode, before.uid, before.gid)
            except OSError as exc:
                problems.append(f"{before.path} ({exc.strerror or exc})")
        for directory in reversed(self.made_directories):
            try:
                directory.rmdir()
            except OSError as exc:
                problems.append(f"{directory} ({exc.strerror or exc})")
        return problems


class SSHDTrust:
    """The HostTrustSink for ManageSSHD: wires sshd to the project's CAs.

    `sshd` is the sshd binary to check the configuration with (default: find_sshd()).
    """

    def __init__(self, config: AgentConfig, *, sshd: Path | None = None) -> None:
        self.sshd_config_file = config.sshd_config_file
        self.trusted_user_ca_keys_file = config.trusted_user_ca_keys_file
        self.drop_in = drop_in_path(config.sshd_config_file)
        self.sshd = sshd if sshd is not None else find_sshd()
        self._lock = asyncio.Lock()
        # A change sshd has not been told about yet (its reload failed): told next time.
        self._reload_pending = False

    async def install(
        self, anchors: TrustAnchors, certificates: tuple[HostCertificate, ...]
    ) -> Installed:
        """Install the user-CA keys and host certificates; check with sshd -t; reload if changed."""
        async with self._lock:
            return await asyncio.to_thread(self._install, anchors, certificates)

    def _refuse(self, message: str) -> SSHDTrustError:
        """Log `message` as the one line about this failure; return the error to raise."""
        log.error("sshd wiring not installed", reason=message)
        return SSHDTrustError(message)

    def _install(
        self, anchors: TrustAnchors, certificates: tuple[HostCertificate, ...]
    ) -> Installed:
        """Do install's blocking work."""
        sshd = self.sshd
        if sshd is None:
            raise self._refuse(
                f"no sshd to check the configuration with (not at {SSHD}, none on PATH); install "
                "the OpenSSH server, or set ManageSSHD: false"
            )
        files = self._wanted_files(anchors, certificates)
        changes = _FileChanges()
        target = self.trusted_user_ca_keys_file.parent
        try:
            for target in (self.trusted_user_ca_keys_file.parent, self.drop_in.parent):
                changes.make_directory(target)
            for target, data in files:
                # sshd_config is the operator's file: it keeps its mode and owner.
                mine = target != self.sshd_config_file
                changes.write(target, data, keep_mode_and_owner=not mine)
        except OSError as exc:
            hint = " (ManageSSHD needs sftd to run as root)" if os.geteuid() != 0 else ""
            undone = self._undo(changes)
            raise self._refuse(
                f"cannot write {target}: {exc.strerror or exc}{hint}; {undone}, sshd not reloaded"
            ) from None
        if changes.changed:
            complaint = check_config(sshd, self.sshd_config_file)
            if complaint is not None:
                undone = self._undo(changes)
                already = check_config(sshd, self.sshd_config_file)
                advice = (
                    f"; sshd -t refuses {self.sshd_config_file} without them too ({already}): "
                    "fix it, and sftd tries again at the next change or restart"
                    if already is not None
                    else ""
                )
                raise self._refuse(
                    f"sshd -t refused {self.sshd_config_file} with sftd's changes ({complaint}); "
                    f"{undone}, sshd not reloaded{advice}"
                )
            self._reload_pending = True
            log.info("sshd wiring installed", changed=[str(path) for path in changes.changed])
        reload = ""
        if self._reload_pending:
            try:
                reload = reload_sshd(sshd, self.sshd_config_file)
            except ReloadFailed as exc:
                raise self._refuse(
                    f"{exc}; the new files are in place and pass sshd -t, and the reload is "
                    "tried again with the next change"
                ) from None
            self._reload_pending = False
        return Installed(changes.changed, reload)

    def _wanted_files(
        self, anchors: TrustAnchors, certificates: tuple[HostCertificate, ...]
    ) -> list[tuple[Path, bytes]]:
        """Return every file and its content, SSHDConfigFile last (its Include needs the rest)."""
        keys = anchors.trusted_user_ca_keys.strip()
        if not keys:
            raise self._refuse(
                "the platform sent no user CA keys; the installed ones are kept (an empty "
                "TrustedUserCAKeys file would refuse every certificate)"
            )
        try:
            text = self.sshd_config_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self._refuse(
                f"SSHDConfigFile {self.sshd_config_file} does not exist; set SSHDConfigFile to "
                "sshd's configuration file, or ManageSSHD: false"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise self._refuse(
                f"cannot read SSHDConfigFile {self.sshd_config_file}: {reason}"
            ) from None
        files = [(self.trusted_user_ca_keys_file, (keys + "\n").encode())]
        installed: dict[Path, None] = {}
        try:
            for certificate in certificates:
                host_key = Path(certificate.host_key_file)
                target = certificate_path(host_key)
                if target in installed:
                    continue
                if not host_key.is_file():
                    log.warning(
                        "host key is gone; its certificate is not installed",
                        host_key=str(host_key),
                        fingerprint=certificate.host_key_fingerprint,
                    )
                    continue
                files.append((target, certificate_line(certificate.certificate).encode()))
                installed[target] = None
            drop_in = drop_in_text(
                self.sshd_config_file, self.trusted_user_ca_keys_file, list(installed)
            )
            wired = with_include(text, self.drop_in)
        except SSHDConfigError as exc:
            raise self._refuse(f"{exc}; nothing was changed") from None
        files.append((self.drop_in, drop_in.encode()))
        files.append((self.sshd_config_file, wired.encode()))
        return files

    def _undo(self, changes: _FileChanges) -> str:
        """Put back what `changes` wrote; return a few words saying how that went."""
        problems = changes.undo()
        count = len(changes.changed)
        if problems:
            return f"could not restore {', '.join(problems)}"
        return f"restored {count} file{'s' if count != 1 else ''}" if count else "nothing changed"
