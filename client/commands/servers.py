"""`sft list-servers` and `sft resolve`: which enrolled servers a person can see, and which one a
name means.

Also the one place a Server becomes JSON and table cells, shared with `sft admin server`.
grpc and the stubs load only when a verb runs; `resolve -q` never prints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from client.commands.calls import (
    every_page,
    explain_status,
    message_time,
    run_in_session,
    team_resource,
)
from client.commands.options import team_option
from client.errors import ClientError
from client.output import (
    Column,
    choose_columns,
    emit,
    human_age,
    iso_time,
    output_option,
    render_columns,
    short_id,
    table_output_option,
)
from client.resolve import resolve_server
from client.state import Home

if TYPE_CHECKING:
    from client.session import Session
    from sft.inventory.v1 import server_pb2

__all__ = [
    "ADMIN_COLUMNS",
    "SERVER_COLUMNS",
    "USER_COLUMNS",
    "columns_option",
    "list_servers",
    "list_servers_command",
    "parse_selector",
    "resolve_command",
    "resolve_server",
    "selector_option",
    "server_json",
]

#: How long `resolve -q` may take before it answers "no": ssh waits on it for every host.
QUIET_TIMEOUT_SECONDS = 5.0
#: Label keys and values as the Server contract allows them (no `,` or `=`).
_LABEL_TEXT = re.compile(r"[A-Za-z0-9._/-]*")
OS_CHOICES = ("linux", "windows")


def parse_selector(text: str) -> str:
    """Return a label selector `k=v,k2=v2` normalized (spaces dropped), or raise ValueError.

    Every pair needs a key and `=`; keys and values use letters, digits and `._/-`.
    """
    pairs: list[str] = []
    for part in text.split(","):
        key, equals, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key:
            raise ValueError(f"{part.strip()!r} is not a key=value pair (e.g. env=prod,role=web)")
        for what, item in (("key", key), ("value", value)):
            if not _LABEL_TEXT.fullmatch(item) or len(item) > (63 if what == "key" else 255):
                raise ValueError(
                    f"label {what} {item!r} is not valid: use letters, digits and . _ / - "
                    f"(at most {63 if what == 'key' else 255} characters)"
                )
        pairs.append(f"{key}={value}")
    return ",".join(pairs)


def _selector_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value is None:
        return ""
    try:
        return parse_selector(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def selector_option(func: Any) -> Any:
    """Add `-l/--selector k=v,…`."""
    return click.option(
        "-l",
        "--selector",
        default=None,
        metavar="K=V,…",
        callback=_selector_callback,
        help="Only servers with every one of these labels (e.g. env=prod,role=web).",
    )(func)


def columns_option(func: Any) -> Any:
    """Add `--columns a,b,…` (checked against SERVER_COLUMNS when the verb runs)."""
    return click.option(
        "--columns",
        default=None,
        metavar="COL,…",
        help="Table columns, in order: "
        + ", ".join(column.name for column in SERVER_COLUMNS)
        + ". JSON always has every field.",
    )(func)


def _os_name(server: server_pb2.Server) -> str:
    from sft.inventory.v1 import server_pb2

    name = server_pb2.OperatingSystem.Name(server.os).removeprefix("OPERATING_SYSTEM_").lower()
    return "" if name == "unspecified" else name


def server_json(server: server_pb2.Server) -> dict[str, Any]:
    """Return the JSON form of a server in listings (`name` is the canonical name)."""
    addresses = list(server.addresses)
    return {
        "name": server.canonical_name or server.hostname,
        "id": server.id or short_id(server.name),
        "resource": server.name,
        "hostname": server.hostname,
        "project": short_id(server.project),
        "os": _os_name(server),
        "access_address": server.access_address or (addresses[0] if addresses else ""),
        "labels": dict(sorted(server.labels.items())),
        "last_seen": iso_time(message_time(server, "last_seen_time")),
        "alt_names": list(server.alt_names),
        "addresses": addresses,
        "ssh_port": server.ssh_port or None,
        "broker_port": server.broker_port or None,
        "bastion": server.bastion or None,
        "agent_version": server.agent_version,
        "host_key_fingerprints": list(server.host_key_fingerprints),
        "create_time": iso_time(message_time(server, "create_time")),
    }


def _text(field: str) -> Column:
    return Column(field, lambda item: str(item[field] or ""))


def _joined(field: str) -> Column:
    return Column(field, lambda item: ",".join(item[field]))


def _seen(item: dict[str, Any]) -> str:
    value = item["last_seen"]
    when = dt.datetime.fromisoformat(value) if value else None
    return human_age(when, dt.datetime.now(dt.UTC))


SERVER_COLUMNS: tuple[Column, ...] = (
    _text("name"),
    _text("id"),
    _text("hostname"),
    _text("project"),
    _text("os"),
    _text("access_address"),
    Column("labels", lambda item: ",".join(f"{k}={v}" for k, v in item["labels"].items())),
    Column("last_seen", _seen),
    _joined("alt_names"),
    _joined("addresses"),
    Column("ssh_port", lambda item: str(item["ssh_port"] or "-")),
    Column("broker_port", lambda item: str(item["broker_port"] or "-")),
    _text("bastion"),
    _text("agent_version"),
    _text("resource"),
    Column("create_time", lambda item: (item["create_time"] or "")[:16].replace("T", " ")),
)
#: What a person sees by default (ASA: hostname, OS, project, access address).
USER_COLUMNS = ("name", "hostname", "project", "os", "access_address")
#: What `sft admin server list` shows by default.
ADMIN_COLUMNS = ("name", "id", "project", "os", "access_address", "agent_version", "last_seen")


async def list_servers(
    session: Session, *, project: str | None, selector: str, os: str | None
) -> list[server_pb2.Server]:
    """Return every server the caller may see (of `project`, or of all projects)."""
    from sft.inventory.v1 import server_pb2, server_service_pb2, server_service_pb2_grpc

    stub = server_service_pb2_grpc.ServerServiceStub(session.channel())
    request = server_service_pb2.ListServersRequest(
        parent=f"{team_resource(session)}/projects/{project or '-'}",
        selector=selector,
        os=server_pb2.OperatingSystem.Value(f"OPERATING_SYSTEM_{os.upper()}")
        if os
        else server_pb2.OPERATING_SYSTEM_UNSPECIFIED,
    )
    try:
        servers: list[server_pb2.Server] = await every_page(stub.ListServers, request, "servers")
    except ClientError as exc:
        raise explain_status(
            exc, {"NOT_FOUND": "see the projects with `sft admin project list`"}
        ) from None
    return servers


def _list_text(servers: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    return render_columns(columns, servers, "No servers.")


@click.command("list-servers")
@team_option
@click.option("--project", default=None, metavar="PROJECT", help="Only this project's servers.")
@selector_option
@click.option("--os", "os_name", type=click.Choice(OS_CHOICES), default=None, help="Only this OS.")
@columns_option
@table_output_option
def list_servers_command(
    team: str | None,
    project: str | None,
    selector: str,
    os_name: str | None,
    columns: str | None,
    output: str,
) -> None:
    """List the servers you can reach, in every project granted to you.

    \b
    Examples:
      sft list-servers
      sft list-servers --project web --selector env=prod,role=db
      sft list-servers --columns name,id,labels,last_seen
      sft list-servers -o json
    """
    chosen = choose_columns(columns, SERVER_COLUMNS, USER_COLUMNS)
    servers = run_in_session(
        team, lambda session: list_servers(session, project=project, selector=selector, os=os_name)
    )
    items = [server_json(server) for server in servers]
    emit(output, items, _list_text(items, chosen))


def _resolve_text(item: dict[str, Any]) -> str:
    port = f" (ssh port {item['ssh_port']})" if item["ssh_port"] not in (None, 22) else ""
    rows = [
        ("name", item["name"]),
        ("id", item["id"]),
        ("project", item["project"]),
        ("hostname", item["hostname"]),
        ("address", f"{item['access_address']}{port}"),
        ("os", item["os"]),
    ]
    return "\n".join(f"{key + ':':<10}{value}" for key, value in rows)


@click.command("resolve")
@team_option
@click.option("--project", default=None, metavar="PROJECT", help="Search only this project.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print nothing; exit 0 if NAME is exactly one server, 1 otherwise (for ssh `Match exec`).",
)
@output_option
@click.argument("name")
@click.pass_context
def resolve_command(
    ctx: click.Context, team: str | None, project: str | None, quiet: bool, output: str, name: str
) -> None:
    """Show which server NAME (a name, alias, address or id) refers to.

    \b
    Examples:
      sft resolve web-1
      sft resolve -q web-1 && echo "sft manages web-1"
      sft resolve 7f3c2a9e-… -o json

    \b
    In ~/.ssh/config (what `sft ssh-config` prints):
      Match exec "sft resolve -q %h"
          ProxyCommand sft proxycommand %h
    """
    if quiet:
        ctx.exit(0 if _resolves_quietly(team, project, name) else 1)
    server = run_in_session(team, lambda session: resolve_server(session, name, project=project))
    item = server_json(server)
    emit(output, item, _resolve_text(item))


def _resolves_quietly(team: str | None, project: str | None, name: str) -> bool:
    """Return whether `name` is exactly one server; any failure (even not enrolled) means no."""

    async def resolve(session: Session) -> object:
        return await asyncio.wait_for(
            resolve_server(session, name, project=project), QUIET_TIMEOUT_SECONDS
        )

    try:
        Home().enrolled(team)  # cheap, and spares loading grpc on machines with no team
        run_in_session(team, resolve)
    except Exception:  # by contract -q answers only yes or no, and silently
        return False
    return True
