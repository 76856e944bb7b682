"""`sft-platform`: serve, migrate and bootstrap the platform.

Every verb reads the same settings (flags, SFT_PLATFORM_* variables, --config file).
Errors are one line on stderr and a non-zero exit; never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runtime.config import ConfigError, load_config
from runtime.database import describe_database_error
from runtime.errors import SftError
from runtime.logging import configure_logging
from runtime.server import ListenError
from services.platform.settings import ENV_PREFIX, SERVICE_NAMES, PlatformSettings

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one line saying what is wrong and exit."""
    click.echo(f"sft-platform: error: {message}", err=True)
    sys.exit(code)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro`, turning known failures into one-line errors."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except ListenError as exc:
        fail(str(exc))
    except SftError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:
        message = describe_database_error(exc)
        if message is None:
            raise
        fail(message)


def settings_options(func: F) -> F:
    """Add the options every verb shares and pass a validated PlatformSettings."""

    @click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        envvar=f"{ENV_PREFIX}CONFIG",
        help="YAML file with settings.",
    )
    @click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Directory for the SQLite file and self-made TLS material.",
    )
    @click.option(
        "--database-url", default=None, help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB."
    )
    @click.option(
        "--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"])
    )
    @wraps(func)
    def wrapper(config_file: Path | None, **kwargs: Any) -> Any:
        own = {k: kwargs.pop(k) for k in ("data_dir", "database_url", "log_level")}
        extra = kwargs.pop("_settings_overrides", {})
        try:
            settings = load_config(
                PlatformSettings,
                file=config_file,
                env_prefix=ENV_PREFIX,
                overrides={**own, **extra},
                ignore_env=frozenset({f"{ENV_PREFIX}CONFIG"}),
            )
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        configure_logging(settings.log_level, settings.log_format)
        return func(settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def serve_overrides(func: F) -> F:
    """Collect serve-only flags into the settings overrides."""

    @wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        keys = ("listen", "internal_listen", "services", "metrics_listen", "auto_migrate")
        kwargs["_settings_overrides"] = {k: kwargs.pop(k) for k in keys}
        return func(**kwargs)

    return wrapper  # type: ignore[return-value]


services_option = click.option(
    "--services",
    default=None,
    help=f"Comma-separated subset of {','.join(SERVICE_NAMES)} [default: all].",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sft", prog_name="sft-platform")
def main() -> None:
    """Run the sft platform: the CA, inventory and auth services behind one endpoint."""


@main.command()
@click.option("--listen", default=None, help="HOST:PORT to serve on [default: 127.0.0.1:8443].")
@click.option(
    "--internal-listen",
    default=None,
    help="HOST:PORT where platform services call each other (mutual TLS), or 'off' "
    "[default: 127.0.0.1:8444].",
)
@services_option
@click.option("--metrics-listen", default=None, help="HOST:PORT for Prometheus /metrics.")
@click.option(
    "--auto-migrate",
    is_flag=True,
    default=None,
    help="Apply pending database migrations before serving.",
)
@serve_overrides
@settings_options
def serve(settings: PlatformSettings) -> None:
    """Serve the selected services on one TLS endpoint until SIGTERM.

    \b
    Examples:
      sft-platform serve --data-dir ./data
      sft-platform serve --services ca --database-url postgresql://sft@db/sft
    """
    from services.platform.commands import serve_platform

    run_async(serve_platform(settings))


@main.command()
@click.option("--check", is_flag=True, help="Only report; exit 1 if migrations are pending.")
@services_option
@settings_options
def migrate(settings: PlatformSettings, check: bool, services: str | None) -> None:
    """Bring every service's tables to the newest schema (safe to run repeatedly)."""
    from services.platform.commands import migrate_platform

    selected = tuple(services.split(",")) if services else settings.services
    unknown = [s for s in selected if s not in SERVICE_NAMES]
    if unknown:
        fail(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICE_NAMES)}", EXIT_CONFIG)
    pending = run_async(migrate_platform(settings, selected, check_only=check))
    if check and pending:
        fail(f"migrations pending for: {', '.join(pending)}; run `sft-platform migrate`")


@main.command()
@click.option("--team", required=True, help="Name of the team to create.")
@click.option("--admin", "admin", required=True, help="User name of the team's first admin.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--existing-ok",
    is_flag=True,
    help="If the team exists, issue a fresh code for the admin instead of failing.",
)
@settings_options
def init(
    settings: PlatformSettings, team: str, admin: str, as_json: bool, existing_ok: bool
) -> None:
    """Create a team and its first admin; print the admin's one-time enrollment code.

    \b
    Example:
      sft-platform init --team acme --admin alice
    """
    from services.platform.commands import bootstrap_team

    result = run_async(bootstrap_team(settings, team, admin, existing_ok=existing_ok))
    if as_json:
        click.echo(json.dumps(result.as_json()))
    else:
        click.echo(result.describe())


@main.command("enrollment-code")
@click.option("--team", required=True, help="Team of the user.")
@click.option("--user", "user", required=True, help="User who will enroll a device.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options
def enrollment_code(settings: PlatformSettings, team: str, user: str, as_json: bool) -> None:
    """Issue a fresh one-time enrollment code for an existing user (operator break-glass)."""
    from services.platform.commands import issue_code_for

    result = run_async(issue_code_for(settings, team, user))
    click.echo(json.dumps(result.as_json()) if as_json else result.describe())


@main.command("generate-kek")
@click.argument("path", type=click.Path(path_type=Path))
def generate_kek(path: Path) -> None:
    """Write a new key-encryption key for the CA's private keys to PATH (mode 0600).

    Give it to every CA replica as ca_kek_file, or its content as SFT_PLATFORM_CA_KEK
    (e.g. from a Kubernetes Secret). Refuses to overwrite an existing file: CA keys
    sealed with the old key could no longer be opened.

    \b
    Example:
      sft-platform generate-kek /etc/sft/ca-kek.key
    """
    from services.ca.key_encryption import generate_key_file

    try:
        kek = generate_key_file(path)
    except SftError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    click.echo(f"wrote key-encryption key {kek.key_id} to {path}")
