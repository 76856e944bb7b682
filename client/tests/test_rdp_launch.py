"""The .rdp file, the launch plan per OS, and running the client with its stdin password.

The client run is a real program (a small Python script standing in for xfreerdp via
SFT_RDP_PROGRAM), so the password really travels on a pipe, never the command line.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import sys
from pathlib import Path

import pytest

from client.errors import ClientError
from client.failures import EXIT_INTERRUPTED
from client.rdp_launch import (
    RDP_PROGRAM_ENV,
    TERMSRV_TARGET,
    LaunchPlan,
    launch_plan,
    rdp_file_text,
    run_client,
    write_rdp_file,
)
from client.rdp_progress import Progress

RDP_FILE = "/home/bob/.config/sft/w.rdp"
SECRET = "Xy7-" + "one-time-password-0123"


def _plan(system: str) -> LaunchPlan:
    return launch_plan(port=40123, account="bob", password=SECRET, rdp_file=RDP_FILE, system=system)


def test_the_rdp_file_names_the_local_port_and_the_account_and_is_private(tmp_path: Path) -> None:
    text = rdp_file_text(40123, "bob")
    lines = text.split("\r\n")
    assert lines[0] == "full address:s:127.0.0.1:40123"
    assert "username:s:bob" in lines and "prompt for credentials:i:0" in lines
    assert SECRET not in text and text.endswith("\r\n")
    path = write_rdp_file(str(tmp_path / "new-dir" / "w.rdp"), text)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_bytes() == text.encode()


def test_an_account_that_could_inject_lines_is_refused() -> None:
    with pytest.raises(ClientError):
        rdp_file_text(1, "bob\r\nfull address:s:evil:1")


def test_an_unwritable_rdp_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ClientError, match=r"cannot write the \.rdp file .*--rdp-file"):
        write_rdp_file(str(tmp_path / "file" / "w.rdp"), "x")


def test_linux_runs_xfreerdp_with_the_password_on_stdin_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RDP_PROGRAM_ENV, raising=False)
    plan = _plan("Linux")
    assert plan.argv[:5] == [
        "xfreerdp",
        "/v:127.0.0.1:40123",
        "/u:bob",
        "/cert:ignore",
        "/from-stdin:force",
    ]
    assert not any(SECRET in word for word in plan.argv)
    assert plan.stdin == (SECRET + "\n").encode() and plan.waits
    assert SECRET not in repr(plan)


def test_windows_stores_the_password_for_termsrv_and_deletes_it_afterwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RDP_PROGRAM_ENV, raising=False)
    plan = _plan("Windows")
    assert plan.argv == ["mstsc", RDP_FILE]
    assert plan.before == (
        ["cmdkey", f"/generic:{TERMSRV_TARGET}", "/user:bob", f"/pass:{SECRET}"],
    )
    assert plan.after == (["cmdkey", f"/delete:{TERMSRV_TARGET}"],)
    assert SECRET not in repr(plan)


def test_macos_opens_the_file_and_holds_the_tunnel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RDP_PROGRAM_ENV, raising=False)
    plan = _plan("Darwin")
    assert plan.argv == ["open", RDP_FILE] and not plan.waits and plan.stdin is None


def test_the_program_can_be_replaced_and_an_unknown_os_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RDP_PROGRAM_ENV, "/opt/rdp/client")
    assert _plan("Linux").argv[0] == "/opt/rdp/client"
    with pytest.raises(ClientError, match=r"does not know the RDP client of Plan9.*--no-launch"):
        _plan("Plan9")


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "client.py"
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_the_client_reads_the_password_from_stdin_and_its_status_is_returned(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    program = _script(
        tmp_path,
        f"open({str(seen)!r}, 'w').write(repr(sys.argv) + '|' + sys.stdin.readline())\nsys.exit(7)",
    )
    plan = LaunchPlan([program, "/v:127.0.0.1:1"], stdin=(SECRET + "\n").encode())
    assert await run_client(plan, asyncio.Event()) == 7
    argv, _, line = seen.read_text().partition("|")
    assert line == SECRET + "\n" and SECRET not in argv


async def test_interrupting_stops_the_client_and_runs_the_after_commands(tmp_path: Path) -> None:
    cleaned = tmp_path / "cleaned"
    program = _script(tmp_path, "time.sleep(60)")
    plan = LaunchPlan([program], after=(["touch", str(cleaned)],))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    assert await asyncio.wait_for(run_client(plan, stop), 20) == EXIT_INTERRUPTED
    assert cleaned.exists()


async def test_a_failing_before_command_stops_the_launch(tmp_path: Path) -> None:
    started = tmp_path / "started"
    plan = LaunchPlan(["touch", str(started)], before=(["false"],))
    with pytest.raises(ClientError, match="could not hand the one-time password"):
        await run_client(plan, asyncio.Event())
    assert not started.exists()


async def test_a_missing_client_is_one_line_naming_the_way_out() -> None:
    plan = LaunchPlan(["/nonexistent/xfreerdp"], stdin=b"x\n")
    with pytest.raises(ClientError) as missing:
        await run_client(plan, asyncio.Event())
    message = missing.value.message
    assert "cannot start the RDP client '/nonexistent/xfreerdp'" in message
    assert "SFT_RDP_PROGRAM" in message and "--no-launch" in message


async def test_a_client_killed_by_a_signal_exits_like_a_shell_says(tmp_path: Path) -> None:
    program = _script(tmp_path, "os.kill(os.getpid(), 15)")
    assert await run_client(LaunchPlan([program]), asyncio.Event()) == 128 + 15


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress(stream)
    progress.step("certificate for win-1")
    progress.step("broker at 10.0.0.9:4421")
    progress.done()
    assert stream.getvalue().count("\n") == 0
    assert stream.getvalue().endswith("broker at 10.0.0.9:4421\r\x1b[K")


def test_progress_is_silent_off_a_terminal_unless_verbose() -> None:
    quiet, loud = io.StringIO(), io.StringIO()
    Progress(quiet).step("certificate")
    Progress(quiet).say("tunnel open")
    Progress(loud, verbose=True).step("certificate")
    assert quiet.getvalue() == ""
    assert loud.getvalue() == "sft rdp: certificate\n"
