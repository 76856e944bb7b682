"""`sft admin token`: server enrollment tokens, which let sftd enroll a server into a project.

The token string is printed once (JSON field `token`); the platform keeps only its hash.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from client.commands.admin_params import DurationType
from client.commands.calls import (
    list_every,
    message_time,
    project_resource,
    run_in_session,
)
from client.commands.options import team_option
from client.output import (
    Column,
    emit,
    human_time,
    iso_time,
    output_option,
    render_columns,
    short_id,
    short_time,
    table_output_option,
)
from client.session import Session
from sft.inventory.v1 import (
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
)

__all__ = [
    "SFTD_ENROLLMENT_FILE_LINUX",
    "SFTD_ENROLLMENT_FILE_WINDOWS",
    "token_group",
    "token_json",
]

#: Where sftd looks for the token by default (sftd.yaml `EnrollmentTokenFile`).
SFTD_ENROLLMENT_FILE_LINUX = "/var/lib/sftd/enrollment.token"
SFTD_ENROLLMENT_FILE_WINDOWS = (
    r"C:\Windows\System32\config\systemprofile\AppData\Local\sft\enrollment.token"
)


def token_json(token: enrollment_token_pb2.EnrollmentToken) -> dict[str, Any]:
    """Return the JSON form of a token's record (never its secret)."""
    return {
        "id": short_id(token.name),
        "resource": token.name,
        "project": token.name.split("/")[3] if token.name.count("/") >= 5 else "",
        "description": token.description,
        "expire_time": iso_time(message_time(token, "expire_time")),
        "max_uses": token.max_uses or None,
        "uses": token.uses,
        "revoked": token.revoked,
        "revoke_time": iso_time(message_time(token, "revoke_time")),
        "creator": short_id(token.creator) if token.creator else None,
        "create_time": iso_time(message_time(token, "create_time")),
        "last_use_time": iso_time(message_time(token, "last_use_time")),
    }


def _state(item: dict[str, Any], now: dt.datetime) -> str:
    if item["revoked"]:
        return "revoked"
    expire = item["expire_time"]
    if expire and dt.datetime.fromisoformat(expire) <= now:
        return "expired"
    if item["max_uses"] is not None and item["uses"] >= item["max_uses"]:
        return "used up"
    return "active"


def _columns(now: dt.datetime) -> tuple[Column, ...]:
    return (
        Column("id", lambda t: t["id"]),
        Column("state", lambda t: _state(t, now)),
        Column(
            "uses",
            lambda t: f"{t['uses']}/{t['max_uses']}" if t["max_uses"] else f"{t['uses']}/-",
        ),
        Column("expire_time", lambda t: short_time(t["expire_time"]) or "never", "expires"),
        Column("creator", lambda t: t["creator"] or ""),
        Column("create_time", lambda t: short_time(t["create_time"]), "created"),
        Column("description", lambda t: t["description"]),
    )


def _tokens(session: Session) -> enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub:
    return enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub(session.channel())


project_option = click.option(
    "--project", required=True, metavar="PROJECT", help="The project servers enroll into."
)


@click.group("token")
def token_group() -> None:
    """Server enrollment tokens: what sftd needs to enroll a server into a project.

    \b
    Examples:
      sft admin token create --project web --description "web autoscaling group"
      sft admin token list --project web
      sft admin token revoke --project web 5f0c…
    """


@token_group.command("create")
@team_option
@project_option
@click.option(
    "--expires",
    type=DurationType(allow_never=True),
    default="24h",
    show_default=True,
    help="How long the token enrolls servers (e.g. 1h, 7d), or `never`.",
)
@click.option(
    "--max-uses",
    type=click.IntRange(min=1),
    default=None,
    help="How many servers it may enroll [default: unlimited].",
)
@click.option("--description", default="", metavar="TEXT", help="What the token is for.")
@output_option
def create_token_command(
    team: str | None,
    project: str,
    expires: dt.timedelta | None,
    max_uses: int | None,
    description: str,
    output: str,
) -> None:
    """Create an enrollment token for --project and print it (once).

    \b
    Examples:
      sft admin token create --project web
      sft admin token create --project web --expires 7d --max-uses 10 --description "web ASG"
      sft admin token create --project web -o json | jq -r .token | \\
        ssh web-1 'sudo tee /var/lib/sftd/enrollment.token'
    """

    async def work(session: Session) -> dict[str, Any]:
        token = enrollment_token_pb2.EnrollmentToken(
            description=description, max_uses=max_uses or 0
        )
        if expires is not None:
            token.expire_time.FromDatetime(dt.datetime.now(dt.UTC) + expires)
        reply = await _tokens(session).CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                parent=project_resource(session, project), enrollment_token=token
            )
        )
        return {
            **token_json(reply.enrollment_token),
            "project": project,
            "token": reply.token,
            "token_file": SFTD_ENROLLMENT_FILE_LINUX,
        }

    item = run_in_session(team, work)
    now = dt.datetime.now(dt.UTC)
    expire = item["expire_time"]
    until = f"until {human_time(dt.datetime.fromisoformat(expire), now)}" if expire else "forever"
    uses = f"{item['max_uses']} servers" if item["max_uses"] else "any number of servers"
    lines = [
        f"Created enrollment token {item['id']} for project {project}: enrolls {uses}, {until}.",
        "Token, shown only now:",
        f"  {item['token']}",
        f"Put it in {SFTD_ENROLLMENT_FILE_LINUX} on the server",
        f"(Windows: {SFTD_ENROLLMENT_FILE_WINDOWS}),",
        "or the file sftd.yaml names in EnrollmentTokenFile; sftd enrolls, then deletes it.",
    ]
    emit(output, item, "\n".join(lines))


@token_group.command("list")
@team_option
@project_option
@click.option("--all", "show_all", is_flag=True, help="Include revoked tokens.")
@table_output_option
def list_tokens_command(team: str | None, project: str, show_all: bool, output: str) -> None:
    """List --project's enrollment tokens, newest first (never their secrets).

    \b
    Examples:
      sft admin token list --project web
      sft admin token list --project web --all -o json
    """

    tokens = list_every(
        team,
        "enrollment_tokens",
        lambda session: (
            _tokens(session).ListEnrollmentTokens,
            enrollment_token_service_pb2.ListEnrollmentTokensRequest(
                parent=project_resource(session, project), show_revoked=show_all
            ),
        ),
    )
    items = [{**token_json(token), "project": project} for token in tokens]
    now = dt.datetime.now(dt.UTC)
    emit(output, items, render_columns(_columns(now), items, f"Project {project} has no tokens."))


@token_group.command("revoke")
@team_option
@project_option
@click.argument("token_id", metavar="ID")
@output_option
def revoke_token_command(team: str | None, project: str, token_id: str, output: str) -> None:
    """Revoke token ID of --project: it enrolls no more servers (enrolled ones stay).

    \b
    Examples:
      sft admin token revoke --project web 5f0c2d1e-…
    """

    async def work(session: Session) -> enrollment_token_pb2.EnrollmentToken:
        reply: enrollment_token_service_pb2.RevokeEnrollmentTokenResponse = await _tokens(
            session
        ).RevokeEnrollmentToken(
            enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(
                name=f"{project_resource(session, project)}/enrollmentTokens/{token_id}"
            )
        )
        return reply.enrollment_token

    item = {**token_json(run_in_session(team, work)), "project": project}
    emit(output, item, f"Revoked enrollment token {token_id} of project {project}.")
