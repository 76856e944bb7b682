"""How every `sftd` verb ends when it cannot do its work: one line, one exit status.

Never a traceback: the line says what is wrong and what to do.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

__all__ = ["EXIT_FAILURE", "EXIT_NOT_ENROLLED", "EXIT_USAGE", "fail"]

#: The machine or the state dir refused (not root, unusable state, a failed command).
EXIT_FAILURE = 1
#: A bad sftd.yaml or command line.
EXIT_USAGE = 2
#: `sftd status` when this server is not enrolled (yet).
EXIT_NOT_ENROLLED = 3


def fail(message: str, code: int) -> NoReturn:
    """Print `sftd: error: MESSAGE` on stderr and exit with `code`."""
    click.echo(f"sftd: error: {message}", err=True)
    sys.exit(code)
