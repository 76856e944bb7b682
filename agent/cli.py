"""Entry point of `sftd`: run the agent (the default), or report its status.

A bad sftd.yaml or an unusable state dir is one `sftd: error: …` line on stderr and
exit status 2 (config) or 1 (state), never a traceback. `sftd status` reads the
state dir only; it never contacts the platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import structlog

from agent.accounts.managed import CorruptRecord
from agent.broker import Broker
from agent.cli_exit import EXIT_FAILURE, EXIT_NOT_ENROLLED, EXIT_USAGE
from agent.cli_exit import fail as _fail
from agent.config import AgentConfig, ConfigError, load_config
from agent.daemon import (
    AccountSink,
    ControlChannel,
    Daemon,
    HostTrustSink,
    LoggingAccountSink,
    NoHostTrust,
)
from agent.log_file import log_to_file
from agent.paths import default_paths
from agent.service_cli import service_group
from agent.state import AgentState, StateError
from runtime.logging import configure_logging

__all__ = ["EXIT_NOT_ENROLLED", "main"]

log = structlog.get_logger("sftd")


def _config(ctx: click.Context) -> AgentConfig:
    conf: Path | None = ctx.obj
    try:
        return load_config(conf)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--conf",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"sftd.yaml to read (default: {default_paths().config_file}; absent there: defaults).",
)
@click.version_option(package_name="sft", prog_name="sftd")
@click.pass_context
def main(ctx: click.Context, conf: Path | None) -> None:
    """The sft server agent. Without a verb it runs the agent (as `sftd run`)."""
    ctx.obj = conf
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_command)


@dataclass(frozen=True)
class AccountWiring:
    """Where desired account lists go, and the control channel sharing its accounts."""

    sink: AccountSink
    #: None when ManageAccounts is off: nothing to enable or disable.
    control: ControlChannel | None = None


def account_wiring(config: AgentConfig, *, broker_group: int | None = None) -> AccountWiring:
    """Return the reconciler for this OS and the control channel over the same accounts.

    Both share one backend and one ManagedAccounts (and so its lock): a grant and a
    revocation of the same account never interleave. ManageAccounts off: a log line.
    `broker_group`: the broker's own group, let into the control socket (mode 0660).
    """
    if not config.manage_accounts:
        return AccountWiring(LoggingAccountSink("ManageAccounts is off"))
    from agent.accounts.access import AccountAccess
    from agent.accounts.backend import AccountBackend
    from agent.accounts.linux import LinuxAccounts
    from agent.accounts.managed import RECORD_FILE, ManagedAccounts
    from agent.accounts.reconcile import Reconciler
    from agent.accounts.windows import WindowsAccounts
    from agent.control import ControlServer
    from agent.paths import current_os

    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    managed = ManagedAccounts.load(config.state_dir / RECORD_FILE)
    backend: AccountBackend
    if current_os() == "windows":
        backend, zero_standing_privilege = WindowsAccounts(), True
    else:
        # Accounts stay usable with certificates; the broker (RDP) path turns on zero
        # standing privilege where it runs.
        backend, zero_standing_privilege = LinuxAccounts(), config.broker
    access = AccountAccess(backend, managed, zero_standing_privilege=zero_standing_privilege)
    return AccountWiring(
        Reconciler(backend, managed, zero_standing_privilege=zero_standing_privilege),
        ControlServer(
            access, AgentState(config.state_dir), broker=config.broker, group=broker_group
        ),
    )


def account_sink(config: AgentConfig) -> AccountSink:
    """Return where desired account lists go: the reconciler for this OS, or a log line."""
    return account_wiring(config).sink


def broker_wiring(config: AgentConfig) -> tuple[AccountWiring, Broker | None]:
    """Return the account wiring and, with `Broker: true`, the broker whose grants it ends.

    Finds (as root: creates) the broker's user first: the control socket opens to its group.
    """
    if not config.broker:
        return account_wiring(config), None
    from agent.broker import wire_broker
    from agent.broker_account import broker_account
    from agent.control import ControlServer
    from agent.paths import current_os

    account = broker_account(config.broker_user) if current_os() == "linux" else None
    wiring = account_wiring(config, broker_group=account.group if account else None)
    control = wiring.control
    assert isinstance(control, ControlServer)  # Broker needs ManageAccounts (config checks)

    async def fail_closed(reason: str) -> None:
        await control.grants.disable_all(reason=f"broker: {reason}")

    return wiring, wire_broker(config, fail_closed, account=account)


def host_trust_sink(config: AgentConfig) -> HostTrustSink:
    """Return where the project's CA keys and host certificates go: sshd, with ManageSSHD."""
    if not config.manage_sshd:
        return NoHostTrust()
    from agent.sshd import SSHDTrust

    return SSHDTrust(config)


