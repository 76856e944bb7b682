"""The one way `sft` ends on a failure: `sft: error: <what is wrong and what to do>`.

Exit status 1 (2 for a mistake in the command line, 130 when interrupted), never a
traceback unless SFT_DEBUG is set, for bug reports. Used by the full CLI and by the
warm paths of client.entry alike; imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from client.errors import EXIT_FAILURE, ClientError

__all__ = ["DEBUG_ENV", "EXIT_INTERRUPTED", "fail", "report_failure"]

DEBUG_ENV = "SFT_DEBUG"
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    """Print `sft: error: message` on stderr and exit with `code`."""
    sys.stdout.flush()
    sys.stderr.write(f"sft: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def report_failure(exc: BaseException) -> NoReturn:
    """End the program for `exc` the way every sft failure ends (re-raise under SFT_DEBUG)."""
    if isinstance(exc, ClientError):
        fail(exc.message, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        fail("interrupted", EXIT_INTERRUPTED)
    if os.environ.get(DEBUG_ENV):
        raise exc
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", EXIT_FAILURE)
    fail(
        f"unexpected failure ({type(exc).__name__}: {exc}); rerun with {DEBUG_ENV}=1 "
        "and report the traceback",
        EXIT_FAILURE,
    )
