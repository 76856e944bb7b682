"""The broker supervisor with a real child process standing in for sft-broker.

The stand-in is a small Python program that takes sft-broker's arguments, listens on
its --listen port, and writes one JSON and one plain log line. Accounts are the
recording backend's, enabled through the real AccountGrants.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.broker_account import BrokerAccount
from agent.broker_process import LinuxLauncher
from agent.broker_supervisor import (
    BrokerCommand,
    BrokerState,
    BrokerStatus,
    BrokerSupervisor,
    SupervisorTimings,
    relay_line,
)
from agent.control import AccountGrants
from agent.tests.test_control import accounts, locked
from tests.support.ports import free_port

WAIT_SECONDS = 30.0
FAST = SupervisorTimings(
    restart_initial_seconds=0.4,
    restart_maximum_seconds=1.0,
    stable_seconds=30.0,
    probe_seconds=0.02,
    recheck_seconds=0.05,
    stop_seconds=2.0,
    start_timeout_seconds=15.0,
)

STAND_IN = """\
import argparse, json, signal, socket, sys, time
parser = argparse.ArgumentParser()
for option in ("--listen", "--tls-dir", "--control", "--target", "--grace-seconds",
               "--log-level", "--log-format"):
    parser.add_argument(option, required=True)
args = parser.parse_args()
host, _, port = args.listen.rpartition(":")
{before_listen}
server = socket.socket()
server.bind((host, int(port)))
server.listen()
print(json.dumps({{"event": "broker listening", "level": "warning", "port": int(port),
                  "timestamp": "then"}}), flush=True)
print("plain words on stderr", file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, {on_term})
while True:
    time.sleep(1)
