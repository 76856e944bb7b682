"""Stopping a server a test started, and waiting for a line in its log."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

__all__ = ["stop_process", "wait_for_line"]


def stop_process(process: subprocess.Popen[bytes], timeout_seconds: float = 15.0) -> int:
    """SIGTERM `process` unless it has exited, SIGKILL after `timeout_seconds`; its status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def wait_for_line(
    read: Callable[[], str],
    pattern: str,
    *,
    what: str,
    timeout_seconds: float = 5.0,
    poll_seconds: float = 0.02,
) -> str:
    """Return the first line of `read()` matching regex `pattern`; fail the test on timeout.

    Servers write some lines (a disconnect, a session's end) after the client has gone,
    so tests wait for the line rather than reading once. `what` names the log in the
    failure, which shows everything `read()` returned.
    """
    wanted = re.compile(pattern)
    deadline = time.monotonic() + timeout_seconds
    while True:
        text = read()
        for line in text.splitlines():
            if wanted.search(line):
                return line
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what} did not log /{pattern}/ within {timeout_seconds:.1f}s; "
                f"its log since the mark:\n{text}",
                pytrace=False,
            )
        time.sleep(poll_seconds)
