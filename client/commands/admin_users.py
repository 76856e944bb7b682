"""`sft admin user` and `sft admin service-user`: the team's people and integrations, and how
they sign in.

One-time secrets (enrollment codes, API key secrets) are printed once, in the field
named for them (`code`, `secret`), and never written anywhere else.
"""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Any

import click
from google.protobuf.field_mask_pb2 import FieldMask

from client.commands.admin_params import DurationType, format_duration
from client.commands.calls import (
    enum_name,
    explain_status,
    list_every,
    message_time,
    run_in_session,
    team_resource,
)
from client.commands.options import team_option
from client.errors import ClientError
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
from sft.auth.v1 import (
    enrollment_code_service_pb2,
    enrollment_code_service_pb2_grpc,
    service_user_pb2,
    service_user_service_pb2,
    service_user_service_pb2_grpc,
)
from sft.inventory.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

__all__ = ["service_user_group", "service_user_json", "user_group", "user_json", "user_resource"]

#: The lifetimes CreateEnrollmentCode accepts.
CODE_TTL_BOUNDS = (dt.timedelta(minutes=1), dt.timedelta(days=7))


def user_json(user: user_pb2.User) -> dict[str, Any]:
    """Return the JSON form of a user."""
    return {
        "name": short_id(user.name),
        "resource": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "kind": enum_name(user_pb2.UserKind, user.kind, "USER_KIND_"),
        "status": enum_name(user_pb2.UserStatus, user.status, "USER_STATUS_"),
        "team_admin": user.team_admin,
        "unix_uid": user.unix_uid,
        "unix_gid": user.unix_gid,
        "windows_account_name": user.windows_account_name,
        "create_time": iso_time(message_time(user, "create_time")),
    }


USER_COLUMNS = (
    Column("name", lambda u: u["name"]),
    Column("display_name", lambda u: u["display_name"]),
    Column("email", lambda u: u["email"]),
    Column("kind", lambda u: u["kind"]),
    Column("status", lambda u: u["status"]),
    Column("team_admin", lambda u: "yes" if u["team_admin"] else "", "admin"),
    Column("unix_uid", lambda u: str(u["unix_uid"] or ""), "uid"),
)


def _users(session: Session) -> user_service_pb2_grpc.UserServiceStub:
    return user_service_pb2_grpc.UserServiceStub(session.channel())


def user_resource(session: Session, user: str) -> str:
    """Return `teams/{team}/users/{user}` for the session's team."""
    return f"{team_resource(session)}/users/{user}"


def _code_ttl(expires: dt.timedelta) -> int:
    low, high = CODE_TTL_BOUNDS
    seconds = int(expires.total_seconds())
    if not low <= expires <= high:
        raise click.BadParameter(
            f"an enrollment code lasts from 1m to 7d, not {format_duration(seconds)}",
            param_hint="'--expires'",
        )
    return seconds


async def _new_code(session: Session, user: str, ttl_seconds: int) -> dict[str, Any]:
    stub = enrollment_code_service_pb2_grpc.EnrollmentCodeServiceStub(session.channel())
    reply = await stub.CreateEnrollmentCode(
        enrollment_code_service_pb2.CreateEnrollmentCodeRequest(
            parent=user, ttl_seconds=ttl_seconds
        )
    )
    command = shlex.join(
        ["sft", "enroll", "--url", session.record.url, "--team", session.team, "--code", reply.code]
    )
    return {
        "code": reply.code,
        "expire_time": iso_time(message_time(reply.enrollment_code, "expire_time")),
        "enroll_command": command,
    }


def _code_text(user: str, issued: dict[str, Any]) -> list[str]:
    expire = issued["expire_time"]
    until = human_time(dt.datetime.fromisoformat(expire), dt.datetime.now(dt.UTC)) if expire else ""
    return [
        f"One-time enrollment code for {user}, shown only now"
        + (f" (works until {until}):" if until else ":"),
        f"  {issued['code']}",
        f"Send it to {user} privately; on their machine they run:",
        f"  {issued['enroll_command']}",
    ]


@click.group("user")
def user_group() -> None:
    """Invite, list, disable and enable the team's people.

    \b
    Examples:
      sft admin user invite bob --display-name "Bob Smith" --email bob@example.com
      sft admin user list
      sft admin user disable bob
    """


