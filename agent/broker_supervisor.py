"""Running the broker (`sft-broker`) as sftd's child: start, watch, fail closed, restart.

The broker is RUNNING once its port accepts a TCP connection, STARTING before, and
FAILED when it exits; sftd then at once ends every broker grant (disabling the
accounts they held enabled) and only then restarts it, with capped jittered backoff.
On stop: SIGTERM, a few seconds, SIGKILL. Its output is relayed into sftd's log, one
event per line, tagged `source=broker`. Never starts it through a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.broker_process import BrokerLauncher, BrokerProcess
from runtime.backoff import Backoff

__all__ = [
    "BrokerCommand",
    "BrokerState",
    "BrokerStatus",
    "BrokerSupervisor",
    "SupervisorTimings",
    "broker_program",
]

log = structlog.get_logger("sftd.broker")

PROGRAM = "sft-broker"
#: A relayed line is cut to this many characters.
MAX_RELAYED_CHARS = 4096
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "exception": logging.ERROR,
}
# Fields of the broker's own JSON lines that sftd's log line sets itself.
_OWN_FIELDS = frozenset({"event", "level", "timestamp", "source", "self"})


def broker_program() -> Path | None:
    """Return the sft-broker program: beside sftd's Python first, else on PATH."""
    beside = Path(sys.executable).parent / PROGRAM
    if beside.is_file():
        return beside
    found = shutil.which(PROGRAM)
    return Path(found) if found is not None else None


class BrokerState(enum.Enum):
    """What the supervised broker is doing (agent_control.proto's BrokerState)."""

    DISABLED = "disabled"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True)
class BrokerStatus:
    """The broker's state, what is wrong (if anything), and its pid while it runs."""

    state: BrokerState
    problem: str | None = None
    pid: int | None = None


@dataclass(frozen=True)
class BrokerCommand:
    """The sft-broker command line sftd runs."""

    program: Path
    listen_address: str
    port: int
    tls_dir: Path
    #: The control socket (Windows: the control.endpoint file).
    control: Path
    target: str
    grace_seconds: int
    log_level: str

    def argv(self) -> list[str]:
        """Return the argument list."""
        host = f"[{self.listen_address}]" if ":" in self.listen_address else self.listen_address
        return [
            str(self.program),
            "--listen", f"{host}:{self.port}",
            "--tls-dir", str(self.tls_dir),
            "--control", str(self.control),
            "--target", self.target,
            "--grace-seconds", str(self.grace_seconds),
            "--log-level", self.log_level,
            "--log-format", "json",
        ]  # fmt: skip

    def probe_address(self) -> tuple[str, int]:
        """Return where to check that the broker accepts connections (loopback for 0.0.0.0/::)."""
        address = ipaddress.ip_address(self.listen_address)
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        return str(address), self.port


@dataclass(frozen=True)
class SupervisorTimings:
    """How the supervisor paces itself (tests shorten these)."""

    restart_initial_seconds: float = 1.0
    restart_maximum_seconds: float = 60.0
    #: A broker that ran this long had started fine: the next restart waits from the start.
    stable_seconds: float = 60.0
    #: How often to try the broker's port until it accepts.
    probe_seconds: float = 0.2
    #: A broker whose port does not accept by then is killed (and restarted).
    start_timeout_seconds: float = 60.0
    #: How often to look again at what keeps the broker from starting (its certificate).
    recheck_seconds: float = 30.0
    #: How long the broker has after SIGTERM before SIGKILL.
    stop_seconds: float = 5.0


