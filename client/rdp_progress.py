"""What `sft rdp` shows on stderr while it connects: one line per step.

With `-v`, one plain line per step; otherwise, on a terminal, the steps share one
line, rewritten in place and cleared at the end, and elsewhere nothing is shown.
Never shows a password.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]

_CLEAR_LINE = "\r\x1b[K"


class Progress:
    """Step lines on a stream: rewritten on a terminal, plain with `verbose`, else silent."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._terminal = self._stream.isatty()
        self._verbose = verbose
        self._shown = False

    @property
    def verbose(self) -> bool:
        """Return whether steps are printed as plain lines."""
        return self._verbose

    def step(self, text: str) -> None:
        """Show that `text` is happening now."""
        if self._verbose:
            self._stream.write(f"sft rdp: {text}\n")
        elif self._terminal:
            self._stream.write(f"{_CLEAR_LINE}sft rdp: {text}")
            self._shown = True
        else:
            return
        self._stream.flush()

    def done(self) -> None:
        """Clear the rewritten line (on a terminal), so what follows starts clean."""
        if self._shown:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._shown = False

    def say(self, text: str) -> None:
        """Print a line a person at a terminal (or asking with -v) should read."""
        if self._terminal or self._verbose:
            self.done()
            self._stream.write(f"sft rdp: {text}\n")
            self._stream.flush()
