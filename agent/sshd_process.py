"""The sshd on this machine: where its binary is, whether it accepts a configuration
(`sshd -t`), and how to make the running one reread it (systemd or SIGHUP).

Signals only a process that is sshd by name, and only the one its PidFile names.
Blocking: callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import structlog

from agent.sshd_config import pid_file_setting

__all__ = [
    "DEFAULT_PID_FILE",
    "SSHD",
    "ReloadFailed",
    "check_config",
    "find_sshd",
    "reload_sshd",
]

log = structlog.get_logger("sftd.sshd")

#: sshd re-executes itself by the path it was started with, so it is always run by one.
SSHD = Path("/usr/sbin/sshd")
COMMAND_TIMEOUT_SECONDS = 30.0
#: sshd's PidFile when the configuration names none.
DEFAULT_PID_FILE = Path("/run/sshd.pid")
#: sshd's privilege-separation directory (Debian's build).
PRIVSEP_DIR = Path("/run/sshd")
#: systemd's names for the OpenSSH server (Debian and Ubuntu: ssh; most others: sshd).
SYSTEMD_UNITS = ("ssh.service", "sshd.service")
#: Exists exactly when systemd is the running init (what sd_booted() checks).
SYSTEMD_RUNNING = Path("/run/systemd/system")
NOT_RUNNING = "sshd is not running"


class ReloadFailed(Exception):
    """systemd refused to reload sshd; the message is its first line of complaint."""


def find_sshd() -> Path | None:
    """Return sshd's absolute path: /usr/sbin/sshd, else the first on PATH; None if absent."""
    if SSHD.is_file() and os.access(SSHD, os.X_OK):
        return SSHD
    found = shutil.which("sshd")
    return Path(found).absolute() if found else None


def _first_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the first non-blank line a command printed, or its exit status."""
    for line in (result.stderr + result.stdout).splitlines():
        if line.strip():
            return line.strip()
    return f"exit status {result.returncode}"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` (never through a shell), bounded by COMMAND_TIMEOUT_SECONDS."""
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


def _ensure_privsep_dir() -> None:
    """Create sshd's privilege-separation directory when it is missing, as its service does.

    `sshd -t` refuses to check anything without it, and on a machine whose sshd is not
    running (Debian makes it with systemd's RuntimeDirectory) it is often absent.
    """
    if os.name != "posix" or os.geteuid() != 0 or PRIVSEP_DIR.exists():
        return
    if PRIVSEP_DIR.parent.is_dir():
        with contextlib.suppress(OSError):
            PRIVSEP_DIR.mkdir(mode=0o755)


def check_config(sshd: Path, config_file: Path) -> str | None:
    """Run `sshd -t -f config_file`; return None if sshd accepts it, else its complaint."""
    _ensure_privsep_dir()
    try:
        result = _run([str(sshd), "-t", "-f", str(config_file)])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run {sshd}: {exc}"
    return None if result.returncode == 0 else _first_line(result)


def reload_sshd(sshd: Path, config_file: Path) -> str:
    """Make the sshd running `config_file` reread it; return how it was told.

    systemctl reload when systemd runs that sshd (its unit is active and its main pid
    is the one in the PidFile, or the configuration sets `PidFile none`), else SIGHUP
    to the PidFile's pid; with no sshd running, nothing (it reads the files when it
    starts). Another sshd, such as the machine's own beside a test's, is never told.
    ReloadFailed when systemctl fails.
    """
    pid_file = _pid_file(sshd, config_file)
    pid = _running_sshd(pid_file) if pid_file is not None else None
    unit = _systemd_unit()
    how = NOT_RUNNING
    if unit is not None and (pid_file is None or (pid is not None and _unit_main_pid(unit) == pid)):
        result = _run([_systemctl(), "reload", unit])
        if result.returncode != 0:
            raise ReloadFailed(f"systemctl reload {unit} failed ({_first_line(result)})")
        how = f"systemctl reload {unit}"
    elif pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
            how = f"SIGHUP to pid {pid}"
        except ProcessLookupError:
            pass
    if how == NOT_RUNNING:
        log.info("sshd is not running; it reads the new files when it starts")
    else:
        log.info("sshd reloaded", how=how)
    return how


def _running_sshd(pid_file: Path) -> int | None:
    """Return the pid in `pid_file` if that process is sshd, else None."""
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
        name = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if name != "sshd":
        # A stale PidFile: the pid now belongs to something else, which must not get a SIGHUP.
        log.warning("sshd's PidFile names a process that is not sshd", pid=pid, process=name)
        return None
    return pid


def _pid_file(sshd: Path, config_file: Path) -> Path | None:
    """Return the PidFile `config_file` sets (as `sshd -T` reports it), else the default."""
    try:
        result = _run([str(sshd), "-T", "-f", str(config_file)])
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_PID_FILE
    if result.returncode != 0:
        return DEFAULT_PID_FILE
    return pid_file_setting(result.stdout, DEFAULT_PID_FILE)


def _systemctl() -> str:
    """Return systemctl's path."""
    return shutil.which("systemctl") or "/usr/bin/systemctl"


def _systemd_unit() -> str | None:
    """Return the active systemd unit of the OpenSSH server, or None (no systemd, or no unit)."""
    if not SYSTEMD_RUNNING.is_dir() or shutil.which("systemctl") is None:
        return None
    for unit in SYSTEMD_UNITS:
        try:
            if _run([_systemctl(), "is-active", "--quiet", unit]).returncode == 0:
                return unit
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


def _unit_main_pid(unit: str) -> int | None:
    """Return the main pid systemd records for `unit`, or None."""
    try:
        result = _run([_systemctl(), "show", "--property=MainPID", "--value", unit])
        return int(result.stdout.strip()) or None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
