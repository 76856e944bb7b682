"""`sft admin bastion`: SSH jump hosts that a project's servers may (or must) be reached through."""

from __future__ import annotations

from typing import Any

import click

from client.commands.calls import every_page, message_time, run_in_session, team_resource
from client.commands.options import team_option
from client.commands.servers import resolve_server
from client.errors import ClientError
from client.output import (
    Column,
    emit,
    iso_time,
    output_option,
    render_columns,
    short_id,
    table_output_option,
)
from client.session import Session
from sft.inventory.v1 import bastion_pb2, bastion_service_pb2, bastion_service_pb2_grpc

__all__ = ["bastion_group", "bastion_json", "find_bastion"]


def bastion_json(bastion: bastion_pb2.Bastion) -> dict[str, Any]:
    """Return the JSON form of a bastion."""
    target = bastion.WhichOneof("target")
    return {
        "name": short_id(bastion.name),
        "resource": bastion.name,
        "server": bastion.server or None,
        "address": bastion.address or None,
        "ssh_port": (bastion.ssh_port or 22) if target == "address" else None,
        "description": bastion.description,
        "create_time": iso_time(message_time(bastion, "create_time")),
    }


def _target(item: dict[str, Any]) -> str:
    if item["server"]:
        return f"server {item['server']}"
    return f"{item['address']}:{item['ssh_port']}"


BASTION_COLUMNS = (
    Column("name", lambda b: b["name"]),
    Column("target", _target),
    Column("description", lambda b: b["description"]),
)


def _bastions(session: Session) -> bastion_service_pb2_grpc.BastionServiceStub:
    return bastion_service_pb2_grpc.BastionServiceStub(session.channel())


def _parent(session: Session, project: str | None) -> str:
    return team_resource(session) + (f"/projects/{project}" if project else "")


async def _list(session: Session, project: str | None) -> list[bastion_pb2.Bastion]:
    request = bastion_service_pb2.ListBastionsRequest(parent=_parent(session, project))
    return await every_page(_bastions(session).ListBastions, request, "bastions")


async def find_bastion(session: Session, project: str | None, name: str) -> str:
    """Return the resource name of bastion `name` (an id, or a resource name as is)."""
    if "/" in name:
        return name
    for bastion in await _list(session, project):
        if short_id(bastion.name) == name:
            return str(bastion.name)
    raise ClientError(
        f"no bastion named {name!r} in team {session.team}",
        hint="see the bastions with `sft admin bastion list`",
    )


project_option = click.option(
    "--project",
    default=None,
    metavar="PROJECT",
    help="The project the bastion belongs to.",
)


@click.group("bastion")
def bastion_group() -> None:
    """SSH jump hosts: an enrolled server or a plain address that connections go through.

    \b
    Examples:
      sft admin bastion create edge --project web --server bastion-1
      sft admin bastion create corp-jump --project web --address jump.example.com --port 2222
      sft admin project update web --required-bastion edge
    """


@bastion_group.command("create")
@team_option
@project_option
@click.argument("name")
@click.option("--server", default=None, metavar="SERVER", help="An enrolled server (name or id).")
@click.option("--address", default=None, metavar="HOST", help="A jump host sft does not manage.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="sshd port of --address [22]."
)
@click.option("--description", default="", metavar="TEXT", help="What the bastion is.")
@output_option
def create_bastion_command(
    team: str | None,
    project: str | None,
    name: str,
    server: str | None,
    address: str | None,
    port: int | None,
    description: str,
    output: str,
) -> None:
    """Create bastion NAME: either an enrolled --server or an --address.

    \b
    Examples:
      sft admin bastion create edge --project web --server bastion-1
      sft admin bastion create corp-jump --project web --address jump.example.com --port 2222
    """
    if (server is None) == (address is None):
        raise click.UsageError("give exactly one of --server and --address")
    if port is not None and server is not None:
        raise click.UsageError("--port is for --address bastions; a server's own sshd port is used")

    async def work(session: Session) -> bastion_pb2.Bastion:
        bastion = bastion_pb2.Bastion(ssh_port=port or 0, description=description)
        if server is not None:
            bastion.server = (await resolve_server(session, server)).name
        else:
            bastion.address = str(address)
        reply: bastion_service_pb2.CreateBastionResponse = await _bastions(session).CreateBastion(
            bastion_service_pb2.CreateBastionRequest(
                parent=_parent(session, project), bastion_id=name, bastion=bastion
            )
        )
        return reply.bastion

    item = bastion_json(run_in_session(team, work))
    emit(output, item, f"Created bastion {name} ({_target(item)}).")


@bastion_group.command("list")
@team_option
@project_option
@table_output_option
def list_bastions_command(team: str | None, project: str | None, output: str) -> None:
    """List bastions.

    \b
    Examples:
      sft admin bastion list --project web
      sft admin bastion list -o json
    """
    items = [bastion_json(b) for b in run_in_session(team, lambda s: _list(s, project))]
    emit(output, items, render_columns(BASTION_COLUMNS, items, "No bastions."))


@bastion_group.command("delete")
@team_option
@project_option
@click.argument("name")
@output_option
def delete_bastion_command(team: str | None, project: str | None, name: str, output: str) -> None:
    """Delete bastion NAME (refused while a project requires it).

    \b
    Examples:
      sft admin bastion delete corp-jump --project web
    """

    async def work(session: Session) -> str:
        resource = await find_bastion(session, project, name)
        await _bastions(session).DeleteBastion(
            bastion_service_pb2.DeleteBastionRequest(name=resource)
        )
        return resource

    resource = run_in_session(team, work)
    emit(
        output,
        {"name": short_id(resource), "resource": resource, "deleted": True},
        f"Deleted bastion {name}.",
    )
