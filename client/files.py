"""Where sft keeps its files and how it writes them: private directories, atomic replaces.

Light on purpose: the warm-cache path of `sft ssh` finds and reads its files through
this module before anything else loads, so it imports only `os` (and `tempfile` or
platformdirs when it must). Paths are `str` or `os.PathLike`.
"""

from __future__ import annotations

import os

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "HOME_ENV",
    "TEAM_ENV",
    "fsync_dir",
    "home_directory",
    "is_team_name",
    "make_private_dir",
    "write_atomic",
]

HOME_ENV = "SFT_HOME"
TEAM_ENV = "SFT_TEAM"
DIR_MODE = 0o700
FILE_MODE = 0o600

_TEAM_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_TEAM_REST = _TEAM_FIRST | {"-"}

PathLike = str | os.PathLike[str]


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


def fsync_dir(directory: PathLike) -> None:
    """Make a rename or unlink in `directory` durable (a no-op where directories cannot sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: PathLike, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` in one step, with permissions `mode` from the first byte."""
    import tempfile

    target = os.fspath(path)
    directory, name = os.path.split(target)
    # mkstemp makes the file 0600 with a unique name, so two writers never share a temp file.
    fd, tmp_name = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if os.name == "posix":
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory or ".")


def make_private_dir(path: PathLike) -> None:
    """Create `path` (and its parents) as a 0700 directory if it does not exist."""
    existed = os.path.isdir(path)
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    if not existed and os.name == "posix":
        os.chmod(path, DIR_MODE)  # makedirs' mode is filtered by the umask