@user_group.command("invite")
@team_option
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user a team admin.")
@click.option("--display-name", default="", metavar="TEXT", help="Full name.")
@click.option("--email", default="", metavar="EMAIL", help="Email address (not used to log in).")
@click.option(
    "--expires",
    type=DurationType(),
    default="24h",
    show_default=True,
    help="How long the enrollment code works (1m to 7d).",
)
@output_option
def invite_command(
    team: str | None,
    name: str,
    admin: bool,
    display_name: str,
    email: str,
    expires: dt.timedelta,
    output: str,
) -> None:
    """Create user NAME and print a one-time code that enrolls their first device.

    NAME is also their account name on servers: lowercase letters, digits, `_`
    and `-`, at most 32 characters. The code is shown once; send it privately.

    \b
    Examples:
      sft admin user invite bob --display-name "Bob Smith"
      sft admin user invite carol --admin --expires 2h -o json
    """
    ttl_seconds = _code_ttl(expires)

    async def work(session: Session) -> dict[str, Any]:
        try:
            reply = await _users(session).CreateUser(
                user_service_pb2.CreateUserRequest(
                    parent=team_resource(session),
                    user_id=name,
                    user=user_pb2.User(
                        display_name=display_name,
                        email=email,
                        team_admin=admin,
                        kind=user_pb2.USER_KIND_HUMAN,
                    ),
                )
            )
        except ClientError as exc:
            raise explain_status(
                exc,
                {
                    "ALREADY_EXISTS": "to give them a new enrollment code, run "
                    f"`sft admin user new-code {name}`"
                },
            ) from None
        try:
            issued = await _new_code(session, reply.user.name, ttl_seconds)
        except ClientError as exc:
            raise ClientError(
                f"created user {name}, but no enrollment code: {exc.reason}",
                hint=f"run `sft admin user new-code {name}`",
            ) from None
        return {"team": session.team, "user": user_json(reply.user), **issued}

    result = run_in_session(team, work)
    user = result["user"]
    role = ", team admin" if user["team_admin"] else ""
    lines = [
        f"Invited {name} to team {result['team']} (uid {user['unix_uid']}{role}).",
        *_code_text(name, result),
    ]
    emit(output, result, "\n".join(lines))


@user_group.command("new-code")
@team_option
@click.argument("name")
@click.option(
    "--expires",
    type=DurationType(),
    default="24h",
    show_default=True,
    help="How long the enrollment code works (1m to 7d).",
)
@output_option
def new_code_command(team: str | None, name: str, expires: dt.timedelta, output: str) -> None:
    """Print a new one-time enrollment code for existing user NAME (e.g. a new laptop).

    The user's earlier unused code stops working.

    \b
    Examples:
      sft admin user new-code bob
      sft admin user new-code bob --expires 1h -o json
    """
    ttl_seconds = _code_ttl(expires)

    async def work(session: Session) -> dict[str, Any]:
        issued = await _new_code(session, user_resource(session, name), ttl_seconds)
        return {"user": name, **issued}

    result = run_in_session(team, work)
    emit(output, result, "\n".join(_code_text(name, result)))


@user_group.command("list")
@team_option
@click.option(
    "--status", type=click.Choice(["active", "disabled"]), default=None, help="Only this status."
)
@click.option(
    "--kind", type=click.Choice(["human", "service"]), default=None, help="Only this kind."
)
@table_output_option
def list_users_command(team: str | None, status: str | None, kind: str | None, output: str) -> None:
    """List the team's users.

    \b
    Examples:
      sft admin user list
      sft admin user list --status disabled -o json
    """

    users = list_every(
        team,
        "users",
        lambda session: (
            _users(session).ListUsers,
            user_service_pb2.ListUsersRequest(
                parent=team_resource(session),
                status=user_pb2.UserStatus.Value(f"USER_STATUS_{status.upper()}")
                if status
                else user_pb2.USER_STATUS_UNSPECIFIED,
                kind=user_pb2.UserKind.Value(f"USER_KIND_{kind.upper()}")
                if kind
                else user_pb2.USER_KIND_UNSPECIFIED,
            ),
        ),
    )
    items = [user_json(user) for user in users]
    emit(output, items, render_columns(USER_COLUMNS, items, "No users."))


