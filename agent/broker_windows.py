"""Windows: start the broker at Low integrity, as ScaleFT's broker runs.

UNTESTED: this module needs Windows and pywin32 (imported inside the calls, so this
module imports on Linux). sftd runs as LocalSystem; the broker runs as the same
account but with a Low mandatory label (S-1-16-4096) on a copy of sftd's token, so it
can write nothing that is not labelled Low: it reaches the machine only through the
control channel (127.0.0.1 and the secret in control.endpoint, which SYSTEM may read).
Windows has no SIGTERM for a windowless process: stopping terminates it, and sftd's
control channel disables what its grants held.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agent.broker_process import BrokerProcess, broker_environment

__all__ = ["LowIntegrityLauncher"]

LOW_INTEGRITY_SID = "S-1-16-4096"
# From winnt.h / winbase.h; spelled here so this module imports on Linux.
_SE_GROUP_INTEGRITY = 0x20
_TOKEN_INTEGRITY_LEVEL = 25
_SECURITY_IMPERSONATION = 2
_TOKEN_PRIMARY = 1
_TOKEN_ACCESS = 0x0001 | 0x0002 | 0x0008 | 0x0080  # assign primary, duplicate, query, adjust
_STARTF_USESTDHANDLES = 0x100
_CREATE_NO_WINDOW = 0x08000000
_INFINITE = 0xFFFFFFFF


def _module(name: str) -> Any:
    return importlib.import_module(name)


class _WindowsProcess:
    """A BrokerProcess over a process handle; output read from a pipe in a thread."""

    def __init__(self, handle: Any, pid: int, output_fd: int) -> None:
        self._handle = handle
        self._pid = pid
        self._output = os.fdopen(output_fd, "rb")

    @property
    def pid(self) -> int:
        return self._pid

    async def wait(self) -> int:
        win32event, win32process = _module("win32event"), _module("win32process")
        await asyncio.to_thread(win32event.WaitForSingleObject, self._handle, _INFINITE)
        return int(win32process.GetExitCodeProcess(self._handle))

    def terminate(self) -> None:
        with contextlib.suppress(Exception):  # already gone
            _module("win32process").TerminateProcess(self._handle, 1)

    def kill(self) -> None:
        self.terminate()

    async def lines(self) -> AsyncIterator[bytes]:
        while True:
            line = await asyncio.to_thread(self._output.readline)
            if not line:
                self._output.close()
                return
            yield line


class LowIntegrityLauncher:
    """Starts the broker with a Low integrity copy of sftd's token (see the module)."""

    async def spawn(self, argv: Sequence[str]) -> BrokerProcess:
        """Start `argv` at Low integrity, output to a pipe sftd reads."""
        return await asyncio.to_thread(self._spawn, list(argv))

    def _spawn(self, argv: list[str]) -> BrokerProcess:
        win32api, win32process = _module("win32api"), _module("win32process")
        win32security, msvcrt = _module("win32security"), _module("msvcrt")
        own = win32security.OpenProcessToken(win32api.GetCurrentProcess(), _TOKEN_ACCESS)
        token = win32security.DuplicateTokenEx(
            own, _SECURITY_IMPERSONATION, _TOKEN_ACCESS, _TOKEN_PRIMARY
        )
        low = win32security.ConvertStringSidToSid(LOW_INTEGRITY_SID)
        win32security.SetTokenInformation(token, _TOKEN_INTEGRITY_LEVEL, (low, _SE_GROUP_INTEGRITY))
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)
        startup = win32process.STARTUPINFO()
        startup.dwFlags = _STARTF_USESTDHANDLES
        startup.hStdOutput = startup.hStdError = msvcrt.get_osfhandle(write_fd)
        try:
            process, thread, pid, _ = win32process.CreateProcessAsUser(
                token, None, subprocess.list2cmdline(argv), None, None, True,
                _CREATE_NO_WINDOW, broker_environment(), None, startup,
            )  # fmt: skip
        except Exception as error:  # pywintypes.error: say it as an OSError
            os.close(read_fd)
            raise OSError(str(error)) from None
        finally:
            os.close(write_fd)
        win32api.CloseHandle(thread)
        return _WindowsProcess(process, pid, read_fd)
