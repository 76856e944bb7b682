"""Writing files so a crash leaves the old content or the new, never half of either.

Standard library only, and `tempfile` loads only when a file is written: the client's
warm `sft ssh` path imports this module.
"""

from __future__ import annotations

import os

__all__ = ["DIR_MODE", "FILE_MODE", "PathLike", "fsync_dir", "make_private_dir", "write_atomic"]

DIR_MODE = 0o700
FILE_MODE = 0o600

PathLike = str | os.PathLike[str]


def fsync_dir(directory: PathLike) -> None:
    """Make a rename or unlink in `directory` durable (a no-op where directories cannot sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: PathLike,
    data: bytes,
    mode: int = FILE_MODE,
    *,
    owner: tuple[int, int] | None = None,
    suffix: str = ".tmp",
) -> None:
    """Replace `path` with `data` in one rename, with `mode` (and `owner`) from the first byte.

    The bytes go to a uniquely named temporary file beside `path` (`.<name>.…<suffix>`),
    are synced, and are renamed over `path`; then the directory is synced. Two writers
    never share a temporary file.
    """
    import tempfile

    target = os.fspath(path)
    directory, name = os.path.split(target)
    directory = directory or "."
    fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            if os.name == "posix":
                os.fchmod(handle.fileno(), mode)
                if owner is not None and owner != (os.geteuid(), os.getegid()):
                    os.fchown(handle.fileno(), *owner)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def make_private_dir(path: PathLike) -> None:
    """Create `path` (and its parents) as a 0700 directory if it does not exist."""
    existed = os.path.isdir(path)
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    if not existed and os.name == "posix":
        os.chmod(path, DIR_MODE)  # makedirs' mode is filtered by the umask