def _switch_user(team: str | None, name: str, enable: bool) -> dict[str, Any]:
    async def work(session: Session) -> user_pb2.User:
        resource = user_resource(session, name)
        stub = _users(session)
        reply: user_service_pb2.EnableUserResponse | user_service_pb2.DisableUserResponse
        if enable:
            reply = await stub.EnableUser(user_service_pb2.EnableUserRequest(name=resource))
        else:
            reply = await stub.DisableUser(user_service_pb2.DisableUserRequest(name=resource))
        return reply.user

    return user_json(run_in_session(team, work))


@user_group.command("disable")
@team_option
@click.argument("name")
@output_option
def disable_command(team: str | None, name: str, output: str) -> None:
    """Disable user NAME: no new tokens or credentials; their accounts leave the servers.

    Certificates already issued lapse on expiry (minutes).

    \b
    Examples:
      sft admin user disable bob
    """
    user = _switch_user(team, name, enable=False)
    emit(output, user, f"Disabled user {name}; they get no new credentials.")


@user_group.command("enable")
@team_option
@click.argument("name")
@output_option
def enable_command(team: str | None, name: str, output: str) -> None:
    """Enable disabled user NAME again.

    \b
    Examples:
      sft admin user enable bob
    """
    user = _switch_user(team, name, enable=True)
    emit(output, user, f"Enabled user {name}.")


@user_group.command("update")
@team_option
@click.argument("name")
@click.option("--admin/--no-admin", default=None, help="Give or take the team admin role.")
@click.option("--display-name", default=None, metavar="TEXT", help="New full name.")
@click.option("--email", default=None, metavar="EMAIL", help="New email address.")
@output_option
def update_user_command(
    team: str | None,
    name: str,
    admin: bool | None,
    display_name: str | None,
    email: str | None,
    output: str,
) -> None:
    """Change user NAME: only the fields given change.

    \b
    Examples:
      sft admin user update bob --admin
      sft admin user update bob --display-name "Robert Smith" --email rob@example.com
    """
    changes = {"team_admin": admin, "display_name": display_name, "email": email}
    paths = [path for path, value in changes.items() if value is not None]
    if not paths:
        raise click.UsageError("give at least one of --admin/--no-admin, --display-name, --email")

    async def work(session: Session) -> user_pb2.User:
        user = user_pb2.User(name=user_resource(session, name))
        for path in paths:
            setattr(user, path, changes[path])
        reply: user_service_pb2.UpdateUserResponse = await _users(session).UpdateUser(
            user_service_pb2.UpdateUserRequest(user=user, update_mask=FieldMask(paths=paths))
        )
        return reply.user

    user = user_json(run_in_session(team, work))
    emit(output, user, f"Updated user {name}: {', '.join(paths)}.")


def _key_json(key: service_user_pb2.ServiceUserKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "resource": key.name,
        "create_time": iso_time(message_time(key, "create_time")),
        "last_use_time": iso_time(message_time(key, "last_use_time")),
    }


def service_user_json(service_user: service_user_pb2.ServiceUser) -> dict[str, Any]:
    """Return the JSON form of a service user (its keys' ids, never secrets)."""
    return {
        "name": short_id(service_user.name),
        "resource": service_user.name,
        "user": service_user.user,
        "description": service_user.description,
        "keys": [_key_json(key) for key in service_user.keys],
        "create_time": iso_time(message_time(service_user, "create_time")),
    }


SERVICE_USER_COLUMNS = (
    Column("name", lambda s: s["name"]),
    Column("keys", lambda s: str(len(s["keys"]))),
    Column("create_time", lambda s: short_time(s["create_time"]), "created"),
    Column("description", lambda s: s["description"]),
)


def _service_users(session: Session) -> service_user_service_pb2_grpc.ServiceUserServiceStub:
    return service_user_service_pb2_grpc.ServiceUserServiceStub(session.channel())


def _serviceuser_resource(session: Session, name: str) -> str:
    return f"{team_resource(session)}/serviceUsers/{name}"


@click.group("service-user")
def service_user_group() -> None:
    """Service users: non-human users for integrations, signing in with API keys.

    \b
    Examples:
      sft admin service-user create deploy-bot --description "CI deploys"
      sft admin service-user key create deploy-bot -o json
    """


