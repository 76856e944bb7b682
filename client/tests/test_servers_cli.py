"""`sft list-servers` and `sft resolve` against a stand-in ServerService: paging, selectors,
columns, JSON, and `resolve -q` answering only with its exit status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from click.testing import CliRunner, Result
from google.protobuf.timestamp_pb2 import Timestamp

from client.cli import main
from client.commands.servers import SERVER_COLUMNS, parse_selector, server_json
from client.enrollment import enroll
from client.output import choose_columns, render_columns
from client.state import Home
from client.tests.fake_platform import FakePlatform
from sft.auth.v1 import device_service_pb2_grpc, token_service_pb2_grpc
from sft.inventory.v1 import server_pb2, server_service_pb2, server_service_pb2_grpc

Context = Any
NOW = dt.datetime.now(dt.UTC)


def _server(
    project: str,
    sid: str,
    canonical: str,
    *,
    os: server_pb2.OperatingSystem.ValueType = server_pb2.OPERATING_SYSTEM_LINUX,
    labels: dict[str, str] | None = None,
    access_address: str = "",
) -> server_pb2.Server:
    seen = Timestamp()
    seen.FromDatetime(NOW - dt.timedelta(minutes=3))
    return server_pb2.Server(
        name=f"teams/acme/projects/{project}/servers/{sid}",
        id=sid,
        project=f"teams/acme/projects/{project}",
        hostname=f"{canonical}.internal",
        canonical_name=canonical,
        labels=labels or {},
        os=os,
        addresses=["10.0.0.9", "fd00::9"],
        access_address=access_address,
        ssh_port=22,
        agent_version="0.1.0",
        last_seen_time=seen,
    )


SERVERS = [
    _server("db", "11111111-aaaa", "db", labels={"env": "prod"}),
    _server("web", "22222222-bbbb", "web-1", labels={"env": "prod", "role": "web"}),
    _server("web", "33333333-cccc", "web-2", access_address="web-2.example.com"),
    _server("win", "44444444-dddd", "desk", os=server_pb2.OPERATING_SYSTEM_WINDOWS),
    _server("db-old", "55555555-eeee", "db"),
]


class _Servers(server_service_pb2_grpc.ServerServiceServicer):
    """Pages of at most two servers, a selector filter, and ResolveServer by id or name."""

    def __init__(self, fake: ServersFake) -> None:
        self.fake = fake

    async def ListServers(
        self, request: server_service_pb2.ListServersRequest, context: Context
    ) -> server_service_pb2.ListServersResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.ServerService/ListServers")
        self.fake.list_requests.append(request)
        project = request.parent.rsplit("/", 1)[-1]
        wanted = dict(pair.split("=") for pair in request.selector.split(",") if pair)
        matches = [
            s
            for s in SERVERS
            if project in ("-", s.project.rsplit("/", 1)[-1])
            and all(s.labels.get(k) == v for k, v in wanted.items())
            and request.os in (0, s.os)
        ]
        start = int(request.page_token or 0)
        end = start + min(request.page_size or 50, 2)
        return server_service_pb2.ListServersResponse(
            servers=matches[start:end], next_page_token=str(end) if end < len(matches) else ""
        )

    async def DeleteServer(
        self, request: server_service_pb2.DeleteServerRequest, context: Context
    ) -> server_service_pb2.DeleteServerResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.ServerService/DeleteServer")
        self.fake.deleted.append(request.name)
        return server_service_pb2.DeleteServerResponse()

    async def ResolveServer(
        self, request: server_service_pb2.ResolveServerRequest, context: Context
    ) -> server_service_pb2.ResolveServerResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.ServerService/ResolveServer")
        if self.fake.resolve_delay:
            await asyncio.sleep(self.fake.resolve_delay)
        for tier in ("id", "canonical_name"):
            found = [s for s in SERVERS if getattr(s, tier) == request.query]
            if len(found) == 1:
                return server_service_pb2.ResolveServerResponse(server=found[0])
            if found:
                return server_service_pb2.ResolveServerResponse(candidates=found)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no server matches {request.query!r}")
        raise AssertionError("unreachable")


class ServersFake(FakePlatform):
    """The device/token fake plus a ServerService, and any servicers `add_servicers` adds."""

    list_requests: list[server_service_pb2.ListServersRequest]
    deleted: list[str]
    resolve_delay: float = 0.0

    def add_servicers(self, server: grpc.aio.Server) -> None:
        """Add more servicers before the server starts (for subclasses)."""

    async def start(self) -> ServersFake:
        """Serve the fake's services and ServerService on a free loopback port."""
        from client.tests import fake_platform

        self.list_requests = []
        self.deleted = []
        server = grpc.aio.server()
        self.add_servicers(server)
        device_service_pb2_grpc.add_DeviceServiceServicer_to_server(
            fake_platform._Devices(self), server
        )
        token_service_pb2_grpc.add_TokenServiceServicer_to_server(
            fake_platform._Tokens(self), server
        )
        server_service_pb2_grpc.add_ServerServiceServicer_to_server(_Servers(self), server)
        credentials = grpc.ssl_server_credentials([(self.pki.leaf_key_pem, self.pki.chain_pem)])
        self.port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        self._server = server
        return self