async def _serve(daemon: Daemon) -> None:
    """Run `daemon` until it fails or SIGTERM/SIGINT asks it to stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows: the service stops it
            loop.add_signal_handler(number, stop.set)
    runner = asyncio.create_task(daemon.run(), name="sftd")
    stopper = asyncio.create_task(stop.wait(), name="stop-signal")
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not runner.done():
        log.info("stopping")
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        log.info("stopped")
        return
    runner.result()


def _first(error: BaseException, kinds: tuple[type[Exception], ...]) -> Exception | None:
    """Return the first exception of `kinds` in `error` or its groups."""
    if isinstance(error, kinds):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first(inner, kinds)
            if found is not None:
                return found
    return None


@main.command("run")
@click.pass_context
def run_command(ctx: click.Context) -> None:
    """Run the agent: enroll if needed, heartbeat, keep accounts as the platform says."""
    config = _config(ctx)
    configure_logging(config.log_level)
    log_problem = log_to_file(config.log_dir)
    log.info(
        "starting", state_dir=str(config.state_dir), log_dir=str(config.log_dir), pid=os.getpid()
    )
    try:
        wiring, broker = broker_wiring(config)
    except (CorruptRecord, StateError) as error:
        _fail(str(error), EXIT_FAILURE)
    sink = wiring.sink
    daemon = Daemon(
        config,
        accounts=sink,
        host_trust=host_trust_sink(config),
        control=wiring.control,
        broker=broker,
        problems={"log": log_problem} if log_problem else None,
    )
    if getattr(sink, "on_conflict", "absent") is None:
        sink.on_conflict = daemon.report_conflict  # type: ignore[attr-defined]
    try:
        asyncio.run(_serve(daemon))
    except BaseException as error:
        known = _first(error, (ConfigError, StateError))
        if isinstance(known, ConfigError):
            _fail(str(known), EXIT_USAGE)
        if isinstance(known, StateError):
            _fail(str(known), EXIT_FAILURE)
        if isinstance(error, KeyboardInterrupt):
            sys.exit(130)
        log.exception("sftd stopped by an unexpected error")
        sys.exit(EXIT_FAILURE)


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _daemon_running(pid: int) -> bool | None:
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def status_document(config: AgentConfig) -> dict[str, Any]:
    """Return what `sftd status -o json` prints (StateError for an unusable state dir)."""
    state = AgentState(config.state_dir)
    identity = state.read_identity() if config.state_dir.is_dir() else None
    report = state.read_status() if identity is not None else None
    document: dict[str, Any] = {
        "enrolled": identity is not None,
        "state_dir": str(config.state_dir),
        "enrollment_token_file": str(config.enrollment_token_file),
        "enrollment_token_present": config.enrollment_token_file.exists(),
        "server": None,
        "daemon": None,
    }
    if identity is not None:
        document["server"] = {
            "name": identity.server,
            "id": identity.server_id,
            "platform_url": identity.platform_url,
            "enrolled_at": identity.enrolled_at.isoformat(),
            "agent_key_fingerprint": identity.agent_key_fingerprint,
            "applied_revision": state.read_applied_revision(),
        }
    if report is not None:
        document["daemon"] = {
            "pid": report.pid,
            "running": _daemon_running(report.pid),
            "updated_at": _time(report.updated_at),
            "platform_reachable": report.platform_reachable,
            "last_heartbeat_time": _time(report.last_heartbeat_time),
            "last_sync_time": _time(report.last_sync_time),
            "applied_revision": report.applied_revision,
            "managed_accounts": report.managed_accounts,
            "broker": report.broker_state if config.broker else "disabled",
            "problems": list(report.problems),
        }
    return document


def _print_text(document: dict[str, Any]) -> None:
    server, daemon = document["server"], document["daemon"]
    if server is None:
        token = "present" if document["enrollment_token_present"] else "missing"
        click.echo("enrolled: no")
        click.echo(f"enrollment token: {document['enrollment_token_file']} ({token})")
        return
    click.echo("enrolled: yes")
    for label, key in (
        ("server", "name"),
        ("platform", "platform_url"),
        ("enrolled at", "enrolled_at"),
        ("agent key", "agent_key_fingerprint"),
        ("applied revision", "applied_revision"),
    ):
        click.echo(f"{label}: {server[key]}")
    if daemon is None:
        click.echo("daemon: no report yet")
        return
    running = {True: "running", False: "not running", None: "unknown"}[daemon["running"]]
    click.echo(f"daemon: pid {daemon['pid']} ({running}), report of {daemon['updated_at']}")
    reachable = "yes" if daemon["platform_reachable"] else "no"
    click.echo(f"platform reachable: {reachable}")
    click.echo(f"last heartbeat: {daemon['last_heartbeat_time'] or 'never'}")
    click.echo(f"last sync: {daemon['last_sync_time'] or 'never'}")
    click.echo(f"managed accounts: {daemon['managed_accounts']}")
    click.echo(f"broker: {daemon['broker'] or 'unknown'}")
    for problem in daemon["problems"]:
        click.echo(f"problem: {problem}")


@main.command("status")
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_context
def status_command(ctx: click.Context, output: str) -> None:
    """Show enrollment and the daemon's last report, from the state dir only.

    Exit status 0 when enrolled, 3 when not.
    """
    config = _config(ctx)
    try:
        document = status_document(config)
    except StateError as exc:
        _fail(str(exc), EXIT_FAILURE)
    if output == "json":
        click.echo(json.dumps(document, sort_keys=True))
    else:
        _print_text(document)
    if not document["enrolled"]:
        sys.exit(EXIT_NOT_ENROLLED)


main.add_command(service_group)
