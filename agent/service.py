"""`sftd service install|uninstall`: register sftd with the OS's service manager.

Owns what is common to both OSes: which sftd and which sftd.yaml the service runs, the
command runner (injectable: tests check the exact argv), and the choice of backend
(agent.service_systemd on Linux, agent.service_windows on Windows). It writes the
service's definition and nothing else on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.paths import OSFamily, current_os

__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "SERVICE_NAME",
    "CommandResult",
    "Runner",
    "ServiceError",
    "ServiceManager",
    "ServiceSpec",
    "run_command",
    "service_manager",
    "sftd_executable",
]

SERVICE_NAME = "sftd"
#: systemctl and sc.exe answer within seconds; a hung one must not hang the installer.
COMMAND_TIMEOUT_SECONDS = 120.0
_EXECUTABLE_NAMES = ("sftd", "sftd.exe")


class ServiceError(Exception):
    """A refusal or a failure of `sftd service`, in one line for the operator."""


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status and its output (stdout and stderr)."""

    returncode: int
    output: str

    def first_line(self) -> str:
        """Return the first non-empty line of the output, or the exit status."""
        for line in self.output.splitlines():
            if line.strip():
                return line.strip()
        return f"exit status {self.returncode}"


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run `argv` (a list, never a shell string) and return how it ended.

    OSError (e.g. the program is missing) and a timeout become ServiceError.
    """
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(
            f"{argv[0]} did not finish within {COMMAND_TIMEOUT_SECONDS:.0f} s"
        ) from None
    except OSError as exc:
        raise ServiceError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    return CommandResult(done.returncode, done.stdout or "")


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: this sftd, with the sftd.yaml in effect."""

    executable: Path
    config_file: Path

    def argv(self) -> tuple[str, str, str]:
        """Return the service's command line, as separate arguments."""
        return (str(self.executable), "--conf", str(self.config_file))


class ServiceManager(Protocol):
    """One OS's service manager, as `sftd service` uses it.

    Each method returns the line to show the operator and raises ServiceError (one
    line) when it refuses or fails; a refusal changes nothing.
    """

    def install(self, spec: ServiceSpec) -> str:
        """Register sftd to run `spec` at boot, and start it where the manager runs."""

    def uninstall(self) -> str:
        """Stop sftd and remove its registration; succeed when there is none."""


def sftd_executable(argv0: str | None = None) -> Path:
    """Return the absolute path of the sftd being run (its symlink kept, for upgrades).

    `argv0` (default: sys.argv[0]) when it names an sftd executable, else `sftd` on
    PATH; ServiceError when neither exists.
    """
    candidate = Path(os.path.abspath(argv0 if argv0 is not None else sys.argv[0]))
    if candidate.name.lower() in _EXECUTABLE_NAMES and candidate.is_file():
        return candidate
    found = shutil.which("sftd")
    if found is not None:
        return Path(os.path.abspath(found))
    raise ServiceError(
        "cannot tell where the sftd executable is; run `sftd service install` "
        "through its path, e.g. /usr/local/bin/sftd service install"
    )


def service_manager(
    os_family: OSFamily | None = None,
    *,
    unit_dir: Path | None = None,
    runner: Runner = run_command,
) -> ServiceManager:
    """Return the service manager of `os_family` (the running OS when None).

    `unit_dir`: where the systemd unit goes (Linux; default /etc/systemd/system).
    """
    if (os_family or current_os()) == "windows":
        from agent.service_windows import WindowsService

        return WindowsService(runner=runner)
    from agent.service_systemd import DEFAULT_UNIT_DIR, SystemdService

    return SystemdService(unit_dir or DEFAULT_UNIT_DIR, runner=runner)
