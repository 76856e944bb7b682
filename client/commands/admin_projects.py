"""`sft admin project`: projects, their credential settings, and which groups they grant.

`project update` sends only the settings given on the command line (its update_mask
names exactly those), so a flag left out never resets a setting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import click
from google.protobuf.field_mask_pb2 import FieldMask

from client.commands.admin_bastions import find_bastion
from client.commands.admin_params import DURATION, confirm_or_refuse, format_duration
from client.commands.calls import (
    enum_name,
    explain_status,
    list_every,
    message_time,
    project_resource,
    run_in_session,
    team_resource,
)
from client.commands.options import team_option
from client.errors import ClientError
from client.output import (
    Column,
    emit,
    iso_time,
    output_option,
    render_columns,
    short_id,
    short_time,
    table_output_option,
)
from client.session import Session
from sft.inventory.v1 import project_pb2, project_service_pb2, project_service_pb2_grpc

__all__ = ["project_group", "project_json"]

#: Settings a new project gets when the command line does not say (the contract's defaults
#: for the TTLs are the platform's, so those are left unset).
CREATE_DEFAULTS = {
    "create_server_users": True,
    "permit_port_forwarding": False,
    "permit_agent_forwarding": False,
    "rdp_enabled": True,
}


def project_json(project: project_pb2.Project) -> dict[str, Any]:
    """Return the JSON form of a project."""
    return {
        "name": short_id(project.name),
        "resource": project.name,
        "description": project.description,
        "certificate_ttl_seconds": project.certificate_ttl_seconds,
        "certificate_max_ttl_seconds": project.certificate_max_ttl_seconds,
        "create_server_users": project.create_server_users,
        "permit_port_forwarding": project.permit_port_forwarding,
        "permit_agent_forwarding": project.permit_agent_forwarding,
        "rdp_enabled": project.rdp_enabled,
        "required_bastion": project.required_bastion or None,
        "allowed_admin_account_names": list(project.allowed_admin_account_names),
        "create_time": iso_time(message_time(project, "create_time")),
        "update_time": iso_time(message_time(project, "update_time")),
    }


def _forwarding(item: dict[str, Any]) -> str:
    kinds = [
        kind
        for kind, on in (
            ("port", item["permit_port_forwarding"]),
            ("agent", item["permit_agent_forwarding"]),
        )
        if on
    ]
    return ",".join(kinds) or "none"


PROJECT_COLUMNS = (
    Column("name", lambda p: p["name"]),
    Column("ttl", lambda p: format_duration(p["certificate_ttl_seconds"])),
    Column("max_ttl", lambda p: format_duration(p["certificate_max_ttl_seconds"])),
    Column("create_server_users", lambda p: "yes" if p["create_server_users"] else "no", "users"),
    Column("forwarding", _forwarding),
    Column("rdp", lambda p: "yes" if p["rdp_enabled"] else "no"),
    Column("bastion", lambda p: short_id(p["required_bastion"] or "")),
    Column("admin_accounts", lambda p: ",".join(p["allowed_admin_account_names"])),
)
GRANT_COLUMNS = (
    Column("group", lambda g: g["group"]),
    Column("role", lambda g: g["role"]),
    Column("create_time", lambda g: short_time(g["create_time"]), "granted"),
)


def _projects(session: Session) -> project_service_pb2_grpc.ProjectServiceStub:
    return project_service_pb2_grpc.ProjectServiceStub(session.channel())


def _settings_options(*, updating: bool) -> Callable[[Any], Any]:
    """Return the decorator adding the project settings flags (shared by create and update)."""
    options = [
        click.option("--description", default=None, metavar="TEXT", help="What the project is."),
        click.option(
            "--ttl",
            type=DURATION,
            default=None,
            help="Default lifetime of user certificates (e.g. 10m) [platform default: 10m].",
        ),
        click.option(
            "--max-ttl",
            type=DURATION,
            default=None,
            help="Longest lifetime a client may ask for (at most 24h) [platform default: 1h].",
        ),
        click.option(
            "--create-server-users/--no-create-server-users",
            default=None,
            help="Create an account for every granted user on every server [default: yes].",
        ),
        click.option(
            "--port-forwarding/--no-port-forwarding",
            default=None,
            help="Let SSH certificates permit port forwarding [default: no].",
        ),
        click.option(
            "--agent-forwarding/--no-agent-forwarding",
            default=None,
            help="Let SSH certificates permit agent forwarding [default: no].",
        ),
        click.option(
            "--rdp/--no-rdp",
            default=None,
            help="Allow RDP to the project's Windows servers [default: yes].",
        ),
        click.option(
            "--required-bastion",
            default=None,
            metavar="BASTION",
            help="A bastion of the project every connection must go through.",
        ),
        click.option(
            "--admin-account-name",
            "admin_account_names",
            multiple=True,
            metavar="ACCOUNT",
            help="A shared account (root, ubuntu, Administrator) project admins may log in as; "
            "repeat for more" + ("; replaces the list" if updating else "") + ".",
        ),
    ]
    if updating:
        options += [
            click.option(
                "--no-required-bastion",
                is_flag=True,
                help="Require no bastion any more.",
            ),
            click.option(
                "--no-admin-account-names",
                is_flag=True,
                help="Allow no shared admin accounts any more.",
            ),
        ]

    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def project_changes(options: dict[str, Any]) -> dict[str, Any]:
    """Return the Project fields the command line sets (field name → value), and nothing else."""
    changes: dict[str, Any] = {}
    simple = {
        "description": "description",
        "create_server_users": "create_server_users",
        "port_forwarding": "permit_port_forwarding",
        "agent_forwarding": "permit_agent_forwarding",
        "rdp": "rdp_enabled",
    }
    for option, field in simple.items():
        if options.get(option) is not None:
            changes[field] = options[option]
    for option, field in (
        ("ttl", "certificate_ttl_seconds"),
        ("max_ttl", "certificate_max_ttl_seconds"),
    ):
        value: dt.timedelta | None = options.get(option)
        if value is not None:
            changes[field] = int(value.total_seconds())
    if options.get("required_bastion") is not None and options.get("no_required_bastion"):
        raise click.UsageError("give --required-bastion or --no-required-bastion, not both")
    if options.get("required_bastion") is not None:
        changes["required_bastion"] = options["required_bastion"]
    elif options.get("no_required_bastion"):
        changes["required_bastion"] = ""
    names = list(options.get("admin_account_names") or ())
    if names and options.get("no_admin_account_names"):
        raise click.UsageError("give --admin-account-name or --no-admin-account-names, not both")
    if names or options.get("no_admin_account_names"):
        changes["allowed_admin_account_names"] = names
    return changes


async def _project_message(
    session: Session, name: str, changes: dict[str, Any], *, exists: bool
) -> project_pb2.Project:
    project = project_pb2.Project(name=project_resource(session, name))
    for field, value in changes.items():
        if field == "allowed_admin_account_names":
            project.allowed_admin_account_names.extend(value)
        elif field == "required_bastion" and value:
            # A project not yet created can only name a bastion of the team.
            scope = name if exists else None
            project.required_bastion = await find_bastion(session, scope, value)
        else:
            setattr(project, field, value)
    return project


def _summary(item: dict[str, Any]) -> str:
    bastion = short_id(item["required_bastion"] or "") or "none"
    admins = ", ".join(item["allowed_admin_account_names"]) or "none"
    return (
        f"certificates {format_duration(item['certificate_ttl_seconds'])} "
        f"(max {format_duration(item['certificate_max_ttl_seconds'])}); "
        f"server users {'created' if item['create_server_users'] else 'not created'}; "
        f"forwarding {_forwarding(item)}; RDP {'on' if item['rdp_enabled'] else 'off'}; "
        f"required bastion {bastion}; shared admin accounts {admins}"
    )


@click.group("project")
def project_group() -> None:
    """Projects: servers, their certificate settings, and the groups granted access.

    \b
    Examples:
      sft admin project create web --ttl 10m --max-ttl 1h
      sft admin project grant developers web
      sft admin project grant sre web --admin
      sft admin token create --project web
    """


@project_group.command("create")
@team_option
@click.argument("name")
@_settings_options(updating=False)
@output_option
def create_project_command(team: str | None, name: str, output: str, **options: Any) -> None:
    """Create project NAME (and its certificate authorities).

    \b
    Examples:
      sft admin project create web
      sft admin project create db --ttl 5m --max-ttl 30m --no-rdp --admin-account-name postgres
    """
    changes = {**CREATE_DEFAULTS, **project_changes(options)}

    async def work(session: Session) -> project_pb2.Project:
        project = await _project_message(session, name, changes, exists=False)
        project.ClearField("name")
        reply: project_service_pb2.CreateProjectResponse = await _projects(session).CreateProject(
            project_service_pb2.CreateProjectRequest(
                parent=team_resource(session), project_id=name, project=project
            )
        )
        return reply.project

    item = project_json(run_in_session(team, work))
    emit(
        output,
        item,
        f"Created project {name}: {_summary(item)}.\n"
        f"Next: `sft admin project grant GROUP {name}`, then "
        f"`sft admin token create --project {name}`.",
    )


@project_group.command("update")
@team_option
@click.argument("name")
@_settings_options(updating=True)
@output_option
def update_project_command(team: str | None, name: str, output: str, **options: Any) -> None:
    """Change project NAME's settings: only the ones given change.

    \b
    Examples:
      sft admin project update web --max-ttl 2h
      sft admin project update web --port-forwarding --no-rdp
      sft admin project update web --required-bastion edge
      sft admin project update web --no-admin-account-names
    """
    changes = project_changes(options)
    if not changes:
        raise click.UsageError("give at least one setting to change (see --help)")

    async def work(session: Session) -> project_pb2.Project:
        project = await _project_message(session, name, changes, exists=True)
        reply: project_service_pb2.UpdateProjectResponse = await _projects(session).UpdateProject(
            project_service_pb2.UpdateProjectRequest(
                project=project, update_mask=FieldMask(paths=sorted(changes))
            )
        )
        return reply.project

    item = project_json(run_in_session(team, work))
    emit(output, item, f"Updated project {name}: {_summary(item)}.")


@project_group.command("list")
@team_option
@table_output_option
def list_projects_command(team: str | None, output: str) -> None:
    """List the projects you may see.

    \b
    Examples:
      sft admin project list
      sft admin project list -o json
    """

    projects = list_every(
        team,
        "projects",
        lambda session: (
            _projects(session).ListProjects,
            project_service_pb2.ListProjectsRequest(parent=team_resource(session)),
        ),
    )
    items = [project_json(project) for project in projects]
    emit(output, items, render_columns(PROJECT_COLUMNS, items, "No projects."))


@project_group.command("delete")
@team_option
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output_option
def delete_project_command(team: str | None, name: str, yes: bool, output: str) -> None:
    """Delete project NAME (refused while servers are enrolled in it).

    \b
    Examples:
      sft admin project delete old-web
      sft admin project delete old-web --yes
    """
    confirm_or_refuse(f"Delete project {name} and its certificate authorities?", yes=yes)

    async def work(session: Session) -> None:
        try:
            await _projects(session).DeleteProject(
                project_service_pb2.DeleteProjectRequest(name=project_resource(session, name))
            )
        except ClientError as exc:
            raise explain_status(
                exc,
                {
                    "FAILED_PRECONDITION": "delete its servers first "
                    f"(`sft admin server list --project {name}`)"
                },
            ) from None

    run_in_session(team, work)
    emit(output, {"name": name, "deleted": True}, f"Deleted project {name}.")


def grant_json(grant: project_pb2.ProjectGrant, project: str) -> dict[str, Any]:
    """Return the JSON form of a project grant."""
    return {
        "group": short_id(grant.group),
        "project": project,
        "role": enum_name(project_pb2.GrantRole, grant.role, "GRANT_ROLE_"),
        "resource": grant.name,
        "create_time": iso_time(message_time(grant, "create_time")),
    }


@project_group.command("grant")
@team_option
@click.argument("group")
@click.argument("project")
@click.option("--admin", is_flag=True, help="Admin rights: sudo on servers, manage the project.")
@output_option
def grant_command(team: str | None, group: str, project: str, admin: bool, output: str) -> None:
    """Let GROUP's members log in to PROJECT's servers (with --admin: as admins).

    \b
    Examples:
      sft admin project grant developers web
      sft admin project grant sre web --admin
    """
    role = project_pb2.GRANT_ROLE_ADMIN if admin else project_pb2.GRANT_ROLE_USER

    async def work(session: Session) -> project_pb2.ProjectGrant:
        try:
            reply: project_service_pb2.CreateGrantResponse = await _projects(session).CreateGrant(
                project_service_pb2.CreateGrantRequest(
                    parent=project_resource(session, project),
                    grant=project_pb2.ProjectGrant(
                        group=f"{team_resource(session)}/groups/{group}", role=role
                    ),
                )
            )
        except ClientError as exc:
            raise explain_status(
                exc,
                {
                    "ALREADY_EXISTS": f"run `sft admin project revoke {group} {project}`, "
                    "then grant again"
                },
            ) from None
        return reply.grant

    item = grant_json(run_in_session(team, work), project)
    emit(output, item, f"Granted group {group} {item['role']} access to project {project}.")


@project_group.command("revoke")
@team_option
@click.argument("group")
@click.argument("project")
@output_option
def revoke_command(team: str | None, group: str, project: str, output: str) -> None:
    """Remove GROUP's grant on PROJECT (members keep access other groups give).

    \b
    Examples:
      sft admin project revoke contractors web
    """

    async def work(session: Session) -> None:
        await _projects(session).DeleteGrant(
            project_service_pb2.DeleteGrantRequest(
                name=f"{project_resource(session, project)}/grants/{group}"
            )
        )

    run_in_session(team, work)
    emit(
        output,
        {"group": group, "project": project, "revoked": True},
        f"Revoked group {group}'s access to project {project}.",
    )


@project_group.command("grants")
@team_option
@click.argument("project")
@table_output_option
def grants_command(team: str | None, project: str, output: str) -> None:
    """List the groups PROJECT grants access to, and their roles.

    \b
    Examples:
      sft admin project grants web
      sft admin project grants web -o json
    """

    grants = list_every(
        team,
        "grants",
        lambda session: (
            _projects(session).ListGrants,
            project_service_pb2.ListGrantsRequest(parent=project_resource(session, project)),
        ),
    )
    items = [grant_json(grant, project) for grant in grants]
    emit(output, items, render_columns(GRANT_COLUMNS, items, f"Project {project} grants no group."))
