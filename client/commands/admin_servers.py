"""`sft admin server`: enrolled servers as their admins see them, and removing one."""

from __future__ import annotations

import click

from client.commands.admin_params import confirm_or_refuse, refuse_without_terminal
from client.commands.calls import run_in_session
from client.commands.options import team_option
from client.commands.servers import (
    ADMIN_COLUMNS,
    SERVER_COLUMNS,
    columns_option,
    list_servers,
    resolve_server,
    selector_option,
    server_json,
)
from client.output import choose_columns, emit, output_option, render_columns, table_output_option
from client.session import Session
from sft.inventory.v1 import server_pb2, server_service_pb2, server_service_pb2_grpc

__all__ = ["server_group"]


@click.group("server")
def server_group() -> None:
    """Enrolled servers: list them with agent details, or remove one.

    \b
    Examples:
      sft admin server list --project web
      sft admin server delete web-1
    """


@server_group.command("list")
@team_option
@click.option("--project", default=None, metavar="PROJECT", help="Only this project's servers.")
@selector_option
@columns_option
@table_output_option
def list_command(
    team: str | None, project: str | None, selector: str, columns: str | None, output: str
) -> None:
    """List enrolled servers with their ids, agent versions and last heartbeat.

    \b
    Examples:
      sft admin server list
      sft admin server list --project web --columns name,id,addresses,host_key_fingerprints
      sft admin server list -o json
    """
    chosen = choose_columns(columns, SERVER_COLUMNS, ADMIN_COLUMNS)
    servers = run_in_session(
        team, lambda session: list_servers(session, project=project, selector=selector, os=None)
    )
    items = [server_json(server) for server in servers]
    emit(output, items, render_columns(chosen, items, "No servers."))


@server_group.command("delete")
@team_option
@click.option("--project", default=None, metavar="PROJECT", help="Look NAME up in this project.")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@click.argument("name", metavar="NAME_OR_ID")
@output_option
def delete_command(
    team: str | None, project: str | None, yes: bool, name: str, output: str
) -> None:
    """Remove server NAME_OR_ID: its agent is cut off and must enroll again with a new token.

    Certificates already issued for it lapse on expiry (minutes).

    \b
    Examples:
      sft admin server delete web-1
      sft admin server delete 7f3c2a9e-… --yes
    """

    async def find(session: Session) -> server_pb2.Server:
        return await resolve_server(session, name, project=project)

    async def delete(session: Session, server: server_pb2.Server) -> None:
        stub = server_service_pb2_grpc.ServerServiceStub(session.channel())
        await stub.DeleteServer(server_service_pb2.DeleteServerRequest(name=server.name))

    refuse_without_terminal(yes=yes)
    # Resolve first, so the question names the exact server; ask outside the event loop.
    server = run_in_session(team, find)
    item = server_json(server)
    confirm_or_refuse(
        f"Delete server {item['name']} (id {item['id']}, project {item['project']})?", yes=yes
    )
    run_in_session(team, lambda session: delete(session, server))
    emit(
        output,
        {**item, "deleted": True},
        f"Deleted server {item['name']} (id {item['id']}, project {item['project']}); "
        "its agent must enroll again with a new token.",
    )
