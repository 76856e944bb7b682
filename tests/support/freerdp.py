"""FreeRDP's X11 client (xfreerdp) under a private Xvfb, the RDP client of the e2e tests.

The client knows nothing of the server behind the address it dials (xrdp's own port or
a tunnel's), and it never judges a login: against xrdp 0.9 (no NLA) its exit status says
nothing about the password. tests/support/xrdp.py reads the verdict from xrdp-sesman.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import stop_process
from tests.support.real_software import require_program

__all__ = ["RDPClient", "rdp_client", "virtual_display"]

_DISPLAY_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_ADDRESS = re.compile(r"^(?P<host>[0-9.]+|\[[0-9a-fA-F:]+\]|[a-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class RDPClient:
    """A running xfreerdp: its process and its output."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """Return what xfreerdp printed so far (never the password: it reads it from stdin)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """End xfreerdp (SIGTERM, then SIGKILL) unless it has exited; return its exit status."""
        return _stop(self.process)


@contextmanager
def virtual_display(workdir: Path) -> Iterator[str]:
    """Start Xvfb on a display it picks itself; yield the display (":N"); always stop it.

    `-displayfd` makes Xvfb choose a free display and report it, so parallel tests never
    race for one. It is stopped with SIGTERM, so it removes its socket and lock in /tmp.
    """
    xvfb = require_program("Xvfb", "xvfb")
    read_end, write_end = os.pipe()
    descriptor, name = tempfile.mkstemp(prefix="xvfb-", suffix=".log", dir=workdir)
    os.close(descriptor)
    log_path = Path(name)
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    xvfb,
                    "-displayfd",
                    str(write_end),
                    "-nolisten",
                    "tcp",
                    "-screen",
                    "0",
                    "1024x768x24",
                ],
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_ENVIRONMENT,
                start_new_session=True,
            )
        os.close(write_end)
        write_end = -1
        try:
            number = _read_display(read_end)
            if number is None:
                pytest.fail(
                    f"Xvfb reported no display within {_DISPLAY_TIMEOUT_SECONDS}s; its log:\n"
                    f"{log_path.read_text(errors='replace')}",
                    pytrace=False,
                )
            yield f":{number}"
        finally:
            _stop(process)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@contextmanager
def rdp_client(
    address: str,
    user: str,
    password: str,
    *,
    workdir: Path,
    auth_only: bool = False,
) -> Iterator[RDPClient]:
    """Run xfreerdp against `address` ("HOST:PORT") as `user` under its own Xvfb.

    Yields once xfreerdp has started (not once it has logged in); always ends xfreerdp
    and the Xvfb. The server's self-signed certificate is accepted; the password goes
    to xfreerdp's stdin, never its argv. HOME is a fresh directory, so FreeRDP's known
    hosts and settings stay out of the real one. `auth_only`: FreeRDP's `+auth-only`,
    which hangs up once the connection is up; against xrdp it exits 0 whatever the
    password, and xrdp, finding it gone, often never passes the login on to sesman.
    """
    if not _ADDRESS.fullmatch(address):
        raise ValueError(f"RDP address {address!r} is not HOST:PORT")
    xfreerdp = require_program("xfreerdp", "freerdp2-x11")
    home = Path(tempfile.mkdtemp(prefix="freerdp-", dir=workdir))
    log_path = home / "xfreerdp.log"
    arguments = [
        xfreerdp,
        f"/v:{address}",
        f"/u:{user}",
        # Asks for what /u did not give (the password) on stdin, before connecting.
        "/from-stdin:force",
        "/cert:ignore",
        "/size:1024x768",
        "-clipboard",
    ]
    if auth_only:
        arguments.append("+auth-only")
    with virtual_display(home) as display, log_path.open("wb") as log:
        process = subprocess.Popen(
            arguments,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**_ENVIRONMENT, "HOME": str(home), "DISPLAY": display},
            # No controlling terminal: xfreerdp then reads the password from stdin.
            start_new_session=True,
        )
        try:
            assert process.stdin is not None
            try:
                process.stdin.write(password.encode() + b"\n")
                process.stdin.close()
            except BrokenPipeError:
                pass  # xfreerdp exited already; its output says why
            yield RDPClient(process=process, log_path=log_path)
        finally:
            _stop(process)


def _read_display(descriptor: int) -> int | None:
    """Return the display number Xvfb writes to `descriptor`; None if it exits or is slow."""
    text = b""
    deadline = time.monotonic() + _DISPLAY_TIMEOUT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([descriptor], [], [], remaining)
        if not readable:
            break
        chunk = os.read(descriptor, 64)
        if not chunk:  # Xvfb exited without a display
            break
        text += chunk
        if text.endswith(b"\n"):
            return int(text)
    return None


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Stop `process` (SIGTERM, then SIGKILL after _STOP_TIMEOUT_SECONDS); its status."""
    return stop_process(process, _STOP_TIMEOUT_SECONDS)
