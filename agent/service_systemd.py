"""The systemd unit of sftd: write it, enable and start it; stop, disable and remove it.

Touches only `<unit dir>/sftd.service`, and only a file it wrote (the first line is
its marker); everything else goes through `systemctl`, and only when systemd is
running (`/run/systemd/system` exists). systemd cannot run on the machines the tests
run on: the systemctl calls are checked there as argv through an injected runner, and
the unit text with `systemd-analyze verify`; they have not been run against a live
systemd by the tests.

Hardening: sftd must stay able to run useradd/usermod, write /etc/passwd,
/etc/sudoers.d, sshd's config and users' homes, reload sshd, and start the broker
through setpriv. So no ProtectSystem= or ProtectHome= (read-only /etc, /usr, /home),
no NoNewPrivileges= and no SystemCallFilter= (setpriv, useradd and visudo as
children), no ReadWritePaths= allow-list (any path sftd.yaml names must stay
writable), no ProtectHostname= (a private UTS namespace hides a later change of the
host name, which sftd reports), no UMask= tighter than the default (homes and sshd
files are made by tools that follow it), no MemoryDenyWriteExecute= (cffi callbacks
in cryptography need writable code pages). What it can do without: kernel tunables,
modules, kernel logs and cgroups stay read-only, /tmp is private, no realtime, one
personality, native syscalls only, and capabilities it never uses are out of the
bounding set.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from agent.service import (
    SERVICE_NAME,
    CommandResult,
    Runner,
    ServiceError,
    ServiceSpec,
    run_command,
)
from runtime.files import fsync_dir, write_atomic

__all__ = [
    "DEFAULT_UNIT_DIR",
    "MARKER",
    "SYSTEMD_RUNNING",
    "UNIT_FILE_MODE",
    "UNIT_NAME",
    "SystemdService",
    "exec_argument",
    "unit_text",
]

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")
UNIT_NAME = f"{SERVICE_NAME}.service"
UNIT_FILE_MODE = 0o644
#: The first line of every unit sftd writes; without it, a unit file is not sftd's.
MARKER = "# Written by `sftd service install`; `sftd service uninstall` removes it."

_UNSAFE_CHARACTERS = frozenset("\x7f'\"\\$")

# Capabilities root has that sftd and its children (useradd, visudo, setpriv, the
# broker, systemctl) never use.
_UNUSED_CAPABILITIES = (
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_MKNOD",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
)


def exec_argument(value: str) -> str:
    """Return `value` as one word of ExecStart= (quoted when it holds a space, `%` doubled).

    ServiceError for a control character, a quote, a backslash or `$`: systemd refuses
    the first three in a program's path ("special characters") and expands `$VARIABLES`
    in arguments, and such paths are rare enough to refuse than to escape per position.
    """
    bad = sorted({char for char in value if ord(char) < 0x20 or char in _UNSAFE_CHARACTERS})
    if bad:
        shown = ", ".join(repr(char) for char in bad)
        raise ServiceError(f"cannot put {value!r} in a systemd unit: it holds {shown}")
    # systemd expands %-specifiers in ExecStart=; doubled, they are literal.
    escaped = value.replace("%", "%%")
    return f'"{escaped}"' if not value or any(char.isspace() for char in value) else escaped


def unit_text(spec: ServiceSpec) -> str:
    """Return the unit file that runs `spec` (the same text for the same spec)."""
    command = " ".join(exec_argument(part) for part in spec.argv())
    return "\n".join(
        [
            MARKER,
            "# Change sftd's settings in its sftd.yaml (named below), not here.",
            "[Unit]",
            "Description=sft server agent (sftd)",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={command}",
            "Restart=on-failure",
            "RestartSec=5s",
            "# Exit status 2 is a bad sftd.yaml: restarting would only repeat the error.",
            "RestartPreventExitStatus=2",
            "# sftd stops its broker itself, then disables the accounts grants still hold.",
            "KillMode=mixed",
            "TimeoutStopSec=30s",
            "PrivateTmp=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "RestrictRealtime=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
            f"CapabilityBoundingSet=~{' '.join(_UNUSED_CAPABILITIES)}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


class SystemdService:
    """sftd as a systemd service (a ServiceManager)."""

    def __init__(
        self,
        unit_dir: Path = DEFAULT_UNIT_DIR,
        *,
        runner: Runner = run_command,
        systemd_running: Path = SYSTEMD_RUNNING,
        systemctl: str | None = None,
    ) -> None:
        self.unit_dir = unit_dir
        self.unit_file = unit_dir / UNIT_NAME
        self._runner = runner
        self._systemd_running = systemd_running
        self._systemctl = systemctl or shutil.which("systemctl") or "/usr/bin/systemctl"

    def install(self, spec: ServiceSpec) -> str:
        """Write the unit (atomically, only if it differs), then enable and start it."""
        text = unit_text(spec)
        current = self._current_text()
        changed = current != text
        if changed:
            if not self.unit_dir.is_dir():
                raise ServiceError(
                    f"{self.unit_dir} is not a directory; is systemd installed here? "
                    "(--unit-dir names another)"
                )
            try:
                write_atomic(self.unit_file, text.encode("utf-8"), UNIT_FILE_MODE)
            except OSError as exc:
                raise ServiceError(
                    f"cannot write {self.unit_file}: {exc.strerror or exc}"
                ) from None
        wrote = f"wrote {self.unit_file}" if changed else f"{self.unit_file} is up to date"
        if not self._systemd_is_running():
            return (
                f"{wrote}; systemd is not running here, so nothing was started "
                f"(start it with `systemctl daemon-reload && systemctl enable --now {UNIT_NAME}` "
                f"where systemd runs, or run `{shlex.join(spec.argv())}`)"
            )
        if changed:
            self._systemctl_call("daemon-reload")
        self._systemctl_call("enable", "--now", UNIT_NAME)
        if changed and current is not None:
            # enable --now leaves a running sftd alone; the new command needs a restart.
            self._systemctl_call("try-restart", UNIT_NAME)
        return f"{wrote}; {UNIT_NAME} is enabled and started"

    def uninstall(self) -> str:
        """Stop and disable sftd, then remove its unit; nothing to do when there is none."""
        if self._current_text() is None:
            return f"{self.unit_file} does not exist; nothing to uninstall"
        running = self._systemd_is_running()
        if running:
            self._systemctl_call("disable", "--now", UNIT_NAME)
        try:
            self.unit_file.unlink()
            fsync_dir(self.unit_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ServiceError(f"cannot remove {self.unit_file}: {exc.strerror or exc}") from None
        if not running:
            return f"removed {self.unit_file} (systemd is not running here: nothing to stop)"
        self._systemctl_call("daemon-reload")
        return f"stopped and disabled {UNIT_NAME}; removed {self.unit_file}"

    def _current_text(self) -> str | None:
        """Return the text of the unit sftd wrote, None when absent; refuse anything else."""
        path = self.unit_file
        if path.is_symlink():
            target = os.readlink(path)
            hint = f"; `systemctl unmask {UNIT_NAME}` first" if target == os.devnull else ""
            raise ServiceError(f"{path} is a link to {target}, not a unit sftd wrote{hint}")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ServiceError(f"cannot read {path}: {reason or exc}") from None
        if text.split("\n", 1)[0] != MARKER:
            raise ServiceError(
                f"{path} was not written by sftd; leaving it alone (move it aside to let "
                "`sftd service` manage the unit)"
            )
        return text

    def _systemd_is_running(self) -> bool:
        return self._systemd_running.is_dir()

    def _systemctl_call(self, *args: str) -> CommandResult:
        argv = [self._systemctl, *args]
        result = self._runner(argv)
        if result.returncode != 0:
            raise ServiceError(f"`systemctl {' '.join(args)}` failed: {result.first_line()}")
        return result