@service_user_group.command("create")
@team_option
@click.argument("name")
@click.option("--description", default="", metavar="TEXT", help="What the integration is.")
@click.option(
    "--team-admin",
    is_flag=True,
    help="Also give it the team admin role (e.g. for provisioning tools).",
)
@output_option
def create_service_user_command(
    team: str | None, name: str, description: str, team_admin: bool, output: str
) -> None:
    """Create service user NAME; grant it access through groups, like a person.

    \b
    Examples:
      sft admin service-user create deploy-bot --description "CI deploys"
      sft admin group add-user deployers deploy-bot
      sft admin service-user key create deploy-bot
    """

    async def work(session: Session) -> dict[str, Any]:
        reply = await _service_users(session).CreateServiceUser(
            service_user_service_pb2.CreateServiceUserRequest(
                parent=team_resource(session),
                service_user_id=name,
                service_user=service_user_pb2.ServiceUser(description=description),
            )
        )
        created = service_user_json(reply.service_user)
        created["team_admin"] = False
        if team_admin:
            # The role belongs to the backing inventory user, not the service user.
            try:
                await _users(session).UpdateUser(
                    user_service_pb2.UpdateUserRequest(
                        user=user_pb2.User(name=reply.service_user.user, team_admin=True),
                        update_mask=FieldMask(paths=["team_admin"]),
                    )
                )
            except ClientError as exc:
                raise ClientError(
                    f"created service user {name}, but not as team admin: {exc.reason}",
                    hint=f"run `sft admin user update {name} --admin`",
                ) from None
            created["team_admin"] = True
        return created

    created = run_in_session(team, work)
    role = " with the team admin role" if created["team_admin"] else ""
    emit(
        output,
        created,
        f"Created service user {name}{role}; make it an API key with "
        f"`sft admin service-user key create {name}`.",
    )


@service_user_group.command("list")
@team_option
@table_output_option
def list_service_users_command(team: str | None, output: str) -> None:
    """List the team's service users and how many API keys each has.

    \b
    Examples:
      sft admin service-user list
      sft admin service-user list -o json
    """

    service_users = list_every(
        team,
        "service_users",
        lambda session: (
            _service_users(session).ListServiceUsers,
            service_user_service_pb2.ListServiceUsersRequest(parent=team_resource(session)),
        ),
    )
    items = [service_user_json(item) for item in service_users]
    emit(output, items, render_columns(SERVICE_USER_COLUMNS, items, "No service users."))


@service_user_group.group("key")
def key_group() -> None:
    """Create and delete a service user's API keys.

    \b
    Examples:
      sft admin service-user key create deploy-bot
      sft admin service-user key delete deploy-bot 3b6f…
    """


@key_group.command("create")
@team_option
@click.argument("name")
@output_option
def create_key_command(team: str | None, name: str, output: str) -> None:
    """Create an API key for service user NAME; print its id and secret (once).

    \b
    Examples:
      sft admin service-user key create deploy-bot
      sft admin service-user key create deploy-bot -o json | jq -r .secret
    """

    async def work(session: Session) -> dict[str, Any]:
        reply = await _service_users(session).CreateServiceUserKey(
            service_user_service_pb2.CreateServiceUserKeyRequest(
                parent=_serviceuser_resource(session, name)
            )
        )
        return {"service_user": name, **_key_json(reply.key), "secret": reply.secret}

    created = run_in_session(team, work)
    lines = [
        f"Created an API key for service user {name}.",
        f"Key id: {created['key_id']}",
        "Secret, shown only now (keep it in a secret store):",
        f"  {created['secret']}",
        "Exchange the key id and secret for an access token with "
        "sft.auth.v1.TokenService/CreateServiceUserToken.",
    ]
    emit(output, created, "\n".join(lines))


@key_group.command("delete")
@team_option
@click.argument("name")
@click.argument("key_id")
@output_option
def delete_key_command(team: str | None, name: str, key_id: str, output: str) -> None:
    """Delete API key KEY_ID of service user NAME; its tokens stop working within 30 s.

    \b
    Examples:
      sft admin service-user key delete deploy-bot 3b6f0c4e-…
    """

    async def work(session: Session) -> None:
        await _service_users(session).DeleteServiceUserKey(
            service_user_service_pb2.DeleteServiceUserKeyRequest(
                name=f"{_serviceuser_resource(session, name)}/keys/{key_id}"
            )
        )

    run_in_session(team, work)
    emit(
        output,
        {"service_user": name, "key_id": key_id, "deleted": True},
        f"Deleted API key {key_id} of service user {name}.",
    )