class BrokerSupervisor:
    """Runs the broker for as long as `run` runs; `run` returns only by cancellation.

    `blocked` says why the broker cannot start yet (None: it can); `fail_closed` ends
    every broker grant, given the reason; `on_change` hears every status change.
    """

    def __init__(
        self,
        command: BrokerCommand,
        launcher: BrokerLauncher,
        *,
        blocked: Callable[[], str | None],
        fail_closed: Callable[[str], Awaitable[object]],
        on_change: Callable[[BrokerStatus], None] | None = None,
        timings: SupervisorTimings | None = None,
    ) -> None:
        self.command = command
        self._launcher = launcher
        self._blocked = blocked
        self._fail_closed = fail_closed
        self._on_change = on_change
        self._timings = timings or SupervisorTimings()
        self._wake = asyncio.Event()
        self.status = BrokerStatus(BrokerState.STARTING)
        self.restarts = 0

    def files_changed(self) -> None:
        """Look again at once at what kept the broker from starting (a certificate came)."""
        self._wake.set()

    def _set(self, state: BrokerState, problem: str | None = None, pid: int | None = None) -> None:
        status = BrokerStatus(state, problem, pid)
        if status != self.status:
            self.status = status
            if self._on_change is not None:
                self._on_change(status)

    async def run(self) -> None:
        """Start the broker, and restart it whenever it exits, until cancelled."""
        timings = self._timings
        backoff = Backoff(timings.restart_initial_seconds, timings.restart_maximum_seconds)
        while True:
            reason = self._blocked()
            if reason is not None:
                self._set(BrokerState.STARTING, reason)
                log.info("broker not started", reason=reason)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timings.recheck_seconds)
                continue
            started = time.monotonic()
            argv = self.command.argv()
            try:
                process = await self._launcher.spawn(argv)
            except OSError as error:
                problem = f"cannot start the broker ({argv[0]}): {error.strerror or error}"
            else:
                self._set(BrokerState.STARTING, None, process.pid)
                log.info("broker started", pid=process.pid, argv=argv)
                code = await self._supervise(process)
                problem = f"the broker exited with status {code}"
            delay = self._failed(problem, backoff, time.monotonic() - started)
            await asyncio.sleep(delay)

    def _failed(self, problem: str, backoff: Backoff, ran_seconds: float) -> float:
        """Record a failure; return how long to wait before the next start."""
        if ran_seconds >= self._timings.stable_seconds:
            backoff.reset()
        delay = backoff.next_delay()
        self.restarts += 1
        log.error("broker failed", reason=problem, restart_in_seconds=round(delay, 1))
        self._set(BrokerState.FAILED, f"{problem}; restarting it in {delay:.0f} s")
        return delay

    async def _supervise(self, process: BrokerProcess) -> int:
        """Relay and probe until `process` exits; then fail closed. Stop it if cancelled."""
        relay = asyncio.create_task(self._relay(process), name="broker-output")
        probe = asyncio.create_task(self._probe(process), name="broker-probe")
        try:
            code = await process.wait()
        except asyncio.CancelledError:
            probe.cancel()
            await self._stop(process)
            await _finish(relay, self._timings.stop_seconds)
            self._set(BrokerState.DISABLED, None)
            raise
        probe.cancel()
        # Fail closed before anything else: no account stays enabled by a dead broker.
        self._set(BrokerState.FAILED, f"the broker exited with status {code}")
        try:
            await self._fail_closed(f"the broker exited with status {code}")
        except Exception:
            log.exception("ending the broker's grants failed")
        await _finish(relay, self._timings.stop_seconds)
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        return code

    async def _stop(self, process: BrokerProcess) -> None:
        """SIGTERM the broker, wait a few seconds, then SIGKILL it."""
        log.info("stopping the broker", pid=process.pid)
        process.terminate()
        try:
            code = await asyncio.wait_for(process.wait(), self._timings.stop_seconds)
        except TimeoutError:
            log.warning("the broker did not stop; killing it", pid=process.pid)
            process.kill()
            code = await process.wait()
        log.info("broker stopped", pid=process.pid, status=code)

    async def _probe(self, process: BrokerProcess) -> None:
        """Mark the broker RUNNING once its port accepts a TCP connection."""
        host, port = self.command.probe_address()
        deadline = time.monotonic() + self._timings.start_timeout_seconds
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    log.error(
                        "the broker does not accept connections; killing it",
                        pid=process.pid,
                        address=f"{host}:{port}",
                        waited_seconds=self._timings.start_timeout_seconds,
                    )
                    process.kill()  # it exits, and is restarted like any other failure
                    return
                await asyncio.sleep(self._timings.probe_seconds)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._set(BrokerState.RUNNING, None, process.pid)
            log.info("broker running", pid=process.pid, address=f"{host}:{port}")
            return

    async def _relay(self, process: BrokerProcess) -> None:
        """Log each line the broker writes as one sftd log event."""
        async for raw in process.lines():
            relay_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def relay_line(text: str) -> None:
    """Log one broker output line: its JSON fields kept, its level honoured, tagged broker."""
    text = text[:MAX_RELAYED_CHARS]
    if not text.strip():
        return
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        log.info(text, source="broker")
        return
    level = _LEVELS.get(str(record.get("level", "info")).lower(), logging.INFO)
    event = str(record.get("event", ""))
    fields = {key: value for key, value in record.items() if key not in _OWN_FIELDS}
    log.log(level, event, source="broker", **fields)


async def _finish(task: asyncio.Task[None], timeout_seconds: float) -> None:
    """Let `task` end by itself for a while (its pipe closes with the process), then cancel it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_seconds)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
