"""`sft rdp`: a remote desktop on an enrolled server through its broker, with a one-time password.

The work is client.rdp_run's; this module is the command line and its help.
"""

from __future__ import annotations

import sys

import click

from client.commands.options import team_option
from client.errors import EXIT_USAGE, ClientError
from client.output import JSON, table_output_option

__all__ = ["rdp_command"]


@click.command("rdp")
@team_option
@click.option("--project", metavar="P", default=None, help="Look NAME up in project P only.")
@click.option(
    "--via",
    "via",
    metavar="BASTION",
    multiple=True,
    help="Go through this enrolled server over SSH first (repeatable, in order).",
)
@click.option(
    "--no-launch",
    is_flag=True,
    help="Print the address, user, password and .rdp file instead of starting a client; "
    "keep the tunnel open until Ctrl-C.",
)
@click.option(
    "--rdp-file",
    metavar="PATH",
    default=None,
    help="Write the .rdp file here [default: in sft's cache, per server].",
)
@table_output_option
@click.option("-v", "--verbose", is_flag=True, help="Print each connection step on stderr.")
@click.argument("name")
def rdp_command(
    team: str | None,
    project: str | None,
    via: tuple[str, ...],
    no_launch: bool,
    rdp_file: str | None,
    output: str,
    verbose: bool,
    name: str,
) -> None:
    """Open a remote desktop on server NAME through its broker.

    \b
    sft gets a short-lived client certificate for NAME's project, goes
    through every --via bastion and the project's required bastion over SSH,
    checks that the broker is NAME's (a mismatch is refused: possible
    man-in-the-middle), asks it for access (it enables your account with a
    one-time password), listens on 127.0.0.1 at a random port that tunnels to
    the server's RDP service, writes an .rdp file and starts your RDP client
    with the password (Linux: xfreerdp, password on its stdin; Windows:
    mstsc; macOS: the app that opens .rdp files). When the client exits, the
    access is released and sft exits with the client's status.

    \b
    With --no-launch, sft prints the connection and holds the tunnel until
    Ctrl-C; `-o json` prints one line:
      {"address": "127.0.0.1:PORT", "username": ..., "password": ..., "rdp_file": ...}

    \b
    Examples:
      sft rdp win-1
      sft rdp --via bastion-1 win-1
      sft rdp --no-launch -o json win-1

    \b
    Environment:
      SFT_RDP_PROGRAM  the RDP client to start instead of the OS's (same arguments)
    """
    if output == JSON and not no_launch:
        raise ClientError(
            "-o json prints the connection for a script; use it with --no-launch "
            "(see `sft rdp --help`)",
            EXIT_USAGE,
        )
    from client.rdp_run import RDPInvocation, run_rdp

    call = RDPInvocation(
        name=name,
        team=team,
        project=project,
        via=list(via),
        launch=not no_launch,
        rdp_file=rdp_file,
        output=output,
        verbose=verbose,
    )
    sys.exit(run_rdp(call))
