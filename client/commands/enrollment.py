"""`sft enroll` and `sft unenroll`: make this machine a device of a team, or stop being one."""

from __future__ import annotations

import asyncio
import datetime as dt

import click

from client.commands.options import team_option
from client.errors import ClientError
from client.output import emit, human_time, output_option, warn
from client.state import Home

__all__ = ["enroll_command", "unenroll_command"]


@click.command("enroll")
@click.option("--url", required=True, metavar="URL", help="The platform, https://HOST[:PORT].")
@click.option("--team", required=True, metavar="TEAM", help="The team to join.")
@click.option(
    "--code",
    required=True,
    metavar="CODE",
    help="One-time enrollment code (sftc1_…) from a team admin or `sft-platform init`.",
)
@click.option(
    "--name", "display_name", default=None, metavar="NAME", help="Device name [default: hostname]."
)
@output_option
def enroll_command(url: str, team: str, code: str, display_name: str | None, output: str) -> None:
    """Enroll this machine as a device of TEAM, then log in.

    The device makes its own key pair; only the public key is sent. The code also
    pins the platform's TLS CA, so a server that cannot show that CA is refused
    before anything is sent. The first team enrolled becomes the current team.

    \b
    Examples:
      sft enroll --url https://sft.example.com --team acme --code sftc1_…
      sft enroll --url https://127.0.0.1:8443 --team demo --code sftc1_… --name laptop
    """
    # Imported here: grpc and pyOpenSSL cost a third of a second that `sft --help` and
    # the other verbs should not pay.
    from client.enrollment import enroll

    result = asyncio.run(enroll(Home(), url=url, team=team, code=code, display_name=display_name))
    record = result.record
    now = dt.datetime.now(dt.UTC)
    expire = result.login.expire_time if result.login else None
    lines = [
        f"Enrolled this device in team {record.team} as {record.user_name} "
        f"(device {record.device}).",
        f"Key fingerprint: {result.fingerprint}",
    ]
    if expire is not None:
        lines.append(f"Logged in; access token valid until {human_time(expire, now)}.")
    if result.became_current:
        lines.append(f"{record.team} is now the current team.")
    emit(
        output,
        {
            "team": record.team,
            "url": record.url,
            "user": record.user,
            "device": record.device,
            "fingerprint": result.fingerprint,
            "current": result.became_current,
            "expire_time": expire.isoformat() if expire else None,
        },
        "\n".join(lines),
    )
    if result.login_error is not None:
        raise ClientError(
            f"enrolled, but could not log in: {result.login_error.reason}",
            hint=f"try again with `sft login --team {record.team}`",
        )


@click.command("unenroll")
@team_option
@click.option(
    "--force",
    is_flag=True,
    help="Delete the local state even if the platform cannot be told (unreachable, refused).",
)
@output_option
def unenroll_command(team: str | None, force: bool, output: str) -> None:
    """Revoke this device on the platform and delete its key and state for the team.

    \b
    Examples:
      sft unenroll --team acme
      sft unenroll --team acme --force   # platform gone: forget it here anyway
    """
    from client.enrollment import unenroll

    result = asyncio.run(unenroll(Home(), team, force=force))
    if result.warning is not None:
        warn(
            f"could not revoke the device on the platform ({result.warning}); if it is still "
            "enrolled there, a team admin can revoke it"
        )
    if result.revoked:
        text = f"Revoked device {result.device} and removed its local state for team {result.team}."
    else:
        text = f"Removed the local state of team {result.team}."
    emit(
        output,
        {
            "team": result.team,
            "device": result.device or None,
            "revoked": result.revoked,
            "local_state_removed": True,
        },
        text,
    )
