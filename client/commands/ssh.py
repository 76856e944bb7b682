"""`sft ssh`, `sft proxycommand` and `sft ssh-config`: OpenSSH to enrolled servers by name.

The cache decides first (client.ssh_cache); the platform is asked only for what is
missing or about to expire (client.ssh_credentials). When the platform cannot be
reached, a cached certificate that still works is used, with a warning.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import TYPE_CHECKING

import click

from client.commands.options import team_option
from client.errors import EXIT_USAGE, ClientError
from client.ssh_args import SSHInvocation, SSHUsageError, parse_ssh_args
from client.ssh_cache import SSHCache
from client.ssh_proxy import ProxyError, hand_over, install_certificate
from client.ssh_run import route_for, run_ssh, team_or_default
from client.state import Home

if TYPE_CHECKING:
    pass

__all__ = [
    "proxycommand_command",
    "ssh_command",
    "ssh_config_command",
]


SSH_HELP = """Open a shell (or run COMMAND) on server NAME over OpenSSH.

\b
NAME is a server's name, alias, address or id (see `sft list-servers`).
sft gets a short-lived certificate for the server's project (reused until
shortly before it expires), trusts only the project's host CA, logs in as
the account the platform names, and goes through every --via bastion and
the project's required bastion, each with its own certificate.

\b
Options:
  --via BASTION     jump through this enrolled server first (repeatable,
                    in order)
  --project P       look NAME up in project P only
  --team TEAM       team to act on [default: $SFT_TEAM, else the current one]
  -l ACCOUNT        log in as one of the project's admin accounts (e.g. root;
                    needs an admin grant and the project's permission)
  -p PORT           dial this port instead of the one the platform knows
  -h, --help        show this message
Any other ssh(1) option (-L, -R, -D, -A, -t, -v, -o K=V, ...) goes to ssh.
-J is refused: use --via. ssh runs with `-F none` (only these options
apply) unless you give -F FILE.

\b
Examples:
  sft ssh web-1
  sft ssh web-1 -- uptime
  sft ssh --via bastion-1 --via bastion-2 db-1 -- pg_isready
  sft ssh -L 8080:localhost:80 web-1
  sft ssh -l root web-1 -- systemctl restart nginx

ssh's exit status is sft's; sft's own failures exit 1 (2 for usage).
"""


@click.command(
    "ssh",
    help=SSH_HELP,
    short_help="Open a shell on a server over OpenSSH.",
    context_settings={
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def ssh_command(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Open a shell on a server over OpenSSH (see SSH_HELP)."""
    try:
        call = parse_ssh_args(list(args))
    except SSHUsageError as exc:
        raise ClientError(f"{exc} (see `sft ssh --help`)", EXIT_USAGE) from None
    if call.help:
        click.echo(ctx.get_help())
        return
    run_ssh(call)


@click.command("proxycommand")
@team_option
@click.option(
    "--fdpass",
    is_flag=True,
    help="Hand ssh the connected socket (with ssh's `ProxyUseFdpass yes`) instead of relaying.",
)
@click.argument("name")
@click.argument("port", required=False, type=click.IntRange(1, 65535))
def proxycommand_command(team: str | None, fdpass: bool, name: str, port: int | None) -> None:
    """Connect ssh's stdin/stdout to server NAME (for ssh's ProxyCommand).

    Gets or renews the certificate first and puts it where the block from
    `sft ssh-config` tells ssh to look, then connects through the server's
    bastions when it has any. PORT overrides the platform's ssh port.

    \b
    Examples (in ~/.ssh/config; `sft ssh-config` writes this for you):
      ProxyCommand sft proxycommand --fdpass %n
      ProxyUseFdpass yes
    """
    call = SSHInvocation(name=name, team=team)
    cache, route = route_for(call)
    try:
        install_certificate(cache, route, name)
        hand_over(cache, route, port=port, fdpass=fdpass)
    except ProxyError as exc:
        raise ClientError(str(exc)) from None


def _sft_program() -> str:
    """Return how ssh should start this sft (an absolute path when one is known)."""
    found = shutil.which("sft")
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 and os.path.basename(argv0) == "sft" and os.access(argv0, os.X_OK):
        return argv0
    return found or "sft"


def ssh_config_text(home: Home, team: str | None) -> str:
    """Return the ~/.ssh/config block that makes plain ssh reach the team's servers by name."""
    team_dir = home.enrolled(team_or_default(team))
    cache = SSHCache(team_dir.path)
    user = team_dir.read_device().user_name
    sft = shlex.quote(_sft_program())
    team_flag = f"--team {team_dir.team}"

    def path(value: object) -> str:
        return '"' + str(value) + '"'

    return "\n".join(
        [
            f"# sft: reach the servers of team {team_dir.team} by name with plain ssh, scp,",
            "# rsync and git. Written by `sft ssh-config`; paste it into ~/.ssh/config.",
            f'Match exec "{sft} resolve -q {team_flag} %n"',
            f"    ProxyCommand {sft} proxycommand {team_flag} --fdpass %n",
            "    ProxyUseFdpass yes",
            f"    User {user}",
            f"    IdentityFile {path(cache.key_file)}",
            f"    CertificateFile {path(os.path.join(cache.hosts_dir, '%n-cert.pub'))}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {path(cache.known_hosts_file)}",
            "    StrictHostKeyChecking yes",
            "    CheckHostIP no",
            "    UpdateHostKeys no",
            "    PasswordAuthentication no",
            "",
        ]
    )


@click.command("ssh-config")
@team_option
def ssh_config_command(team: str | None) -> None:
    """Print the OpenSSH config block that lets plain ssh, scp, rsync and git reach servers.

    A `Match exec "sft resolve -q %n"` guard applies it only to names sft knows;
    ProxyCommand `sft proxycommand` renews the certificate and connects,
    through bastions when needed.

    \b
    Examples:
      sft ssh-config >> ~/.ssh/config
      ssh web-1
      scp report.txt web-1:/tmp/
    """
    click.echo(ssh_config_text(Home(), team), nl=False)