@pytest.fixture
async def platform() -> AsyncIterator[ServersFake]:
    fake = await ServersFake().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def home(tmp_path: Path, platform: ServersFake) -> Home:
    home = Home(tmp_path / "home")
    await enroll(home, url=platform.url, team="acme", code=platform.new_code())
    return home


async def _sft(home: Home, *args: str) -> Result:
    """Run the CLI in a thread (it runs its own event loop) while the fake serves on ours."""
    return await asyncio.to_thread(
        CliRunner().invoke, main, list(args), prog_name="sft", env={"SFT_HOME": str(home.root)}
    )


def _one_error_line(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("sft: error: ")
    return line.removeprefix("sft: error: ")


# Pure pieces -------------------------------------------------------------------------------


def test_selectors_are_normalized_pairs() -> None:
    assert parse_selector("env=prod") == "env=prod"
    assert parse_selector(" env = prod , role=web ") == "env=prod,role=web"
    assert parse_selector("k8s.io/zone=eu-1a,empty=") == "k8s.io/zone=eu-1a,empty="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("env", "'env' is not a key=value pair"),
        ("=prod", "'=prod' is not a key=value pair"),
        ("env=prod,", "'' is not a key=value pair"),
        ("env=pr od", "label value 'pr od' is not valid"),
        ("e*v=prod", "label key 'e*v' is not valid"),
        ("a=b=c", "label value 'b=c' is not valid"),
        ("k" * 64 + "=v", "at most 63 characters"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_selector(text)


def test_server_json_has_the_contract_fields() -> None:
    item = server_json(SERVERS[1])
    assert item["name"] == "web-1"
    assert item["id"] == "22222222-bbbb"
    assert item["resource"] == "teams/acme/projects/web/servers/22222222-bbbb"
    assert item["hostname"] == "web-1.internal"
    assert item["project"] == "web"
    assert item["os"] == "linux"
    # No AccessAddress: the first reported address is what clients dial.
    assert item["access_address"] == "10.0.0.9"
    assert item["labels"] == {"env": "prod", "role": "web"}
    assert dt.datetime.fromisoformat(item["last_seen"]) == NOW - dt.timedelta(minutes=3)
    assert server_json(SERVERS[2])["access_address"] == "web-2.example.com"
    assert server_json(SERVERS[3])["os"] == "windows"
    unseen = server_json(server_pb2.Server(name="teams/a/projects/p/servers/x", hostname="h"))
    assert unseen["name"] == "h" and unseen["id"] == "x" and unseen["last_seen"] is None
    assert unseen["os"] == "" and unseen["ssh_port"] is None


def test_columns_are_chosen_in_order_and_unknown_ones_refused() -> None:
    import click

    chosen = choose_columns("id,name,labels,last_seen", SERVER_COLUMNS, ())
    fresh = server_pb2.Server()
    fresh.CopyFrom(SERVERS[1])
    # Seen 3 minutes before *now* (the module's NOW may be minutes old under xdist).
    fresh.last_seen_time.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3, seconds=5))
    table = render_columns(chosen, [server_json(fresh)], "No servers.")
    header, row = table.splitlines()
    assert header.split() == ["ID", "NAME", "LABELS", "LAST", "SEEN"]
    assert row.split() == ["22222222-bbbb", "web-1", "env=prod,role=web", "3m", "ago"]
    assert render_columns(chosen, [], "No servers.") == "No servers."
    with pytest.raises(click.BadParameter, match="unknown column 'nope'; choose from name, id"):
        choose_columns("name,nope", SERVER_COLUMNS, ())


# Against the stand-in ------------------------------------------------------------------------


