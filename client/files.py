"""Where sft keeps its files and how it writes them: private directories, atomic replaces.

Light on purpose: the warm-cache path of `sft ssh` finds and reads its files through
this module before anything else loads, so it imports only `os` and runtime.files
(and platformdirs when it must). The writing itself is runtime.files'.
"""

from __future__ import annotations

import os

from runtime.files import DIR_MODE, FILE_MODE, PathLike, fsync_dir, make_private_dir, write_atomic

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "HOME_ENV",
    "TEAM_ENV",
    "PathLike",
    "fsync_dir",
    "home_directory",
    "is_team_name",
    "make_private_dir",
    "write_atomic",
]

HOME_ENV = "SFT_HOME"
TEAM_ENV = "SFT_TEAM"

_TEAM_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_TEAM_REST = _TEAM_FIRST | {"-"}


def is_team_name(name: str) -> bool:
    """Return whether `name` follows the platform's team name rule (so it stays in teams/)."""
    return (
        0 < len(name) <= 63 and name[0] in _TEAM_FIRST and all(char in _TEAM_REST for char in name)
    )


def home_directory() -> str:
    """Return `$SFT_HOME`, or the per-user config directory for sft."""
    configured = os.environ.get(HOME_ENV, "").strip()
    if configured:
        return os.path.expanduser(configured)
    import platformdirs

    return str(platformdirs.user_config_path("sft"))
