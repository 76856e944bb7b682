"""Where sftd looks for things by default, per operating system: the one place for it.

Pure: builds paths and never touches the disk. Every default here can be changed in
sftd.yaml except the config file itself (`sftd --conf PATH`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

__all__ = ["DefaultPaths", "OSFamily", "current_os", "default_paths"]

OSFamily = Literal["linux", "windows"]

# sftd runs as LocalSystem on Windows, whose per-user AppData is the system profile's.
_WINDOWS_HOME = PureWindowsPath(r"C:\Windows\System32\config\systemprofile\AppData\Local\sft")
# OpenSSH for Windows keeps its config and host keys here.
_WINDOWS_SSH = PureWindowsPath(r"C:\ProgramData\ssh")
# sshd's own HostKey defaults, in the order sshd loads them.
_HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")


def current_os() -> OSFamily:
    """Return the OS family sftd is running on (tests monkeypatch this)."""
    return "windows" if sys.platform in ("win32", "cygwin") else "linux"


@dataclass(frozen=True)
class DefaultPaths:
    """The defaults of every path-valued sftd.yaml key, and of the config file."""

    config_file: Path
    state_dir: Path
    log_dir: Path
    enrollment_token_file: Path
    sshd_config_file: Path
    trusted_user_ca_keys_file: Path
    #: sshd's HostKey defaults, used when SSHDConfigFile names none.
    host_key_files: tuple[Path, ...]


def default_paths(os_family: OSFamily | None = None) -> DefaultPaths:
    """Return the defaults for `os_family` (the running OS when None)."""
    family = os_family or current_os()
    if family == "windows":
        home, ssh = _WINDOWS_HOME, _WINDOWS_SSH
        # Path(str(...)) keeps the Windows spelling even where Path is a PosixPath (tests).
        return DefaultPaths(
            config_file=Path(str(home / "sftd.yaml")),
            state_dir=Path(str(home / "state")),
            log_dir=Path(str(home / "logs")),
            enrollment_token_file=Path(str(home / "enrollment.token")),
            sshd_config_file=Path(str(ssh / "sshd_config")),
            trusted_user_ca_keys_file=Path(str(home / "state" / "ssh_ca.pub")),
            host_key_files=tuple(
                Path(str(ssh / f"ssh_host_{kind}_key")) for kind in _HOST_KEY_TYPES
            ),
        )
    state = PurePosixPath("/var/lib/sftd")
    return DefaultPaths(
        config_file=Path("/etc/sft/sftd.yaml"),
        state_dir=Path(state),
        log_dir=Path("/var/log/sftd"),
        enrollment_token_file=Path(state / "enrollment.token"),
        sshd_config_file=Path("/etc/ssh/sshd_config"),
        trusted_user_ca_keys_file=Path(state / "ssh_ca.pub"),
        host_key_files=tuple(Path(f"/etc/ssh/ssh_host_{kind}_key") for kind in _HOST_KEY_TYPES),
    )
