"""Entry point of `sft`: the verbs, and the one place failures become one line on stderr.

Every failure is `sft: error: <what is wrong and what to do>` with exit status 1
(2 for a mistake in the command line, 130 when interrupted), never a traceback
(unless SFT_DEBUG is set, for bug reports).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

# gRPC's C core logs handshake failures on stderr by itself; sft reports them as one
# line instead. Set before grpc is imported anywhere; GRPC_VERBOSITY=debug still works.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click

from client.commands.admin import admin_group
from client.commands.enrollment import enroll_command, unenroll_command
from client.commands.login import login_command, logout_command
from client.commands.rdp import rdp_command
from client.commands.servers import list_servers_command, resolve_command
from client.commands.ssh import proxycommand_command, ssh_command, ssh_config_command
from client.commands.teams import (
    device_info_command,
    list_teams_command,
    use_command,
)
from client.errors import EXIT_FAILURE, EXIT_USAGE
from client.failures import fail, report_failure

__all__ = ["main"]


def _usage_message(error: click.UsageError) -> str:
    message = error.format_message().strip().replace("\n", " ")
    path = error.ctx.command_path if error.ctx is not None else "sft"
    return f"{message} (see `{path} --help`)"


class SftGroup(click.Group):
    """A click group whose failures are one line on stderr."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run a verb; report any failure as `sft: error: …`."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            fail(_usage_message(exc), EXIT_USAGE)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", EXIT_FAILURE)
        except (Exception, KeyboardInterrupt) as exc:
            report_failure(exc)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=SftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sft", prog_name="sft")
def main() -> None:
    """Reach enrolled servers over SSH and RDP with short-lived certificates.

    \b
    Start by enrolling this machine with a code from a team admin:
      sft enroll --url https://sft.example.com --team acme --code sftc1_…

    \b
    Environment:
      SFT_HOME   where sft keeps its state [default: the per-user config dir]
      SFT_TEAM   the team to act on when --team is not given
      SFT_DEBUG  show the traceback of an unexpected failure (for bug reports)
    """


for _command in (
    enroll_command,
    login_command,
    logout_command,
    unenroll_command,
    use_command,
    list_teams_command,
    device_info_command,
    list_servers_command,
    resolve_command,
    ssh_command,
    ssh_config_command,
    proxycommand_command,
    rdp_command,
    admin_group,
):
    main.add_command(_command)
