"""Starting the broker's process as its own user: the one OS interface the supervisor uses.

Linux: `asyncio.create_subprocess_exec` in a session of its own (a terminal's signals
reach sftd only); when sftd is root, through util-linux's `setpriv`, which takes the
broker user's uid and gid, clears supplementary groups and sets no_new_privs before
it execs the broker. Not Python's own `user=`/`group=`: with those CPython must fork()
rather than vfork(), and a fork of a process running gRPC's threads runs gRPC's fork
handlers in the child, which can abort or hang it before it execs.
Windows: agent/broker_windows.py (Low integrity, untested here). Starts what it is
given as an argument list; never a shell.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from agent.broker_account import BrokerAccount

__all__ = ["BrokerLauncher", "BrokerProcess", "LinuxLauncher", "broker_environment"]

#: The longest output line relayed whole; the rest of a longer line is dropped.
MAX_LINE_BYTES = 64 * 1024
# What the broker gets of sftd's environment: nothing secret, nothing that changes
# which code runs (no PYTHONPATH).
_PASSED_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT", "TEMP", "TMP")


def broker_environment() -> dict[str, str]:
    """Return the environment the broker starts with."""
    passed = {name: os.environ[name] for name in _PASSED_ENVIRONMENT if name in os.environ}
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **passed}


class BrokerProcess(Protocol):
    """A started broker, as the supervisor sees it."""

    @property
    def pid(self) -> int:
        """Return the process id."""
        ...

    async def wait(self) -> int:
        """Return the exit status once the process has exited (negative: killed by signal)."""
        ...

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM)."""
        ...

    def kill(self) -> None:
        """Stop the process now (SIGKILL)."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """Yield its output (stdout and stderr), one line at a time, until it closes."""
        ...


class BrokerLauncher(Protocol):
    """Starts the broker as the least privileged principal this OS offers."""

    async def spawn(self, argv: Sequence[str]) -> BrokerProcess:
        """Start `argv`; OSError when it cannot be started."""
        ...


class _AsyncioProcess:
    """A BrokerProcess over asyncio's subprocess (output merged into stdout)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        if self._process.returncode is None:
            self._process.terminate()

    def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()

    async def lines(self) -> AsyncIterator[bytes]:
        stream = self._process.stdout
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                # Longer than the reader's limit: asyncio dropped what it held; go on.
                yield b"(a broker output line longer than 64 KiB was dropped)"
                continue
            if not line:
                return
            yield line


class LinuxLauncher:
    """Starts the broker as `account` (switching user only when it is not sftd's)."""

    def __init__(self, account: BrokerAccount) -> None:
        self.account = account
        self.setpriv = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")

    def command(self, argv: Sequence[str]) -> tuple[list[str], dict[str, object]]:
        """Return the argument list to run and the user switch Python must make itself."""
        if not self.account.separate:
            return list(argv), {}
        uid, gid = self.account.uid, self.account.gid
        if self.setpriv is None:
            # Without setpriv, Python switches (and must fork(); see the module).
            return list(argv), {"user": uid, "group": gid, "extra_groups": []}
        switch = [self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--nnp"]
        return [*switch, "--", *argv], {}

    async def spawn(self, argv: Sequence[str]) -> BrokerProcess:
        """Start `argv` as the broker's user, stdin closed, output piped to sftd."""
        command, switch = self.command(argv)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=broker_environment(),
            cwd="/",
            start_new_session=True,
            limit=MAX_LINE_BYTES,
            **switch,  # type: ignore[arg-type]
        )
        return _AsyncioProcess(process)
