"""sftd's broker, wired from sftd.yaml: its user, its TLS dir, its command line, its supervisor.

Builds and starts nothing by itself (the daemon runs the supervisor); resolving the
broker's user may create it (see agent.broker_account).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.broker_account import BrokerAccount, broker_account
from agent.broker_process import BrokerLauncher, LinuxLauncher
from agent.broker_supervisor import (
    PROGRAM,
    BrokerCommand,
    BrokerStatus,
    BrokerSupervisor,
    SupervisorTimings,
    broker_program,
)
from agent.broker_tls import BrokerTLSFiles
from agent.config import AgentConfig
from agent.control_client import ENDPOINT_FILE, SOCKET_NAME
from agent.paths import current_os

__all__ = ["Broker", "broker_command", "wire_broker"]

FailClosed = Callable[[str], Awaitable[object]]


@dataclass
class Broker:
    """The broker's parts the daemon drives."""

    #: None on Windows (the broker runs as SYSTEM at Low integrity).
    account: BrokerAccount | None
    files: BrokerTLSFiles
    supervisor: BrokerSupervisor
    #: The daemon hears every status change here (set before the supervisor runs).
    listener: Callable[[BrokerStatus], None] | None = None

    @property
    def group(self) -> int | None:
        """Return the group StateDir and the control socket open to (None: none)."""
        return self.account.group if self.account is not None else None

    def _changed(self, status: BrokerStatus) -> None:
        if self.listener is not None:
            self.listener(status)


def broker_command(config: AgentConfig, program: Path | None = None) -> BrokerCommand:
    """Return the sft-broker command line for `config`."""
    windows = current_os() == "windows"
    return BrokerCommand(
        program=program or broker_program() or Path(PROGRAM),
        listen_address=config.broker_listen_address,
        port=config.broker_port,
        tls_dir=config.state_dir / "broker",
        control=config.state_dir / (ENDPOINT_FILE if windows else SOCKET_NAME),
        target=config.rdp_target,
        grace_seconds=config.session_grace_period_seconds,
        log_level=config.log_level,
    )


def wire_broker(
    config: AgentConfig,
    fail_closed: FailClosed,
    *,
    account: BrokerAccount | None = None,
    program: Path | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    timings: SupervisorTimings | None = None,
) -> Broker:
    """Return the broker for `config`: its user found (or made), files and supervisor ready.

    `fail_closed(reason)` ends every broker grant; the supervisor calls it when the
    broker dies. `account` defaults to BrokerUser (Linux).
    """
    now = clock or (lambda: dt.datetime.now(dt.UTC))
    launcher: BrokerLauncher
    if current_os() == "windows":
        from agent.broker_windows import LowIntegrityLauncher

        resolved, launcher = None, LowIntegrityLauncher()
    else:
        resolved = account or broker_account(config.broker_user)
        launcher = LinuxLauncher(resolved)
    owner = (resolved.uid, resolved.gid) if resolved is not None and resolved.separate else None
    files = BrokerTLSFiles(config.state_dir, owner=owner)
    broker: Broker
    supervisor = BrokerSupervisor(
        broker_command(config, program),
        launcher,
        blocked=lambda: files.missing(now()),
        fail_closed=fail_closed,
        on_change=lambda status: broker._changed(status),
        timings=timings,
    )
    broker = Broker(resolved, files, supervisor)
    return broker
