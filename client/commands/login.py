"""`sft login` and `sft logout`: get a fresh access token for a team, or drop cached ones."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import click

from client.commands.options import team_option
from client.output import emit, human_time, output_option
from client.state import Home

if TYPE_CHECKING:
    from client.session import LoginResult

__all__ = ["login_command", "logout_command"]


async def _login(team: str | None) -> LoginResult:
    from client.session import Session  # grpc is imported only by verbs that call out

    async with Session.for_team(Home(), team) as session:
        return await session.login()


@click.command("login")
@team_option
@output_option
def login_command(team: str | None, output: str) -> None:
    """Get a fresh access token by proving this device holds its key.

    Other verbs log in by themselves when needed; run this to check that the
    platform still accepts this device. The token is stored, never printed.

    \b
    Examples:
      sft login
      sft login --team acme -o json
    """
    result = asyncio.run(_login(team))
    user = result.user.rsplit("/", 1)[-1]
    when = human_time(result.expire_time, dt.datetime.now(dt.UTC))
    emit(
        output,
        result.as_json(),
        f"Logged in to team {result.team} as {user}; access token valid until {when}.",
    )


@click.command("logout")
@team_option
def logout_command(team: str | None) -> None:
    """Delete this team's cached access token (the device stays enrolled).

    \b
    Examples:
      sft logout
      sft logout --team acme
    """
    team_dir = Home().enrolled(team)
    removed = team_dir.forget_credentials()
    if removed:
        click.echo(f"Logged out of team {team_dir.team}.")
    else:
        click.echo(f"Not logged in to team {team_dir.team}; nothing to remove.")
