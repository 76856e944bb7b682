"""`sftd service install|uninstall`: the verbs; agent.service and its backends do the work.

Both verbs need root (Administrator on Windows: sc.exe refuses otherwise) and refuse
with one line and exit 1 otherwise; a bad or missing sftd.yaml is exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from agent.cli_exit import EXIT_FAILURE, EXIT_USAGE, fail
from agent.config import ConfigError, load_config
from agent.paths import default_paths
from agent.service import (
    ServiceError,
    ServiceManager,
    ServiceSpec,
    service_manager,
    sftd_executable,
)

__all__ = ["service_group"]

_unit_dir_option = click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the systemd unit goes (default: /etc/systemd/system). Linux only.",
)


@click.group("service")
def service_group() -> None:
    """Install or remove sftd as a system service (systemd; Windows service)."""


def _manager(verb: str, unit_dir: Path | None) -> ServiceManager:
    if os.name == "posix" and os.geteuid() != 0:
        fail(
            f"sftd service {verb} must run as root (it changes the system's services)",
            EXIT_FAILURE,
        )
    return service_manager(unit_dir=unit_dir)


def _config_file(conf: Path | None) -> Path:
    """Return the absolute sftd.yaml the service will run with, once it loads cleanly."""
    path = Path(os.path.abspath(conf if conf is not None else default_paths().config_file))
    if not path.is_file():
        fail(
            f"config file {path} does not exist; the service runs sftd with it: write it "
            "first (at least InitialURL), or name another with `sftd --conf FILE service install`",
            EXIT_USAGE,
        )
    try:
        load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    return path


@service_group.command("install")
@_unit_dir_option
@click.pass_context
def install_command(ctx: click.Context, unit_dir: Path | None) -> None:
    """Run this sftd, with the sftd.yaml in effect, as a service started at boot (and now)."""
    manager = _manager("install", unit_dir)
    config_file = _config_file(ctx.obj)
    try:
        click.echo(manager.install(ServiceSpec(sftd_executable(), config_file)))
    except ServiceError as exc:
        fail(str(exc), EXIT_FAILURE)


@service_group.command("uninstall")
@_unit_dir_option
def uninstall_command(unit_dir: Path | None) -> None:
    """Stop sftd's service and remove it (its state dir and the accounts stay)."""
    manager = _manager("uninstall", unit_dir)
    try:
        click.echo(manager.uninstall())
    except ServiceError as exc:
        fail(str(exc), EXIT_FAILURE)