"""


def stand_in(
    tmp_path: Path, *, before_listen: str = "", on_term: str = "lambda *_: sys.exit(0)"
) -> Path:
    """Write the stand-in sft-broker (executable) and return its path."""
    program = tmp_path / "sft-broker"
    body = STAND_IN.format(before_listen=before_listen, on_term=on_term)
    program.write_text(f"#!{sys.executable}\n{body}")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def command(program: Path, port: int, tmp_path: Path) -> BrokerCommand:
    """Return the command line for `program` on 127.0.0.1:`port`."""
    return BrokerCommand(
        program=program,
        listen_address="127.0.0.1",
        port=port,
        tls_dir=tmp_path / "broker",
        control=tmp_path / "control.sock",
        target="127.0.0.1:3389",
        grace_seconds=5,
        log_level="info",
    )


def own_account() -> BrokerAccount:
    """Return sftd's own user as the broker's (no switch)."""
    return BrokerAccount("self", os.geteuid(), os.getegid(), separate=False)


@dataclass
class Watch:
    """Every status change and every fail-closed call, in order."""

    events: list[tuple[str, object]] = field(default_factory=list)
    blocked: str | None = None

    def change(self, status: BrokerStatus) -> None:
        self.events.append(("status", status))

    def states(self) -> list[BrokerState]:
        return [s.state for kind, s in self.events if isinstance(s, BrokerStatus)]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for `condition`."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """Return whether `pid` runs (and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
async def grants(tmp_path: Path) -> AccountGrants:
    """Real grants over the recording backend (alice granted, locked)."""
    setup = await accounts(tmp_path)
    return AccountGrants(setup.access)


@asynccontextmanager
async def supervised(supervisor: BrokerSupervisor) -> AsyncIterator[asyncio.Task[None]]:
    """Run `supervisor`; cancel and await it afterwards (it stops the broker)."""
    task = asyncio.create_task(supervisor.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def supervisor_for(
    program: Path, port: int, tmp_path: Path, grants: AccountGrants, watch: Watch
) -> BrokerSupervisor:
    """Return a supervisor of `program` that ends `grants` when it dies."""

    async def fail_closed(reason: str) -> None:
        watch.events.append(("fail_closed", reason))
        await grants.disable_all(reason=reason)

    return BrokerSupervisor(
        command(program, port, tmp_path),
        LinuxLauncher(own_account()),
        blocked=lambda: watch.blocked,
        fail_closed=fail_closed,
        on_change=watch.change,
        timings=FAST,
    )


async def test_a_killed_broker_has_its_grants_ended_and_is_restarted_with_backoff(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch()
    supervisor = supervisor_for(stand_in(tmp_path), port, tmp_path, grants, watch)
    with capture_logs() as logs:
        async with supervised(supervisor):
            await until(lambda: supervisor.status.state is BrokerState.RUNNING, "RUNNING")
            first = supervisor.status.pid
            assert first is not None and alive(first)
            password, _ = await grants.enable("alice", "grant-1", 600)
            assert password is not None and not locked(grants.access.backend, "alice")  # type: ignore[arg-type]

            os.kill(first, signal.SIGKILL)
            killed_at = time.monotonic()
            await until(lambda: supervisor.status.state is BrokerState.FAILED, "FAILED")
            assert locked(grants.access.backend, "alice")  # type: ignore[arg-type]
            assert grants.live() == []
            await until(
                lambda: (
                    supervisor.status.state is BrokerState.RUNNING
                    and supervisor.status.pid != first
                ),
                "a second broker",
            )
            restarted_after = time.monotonic() - killed_at
            second = supervisor.status.pid
            assert second is not None and alive(second)
        assert not alive(second), "stopping the supervisor stops the broker"
    assert supervisor.status.state is BrokerState.DISABLED
    # Full jitter of half: the first restart waits 0.2 to 0.4 s.
    assert 0.2 <= restarted_after < 3.0
    assert supervisor.restarts == 1
    kinds = [kind for kind, _ in watch.events]
    failed_closed = kinds.index("fail_closed")
    restarted = [i for i, (kind, s) in enumerate(watch.events) if kind == "status"
                 and isinstance(s, BrokerStatus) and s.pid == second]  # fmt: skip
    assert failed_closed < restarted[0], "grants end before the broker is restarted"
    assert watch.events[failed_closed][1] == "the broker exited with status -9"
    assert watch.states()[:2] == [BrokerState.STARTING, BrokerState.RUNNING]
    relayed = [entry for entry in logs if entry.get("source") == "broker"]
    assert {"event": "broker listening", "port": port, "log_level": "warning",
            "source": "broker"} in relayed  # fmt: skip
    assert any(entry["event"] == "plain words on stderr" for entry in relayed)
    problems = [s.problem for kind, s in watch.events if isinstance(s, BrokerStatus)]
    assert any(p and "exited with status -9; restarting it in" in p for p in problems)


async def test_restarts_back_off_while_the_broker_keeps_failing(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch()
    program = stand_in(tmp_path, before_listen="sys.exit(3)")
    supervisor = supervisor_for(program, port, tmp_path, grants, watch)
    async with supervised(supervisor):
        await until(lambda: supervisor.restarts >= 3, "three failures")
    assert BrokerState.RUNNING not in watch.states()
    closed = [reason for kind, reason in watch.events if kind == "fail_closed"]
    assert closed[:3] == ["the broker exited with status 3"] * 3
    assert supervisor.status.state in (BrokerState.FAILED, BrokerState.DISABLED)


async def test_a_broker_that_ignores_sigterm_is_killed(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch()
    program = stand_in(tmp_path, on_term="signal.SIG_IGN")
    supervisor = supervisor_for(program, port, tmp_path, grants, watch)
    async with supervised(supervisor):
        await until(lambda: supervisor.status.state is BrokerState.RUNNING, "RUNNING")
        pid = supervisor.status.pid
        assert pid is not None
        stopping = time.monotonic()
    assert not alive(pid)
    assert FAST.stop_seconds <= time.monotonic() - stopping < FAST.stop_seconds + 3


async def test_without_a_certificate_the_broker_waits_starting_and_says_why(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch(blocked="the broker has no server certificate yet")
    supervisor = supervisor_for(stand_in(tmp_path), port, tmp_path, grants, watch)
    async with supervised(supervisor):
        await asyncio.sleep(0.2)
        assert supervisor.status == BrokerStatus(
            BrokerState.STARTING, "the broker has no server certificate yet"
        )
        watch.blocked = None
        supervisor.files_changed()
        await until(lambda: supervisor.status.state is BrokerState.RUNNING, "RUNNING")
    assert [kind for kind, _ in watch.events].count("fail_closed") == 0


async def test_a_missing_program_is_failed_with_the_reason(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch()
    supervisor = supervisor_for(tmp_path / "no-such-broker", port, tmp_path, grants, watch)
    async with supervised(supervisor):
        await until(lambda: supervisor.status.state is BrokerState.FAILED, "FAILED")
    problem = next(s.problem for kind, s in watch.events
                   if isinstance(s, BrokerStatus) and s.state is BrokerState.FAILED)  # fmt: skip
    assert problem is not None
    assert problem.startswith(f"cannot start the broker ({tmp_path / 'no-such-broker'}): ")
    assert "No such file or directory" in problem


async def test_a_broker_that_never_listens_is_killed_and_restarted(
    tmp_path: Path, grants: AccountGrants
) -> None:
    port, watch = free_port(), Watch()
    program = stand_in(tmp_path, before_listen="time.sleep(600)")
    supervisor = supervisor_for(program, port, tmp_path, grants, watch)
    supervisor._timings = dataclasses.replace(FAST, start_timeout_seconds=0.5)
    async with supervised(supervisor):
        await until(lambda: supervisor.restarts >= 1, "a restart")
    assert next(reason for kind, reason in watch.events if kind == "fail_closed") == (
        "the broker exited with status -9"
    )
    assert BrokerState.RUNNING not in watch.states()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize("setpriv", [True, False])
async def test_as_root_the_broker_runs_as_its_user_with_no_other_groups(setpriv: bool) -> None:
    nobody = BrokerAccount("nobody", 65534, 65534, separate=True)
    launcher = LinuxLauncher(nobody)
    if not setpriv:
        launcher.setpriv = None  # Python switches users itself
    command, _ = launcher.command(["/usr/bin/id"])
    assert (command[0] == "/usr/bin/setpriv") is setpriv
    process = await launcher.spawn(["/usr/bin/id"])
    output = b"".join([line async for line in process.lines()]).decode()
    assert await process.wait() == 0
    assert output.startswith("uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)")
    if setpriv:  # and it cannot gain privileges back (setuid programs are inert)
        status = await launcher.spawn(["/bin/grep", "NoNewPrivs", "/proc/self/status"])
        assert b"".join([line async for line in status.lines()]).split() == [b"NoNewPrivs:", b"1"]


def test_the_command_line_is_sft_brokers() -> None:
    line = BrokerCommand(
        program=Path("/usr/bin/sft-broker"),
        listen_address="::",
        port=4421,
        tls_dir=Path("/var/lib/sftd/broker"),
        control=Path("/var/lib/sftd/control.sock"),
        target="127.0.0.1:3389",
        grace_seconds=60,
        log_level="warning",
    )
    assert line.argv() == [
        "/usr/bin/sft-broker", "--listen", "[::]:4421", "--tls-dir", "/var/lib/sftd/broker",
        "--control", "/var/lib/sftd/control.sock", "--target", "127.0.0.1:3389",
        "--grace-seconds", "60", "--log-level", "warning", "--log-format", "json",
    ]  # fmt: skip
    assert line.probe_address() == ("::1", 4421)


def test_a_line_that_is_not_json_is_relayed_as_text() -> None:
    with capture_logs() as logs:
        relay_line('{"event": "x", "self": 1, "source": "forged"}')
        relay_line("[1, 2]")
        relay_line("   ")
    assert logs == [
        {"event": "x", "source": "broker", "log_level": "info"},
        {"event": "[1, 2]", "source": "broker", "log_level": "info"},
    ]
