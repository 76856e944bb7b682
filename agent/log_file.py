"""sftd's log file: every log line also goes, as JSON, to `LogDir/sftd.log`, rotated.

Standard output keeps every line too (the journal, under systemd). The file is
rotated at 5 MB, keeping 10 old files (`sftd.log.1` … `sftd.log.10`), as ScaleFT's
agent did; files are 0640 and LogDir, when sftd makes it, 0750. Lines come from
structlog (sftd's own, and the broker's relayed ones) and from the standard library's
loggers (third-party libraries). A LogDir that cannot be used never stops sftd:
logging trouble must not lock people out. It is one line on stderr, and the caller
shows the returned problem in `sftd status`.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import MutableMapping
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "BACKUP_COUNT",
    "DIR_MODE",
    "FILE_MODE",
    "LOG_FILE_NAME",
    "MAX_BYTES",
    "log_to_file",
]

LOG_FILE_NAME = "sftd.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUP_COUNT = 10
DIR_MODE = 0o750
FILE_MODE = 0o640

_json = structlog.processors.JSONRenderer()


class _LogFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files are 0640 from their first byte, never via a link.

    A failed write (disk full, the file made unwritable) is one line on stderr per
    distinct reason, not the standard library's traceback for every record.
    """

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self._reported: set[str] = set()
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=False
        )

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.baseFilename, flags, FILE_MODE)
        try:
            if os.name == "posix":
                os.fchmod(fd, FILE_MODE)  # an older file may have been wider
            return os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        except BaseException:
            os.close(fd)
            raise

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        reason = f"cannot write {self.baseFilename}: {error}"
        if reason not in self._reported:
            self._reported.add(reason)
            print(f"sftd: warning: {reason}", file=sys.stderr, flush=True)


class _FileFormatter(logging.Formatter):
    """Lines structlog already rendered pass as they are; stdlib records become JSON."""

    def __init__(self) -> None:
        super().__init__()
        self._foreign = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processor=_json,
        )

    def format(self, record: logging.LogRecord) -> str:
        rendered = getattr(record, "sftd_line", None)
        return rendered if isinstance(rendered, str) else self._foreign.format(record)


class _CopyToFile:
    """A structlog processor (placed just before the renderer) that copies each event
    to the log file as one JSON line, and passes it on unchanged to standard output."""

    def __init__(self, handler: _LogFileHandler) -> None:
        self.handler = handler

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        line = _json(logger, method_name, dict(event_dict))
        level = logging.getLevelName(str(event_dict.get("level", "info")).upper())
        record = logging.LogRecord(
            "sftd", level if isinstance(level, int) else logging.INFO, "", 0, line, None, None
        )
        record.sftd_line = line
        self.handler.handle(record)
        return event_dict


def _prepare(log_dir: Path) -> Path:
    """Create `log_dir` (0750) if missing and return the log file's path (OSError if not)."""
    if not log_dir.is_dir():
        log_dir.mkdir(parents=True, mode=DIR_MODE)
        if os.name == "posix":
            os.chmod(log_dir, DIR_MODE)  # mkdir's mode is filtered by the umask
    return log_dir / LOG_FILE_NAME


def log_to_file(
    log_dir: Path, *, max_bytes: int = MAX_BYTES, backup_count: int = BACKUP_COUNT
) -> str | None:
    """Also write every log line to `log_dir`/sftd.log; return None, or the problem.

    Call once, after runtime.logging.configure_logging. A directory that cannot be made
    or a file that cannot be opened leaves logging as it was (standard output only),
    prints one `sftd: warning:` line on stderr and returns what went wrong.
    """
    try:
        handler = _LogFileHandler(_prepare(log_dir), max_bytes, backup_count)
    except OSError as exc:
        problem = (
            f"cannot write the log file in LogDir {log_dir} ({exc.strerror or exc}); "
            "logging to standard output only"
        )
        print(f"sftd: warning: {problem}", file=sys.stderr, flush=True)
        return problem
    handler.setFormatter(_FileFormatter())
    processors = [
        step for step in structlog.get_config()["processors"] if not isinstance(step, _CopyToFile)
    ]
    # The last processor renders for standard output; the copy goes out just before it.
    processors.insert(max(len(processors) - 1, 0), _CopyToFile(handler))
    structlog.configure(processors=processors)
    logging.getLogger().addHandler(handler)
    return None
