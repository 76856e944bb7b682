"""The `.rdp` file and the OS's RDP client, started with the grant's one-time password.

The password never goes on a command line other users can read:

- Linux: `xfreerdp /v:127.0.0.1:PORT /u:ACCOUNT /cert:ignore /from-stdin:force`, the
  password on its stdin (FreeRDP 2 asks `Password: ` and reads one line; checked
  against `xfreerdp /help` and a real run on Debian 12's freerdp2-x11).
- Windows (untested here): the password goes into the user's credential store for
  TERMSRV/127.0.0.1 with `cmdkey` (a user's command lines are visible only to that
  user and administrators), `mstsc FILE` runs, and the entry is deleted afterwards.
- macOS: `open FILE` hands the file to the user's RDP app, which asks for the
  password; sft shows it on the terminal (stderr) and holds the tunnel until Ctrl-C.

`$SFT_RDP_PROGRAM` replaces the client program (same arguments), for tests and for
people with another client. The RDP server's own certificate is not checked
(`/cert:ignore`, `authentication level:i:0`): the tunnel reaches the one server
whose broker proved its identity, and that server's RDP certificate is usually
self-signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from dataclasses import dataclass, field

from client.errors import ClientError
from client.failures import EXIT_INTERRUPTED
from client.files import make_private_dir, write_atomic

__all__ = [
    "RDP_PROGRAM_ENV",
    "TERMSRV_TARGET",
    "LaunchPlan",
    "launch_plan",
    "rdp_file_text",
    "run_client",
    "write_rdp_file",
]

RDP_PROGRAM_ENV = "SFT_RDP_PROGRAM"
#: How long the RDP client gets to exit after SIGTERM (Ctrl-C on sft) before SIGKILL.
CLIENT_STOP_SECONDS = 5.0
#: The credential store entry mstsc looks up for a connection to 127.0.0.1 (any port).
TERMSRV_TARGET = "TERMSRV/127.0.0.1"


def rdp_file_text(port: int, account: str) -> str:
    """Return the `.rdp` file for the local tunnel port and `account` (CRLF lines)."""
    if any(char in account for char in "\r\n"):
        raise ClientError(f"account {account!r} cannot be written to an .rdp file")
    lines = [
        f"full address:s:127.0.0.1:{port}",
        f"username:s:{account}",
        # sft hands the client the one-time password; asking the person again is noise.
        "prompt for credentials:i:0",
        "promptcredentialonce:i:0",
        # The broker's certificate was checked; the RDP server's is usually self-signed.
        "authentication level:i:0",
        "enablecredsspsupport:i:1",
        "negotiate security layer:i:1",
        "autoreconnection enabled:i:1",
        "screen mode id:i:1",
        "use multimon:i:0",
        "dynamic resolution:i:1",
        "redirectclipboard:i:1",
        "redirectprinters:i:0",
        "redirectsmartcards:i:0",
        "drivestoredirect:s:",
    ]
    return "\r\n".join(lines) + "\r\n"


def write_rdp_file(path: str, text: str) -> str:
    """Write the `.rdp` file (0600, atomic) and return its absolute path."""
    absolute = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(absolute)
    try:
        if not os.path.isdir(directory):
            make_private_dir(directory)
        write_atomic(absolute, text.encode())
    except OSError as exc:
        raise ClientError(
            f"cannot write the .rdp file {absolute}: {(exc.strerror or str(exc)).lower()}",
            hint="choose another place with --rdp-file",
        ) from None
    return absolute


@dataclass(frozen=True)
class LaunchPlan:
    """How to start the OS's RDP client: commands before and after, the client, its stdin."""

    argv: list[str]
    #: Written to the client's stdin, then closed (None: stdin is left to the terminal).
    stdin: bytes | None = field(default=None, repr=False)
    #: Run in order before the client; each must succeed (Windows: store the password).
    before: tuple[list[str], ...] = field(default=(), repr=False)
    #: Run after the client exits, best effort (Windows: delete the stored password).
    after: tuple[list[str], ...] = ()
    #: False when the program hands the file to an app and returns at once (macOS `open`):
    #: sft then holds the tunnel until interrupted, and shows the password.
    waits: bool = True


def _program(default: str) -> str:
    return os.environ.get(RDP_PROGRAM_ENV, "").strip() or default


def launch_plan(
    *,
    port: int,
    account: str,
    password: str,
    rdp_file: str,
    system: str | None = None,
    title: str = "",
) -> LaunchPlan:
    """Return how to launch the RDP client of `system` (default: this OS) for the tunnel."""
    system = system or platform.system()
    if system == "Linux":
        argv = [
            _program("xfreerdp"),
            f"/v:127.0.0.1:{port}",
            f"/u:{account}",
            "/cert:ignore",
            "/from-stdin:force",
            "+clipboard",
            "/dynamic-resolution",
        ]
        if title:
            argv.append(f"/t:{title}")
        return LaunchPlan(argv, stdin=(password + "\n").encode())
    if system == "Windows":
        store = ["cmdkey", f"/generic:{TERMSRV_TARGET}", f"/user:{account}", f"/pass:{password}"]
        forget = ["cmdkey", f"/delete:{TERMSRV_TARGET}"]
        return LaunchPlan([_program("mstsc"), rdp_file], before=(store,), after=(forget,))
    if system == "Darwin":
        return LaunchPlan([_program("open"), rdp_file], waits=False)
    raise ClientError(
        f"sft rdp does not know the RDP client of {system}",
        hint=f"use --no-launch and connect your client to the printed address, or set "
        f"${RDP_PROGRAM_ENV}",
    )


async def _run_helper(argv: list[str]) -> int:
    """Run a helper command (cmdkey) quietly; return its exit status (127 if missing)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
    except FileNotFoundError:
        return 127
    return await process.wait()


def _exit_status(returncode: int) -> int:
    """Return a process's status the way a shell reports it (128+N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


async def run_client(plan: LaunchPlan, stop: asyncio.Event) -> int:
    """Run the RDP client of `plan` until it exits (its status) or `stop` is set (130).

    The `after` commands run in every case once the `before` ones have.
    """
    for argv in plan.before:
        status = await _run_helper(argv)
        if status != 0:
            raise ClientError(
                f"could not hand the one-time password to the RDP client ({argv[0]} exited "
                f"{status})",
                hint="use --no-launch and type the printed password into your client",
            )
    try:
        return await _run_program(plan, stop)
    finally:
        for argv in plan.after:
            await _run_helper(argv)


async def _run_program(plan: LaunchPlan, stop: asyncio.Event) -> int:
    try:
        process = await asyncio.create_subprocess_exec(
            *plan.argv,
            stdin=asyncio.subprocess.PIPE if plan.stdin is not None else None,
        )
    except OSError as exc:
        raise ClientError(
            f"cannot start the RDP client {plan.argv[0]!r}: {(exc.strerror or str(exc)).lower()}",
            hint=f"install it (Debian: freerdp2-x11), point ${RDP_PROGRAM_ENV} at one, or use "
            "--no-launch",
        ) from None
    if plan.stdin is not None and process.stdin is not None:
        with contextlib.suppress(OSError):  # a client that exits at once never reads it
            process.stdin.write(plan.stdin)
            await process.stdin.drain()
        process.stdin.close()
    exited = asyncio.ensure_future(process.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if exited.done():
        return _exit_status(exited.result())
    process.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(exited), CLIENT_STOP_SECONDS)
    except TimeoutError:
        process.kill()
        await exited
    return EXIT_INTERRUPTED
