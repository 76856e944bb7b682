"""Where sft keeps its files and how it writes them: private directories, atomic replaces.

Standard library only (platformdirs loads only when $SFT_HOME is unset), so the
warm-cache path of `sft ssh` can find its files before anything heavier loads.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "HOME_ENV",
    "TEAM_ENV",
    "TEAM_NAME",
    "default_home",
    "fsync_dir",
    "make_private_dir",
    "write_atomic",
]

HOME_ENV = "SFT_HOME"
TEAM_ENV = "SFT_TEAM"
DIR_MODE = 0o700
FILE_MODE = 0o600

#: The platform's team name rule; it also keeps a team name from escaping teams/.
TEAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def default_home() -> Path:
    """Return `$SFT_HOME`, or the per-user config directory for sft."""
    configured = os.environ.get(HOME_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return platformdirs.user_config_path("sft")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (a no-op where directories cannot sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` in one step, with permissions `mode` from the first byte."""
    # mkstemp makes the file 0600 with a unique name, so two writers never share a temp file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if os.name == "posix":
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) as a 0700 directory if it does not exist."""
    existed = path.is_dir()
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if not existed and os.name == "posix":
        path.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask
