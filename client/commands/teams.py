"""`sft use`, `sft list-teams`, `sft device-info`: what this machine is enrolled in. No network."""

from __future__ import annotations

import datetime as dt

import click

from client.commands.options import team_option
from client.device_key import public_key_fingerprint
from client.errors import ClientError
from client.output import emit, format_table, human_time, output_option, warn
from client.state import Home

__all__ = ["device_info_command", "list_teams_command", "use_command"]


@click.command("use")
@click.argument("team")
def use_command(team: str) -> None:
    """Make TEAM the current team: the one verbs act on without --team.

    \b
    Example:
      sft use acme
    """
    home = Home()
    team_dir = home.enrolled(team)
    home.set_current_team(team_dir.team)
    click.echo(f"Current team: {team_dir.team}.")


@click.command("list-teams")
@output_option
def list_teams_command(output: str) -> None:
    """List the teams this machine is enrolled in; `*` marks the current one.

    \b
    Examples:
      sft list-teams
      sft list-teams -o json
    """
    home = Home()
    current = home.current_team()
    entries: list[dict[str, object]] = []
    for team in home.enrolled_teams():
        url: str | None = None
        user: str | None = None
        try:
            record = home.team_dir(team).read_device()
            url, user = record.url, record.user
        except ClientError as exc:
            warn(exc.message)
        entries.append({"team": team, "url": url, "user": user, "current": team == current})
    if not entries:
        text = "Not enrolled in any team; run `sft enroll --url URL --team TEAM --code CODE`."
    else:
        text = format_table(
            ["", "team", "url", "user"],
            [
                [
                    "*" if entry["current"] else "",
                    str(entry["team"]),
                    str(entry["url"] or "?"),
                    str(entry["user"] or "?"),
                ]
                for entry in entries
            ],
        )
    emit(output, entries, text)


@click.command("device-info")
@team_option
@output_option
def device_info_command(team: str | None, output: str) -> None:
    """Show this machine's device in a team: platform, user, key fingerprint, token expiry.

    \b
    Examples:
      sft device-info
      sft device-info --team acme -o json
    """
    home = Home()
    team_dir = home.enrolled(team)
    record = team_dir.read_device()
    fingerprint = public_key_fingerprint(team_dir.read_device_key())
    token = team_dir.read_token()
    now = dt.datetime.now(dt.UTC)
    current = home.current_team() == team_dir.team
    logged_in = token is not None and token.valid_for(now) > dt.timedelta(0)
    if token is None:
        expiry_text = "none (run `sft login`)"
    elif logged_in:
        expiry_text = f"valid until {human_time(token.expire_time, now)}"
    else:
        expiry_text = f"expired {human_time(token.expire_time)} (the next verb logs in again)"
    rows = [
        ("team", f"{team_dir.team}{' (current)' if current else ''}"),
        ("url", record.url),
        ("user", record.user),
        ("device", record.device),
        ("fingerprint", fingerprint),
        ("platform CA", f"sha256:{record.ca_sha256}"),
        ("enrolled", human_time(record.enrolled_at)),
        ("access token", expiry_text),
    ]
    emit(
        output,
        {
            "team": team_dir.team,
            "current": current,
            "url": record.url,
            "user": record.user,
            "device": record.device,
            "fingerprint": fingerprint,
            "ca_sha256": record.ca_sha256,
            "enrolled_at": record.enrolled_at.isoformat(),
            "token_expire_time": token.expire_time.isoformat() if token else None,
            "logged_in": logged_in,
        },
        "\n".join(f"{name + ':':<14}{value}" for name, value in rows),
    )