async def test_list_servers_pages_through_everything_and_prints_a_table(
    home: Home, platform: ServersFake
) -> None:
    result = await _sft(home, "list-servers")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "HOSTNAME", "PROJECT", "OS", "ACCESS", "ADDRESS"]
    assert [line.split()[0] for line in lines[1:]] == ["db", "web-1", "web-2", "desk", "db"]
    assert "web-2.example.com" in lines[3]
    # Five servers in pages of two: three calls, every one for all projects.
    assert [r.parent for r in platform.list_requests] == ["teams/acme/projects/-"] * 3
    assert [r.page_token for r in platform.list_requests] == ["", "2", "4"]


async def test_list_servers_json_filters_and_table_alias(home: Home, platform: ServersFake) -> None:
    result = await _sft(home, "list-servers", "--project", "web", "-l", "env = prod", "-o", "json")
    assert result.exit_code == 0, result.stderr
    (item,) = json.loads(result.stdout)
    assert item["name"] == "web-1" and item["project"] == "web"
    assert {"name", "id", "hostname", "project", "os", "access_address", "labels", "last_seen"} <= (
        item.keys()
    )
    assert platform.list_requests[-1].parent == "teams/acme/projects/web"
    assert platform.list_requests[-1].selector == "env=prod"

    windows = await _sft(home, "list-servers", "--os", "windows", "-o", "table")
    assert windows.exit_code == 0, windows.stderr
    assert [line.split()[0] for line in windows.stdout.splitlines()] == ["NAME", "desk"]

    none = await _sft(home, "list-servers", "--project", "nothing-here", "-o", "json")
    assert json.loads(none.stdout) == []
    empty = await _sft(home, "list-servers", "--project", "nothing-here")
    assert empty.stdout == "No servers.\n"


async def test_list_servers_refuses_bad_arguments_before_calling(
    home: Home, platform: ServersFake
) -> None:
    calls = len(platform.calls)
    selector = _one_error_line(await _sft(home, "list-servers", "-l", "env"), 2)
    assert selector.startswith("Invalid value for '-l' / '--selector': 'env' is not a key=value")
    column = _one_error_line(await _sft(home, "list-servers", "--columns", "name,size"), 2)
    assert column.startswith("Invalid value for '--columns': unknown column 'size'")
    output = _one_error_line(await _sft(home, "list-servers", "-o", "yaml"), 2)
    assert "'yaml' is not one of 'text', 'table', 'json'" in output
    assert len(platform.calls) == calls


async def test_resolve_prints_the_server(home: Home) -> None:
    result = await _sft(home, "resolve", "web-1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "name:     web-1",
        "id:       22222222-bbbb",
        "project:  web",
        "hostname: web-1.internal",
        "address:  10.0.0.9",
        "os:       linux",
    ]
    as_json = json.loads((await _sft(home, "resolve", "22222222-bbbb", "-o", "json")).stdout)
    assert as_json["name"] == "web-1" and as_json["project"] == "web"


async def test_resolve_says_why_not(home: Home) -> None:
    missing = _one_error_line(await _sft(home, "resolve", "nowhere"))
    assert missing == (
        "no server matches 'nowhere'; see the servers you can reach with `sft list-servers`"
    )
    ambiguous = _one_error_line(await _sft(home, "resolve", "db"))
    assert ambiguous == (
        "'db' could mean 2 servers: db (project db, id 11111111-aaaa); "
        "db (project db-old, id 55555555-eeee); name one by its id or canonical name, "
        "or narrow with --project"
    )


async def test_resolve_quiet_answers_with_the_exit_status_only(
    home: Home, platform: ServersFake, tmp_path: Path
) -> None:
    for name, status in (("web-1", 0), ("22222222-bbbb", 0), ("nowhere", 1), ("db", 1)):
        result = await _sft(home, "resolve", "-q", name)
        assert (result.exit_code, result.stdout, result.stderr) == (0 if status == 0 else 1, "", "")
    # Not enrolled, or the platform gone: still no words, just "no".
    nobody = await _sft(Home(tmp_path / "nobody"), "resolve", "-q", "web-1")
    assert (nobody.exit_code, nobody.stdout, nobody.stderr) == (1, "", "")
    await platform.stop()
    gone = await _sft(home, "resolve", "--quiet", "web-1")
    assert (gone.exit_code, gone.stdout, gone.stderr) == (1, "", "")


async def test_resolve_quiet_gives_up_rather_than_hold_ssh(
    home: Home, platform: ServersFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("client.commands.servers.QUIET_TIMEOUT_SECONDS", 0.2)
    platform.resolve_delay = 5.0
    started = asyncio.get_running_loop().time()
    result = await _sft(home, "resolve", "-q", "web-1")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "")
    assert asyncio.get_running_loop().time() - started < 3
