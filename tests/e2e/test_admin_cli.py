"""`sft admin …`, `sft list-servers` and `sft resolve` as people run them, against the real
platform (in-process, on SQLite).

The real `sft` console script runs as a subprocess per person, each with its own
SFT_HOME: the team admin sets up a project, a group, a grant, an enrollment token and
a service user, and invites a second person, who enrolls with the code the invite
printed. A server enrolls with the token the CLI printed, and the granted person sees
it. The audit trail shows it all and verifies; the second person, not an admin, is
refused admin verbs in one line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime.database import default_sqlite_url
from sft.inventory.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc, server_pb2
from tests.support.cli import Person
from tests.support.platform import Platform, public_key_line, running_platform

pytestmark = pytest.mark.e2e


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(default_sqlite_url(tmp_path), tmp_path) as started:
        await started.create_team("acme", "ada")
        yield started


def _url(platform: Platform) -> str:
    return f"https://{platform.address}"


async def _enroll_server(platform: Platform, token: str) -> server_pb2.Server:
    """Enroll a server with `token` the way sftd does; return it."""
    key = ed25519.Ed25519PrivateKey.generate()
    agents = platform.stub(agent_service_pb2_grpc.AgentServiceStub)
    reply: agent_service_pb2.EnrollServerResponse = await agents.EnrollServer(
        agent_service_pb2.EnrollServerRequest(
            enrollment_token=token,
            agent_public_key=public_key_line(key),
            host_public_keys=[public_key_line(ed25519.Ed25519PrivateKey.generate())],
            facts=agent_pb2.ServerFacts(
                hostname="ip-10-0-0-5",
                canonical_name="web-1",
                labels={"env": "prod"},
                os=server_pb2.OPERATING_SYSTEM_LINUX,
                addresses=["10.0.0.5"],
                ssh_port=22,
                agent_version="test",
            ),
        )
    )
    return reply.server


async def test_a_team_admin_runs_the_team_from_the_command_line(
    platform: Platform, tmp_path: Path
) -> None:
    ada = Person(tmp_path / "ada")
    code = await platform.enrollment_code("acme", "ada")
    enrolled = await ada.sft("enroll", "--url", _url(platform), "--team", "acme", "--code", code)
    assert enrolled.returncode == 0, enrolled.stderr

    project = (
        await ada.sft("admin", "project", "create", "web", "--ttl", "5m", "--max-ttl", "1h",
                      "--port-forwarding", "--admin-account-name", "ubuntu", "-o", "json")
    ).json()  # fmt: skip
    assert project["name"] == "web" and project["resource"] == "teams/acme/projects/web"
    assert project["certificate_ttl_seconds"] == 300
    assert project["certificate_max_ttl_seconds"] == 3600
    assert project["permit_port_forwarding"] is True and project["rdp_enabled"] is True
    assert project["allowed_admin_account_names"] == ["ubuntu"]
    updated = (await ada.sft("admin", "project", "update", "web", "--no-rdp", "-o", "json")).json()
    assert updated["rdp_enabled"] is False
    assert updated["certificate_ttl_seconds"] == 300  # not in the mask, so unchanged
    assert [
        p["name"] for p in (await ada.sft("admin", "project", "list", "-o", "json")).json()
    ] == ["web"]

    group = (await ada.sft("admin", "group", "create", "developers", "-o", "json")).json()
    assert group["resource"] == "teams/acme/groups/developers"

    invite = (await ada.sft("admin", "user", "invite", "bob", "-o", "json")).json()
    assert invite["user"]["name"] == "bob" and invite["user"]["team_admin"] is False
    assert invite["code"].startswith("sftc1_")
    assert invite["enroll_command"] == (
        f"sft enroll --url {_url(platform)} --team acme --code {invite['code']}"
    )

    # Bob enrolls with the code the invite printed, before any grant: he sees no server,
    # and the admin verbs tell him which role he lacks.
    bob = Person(tmp_path / "bob")
    bob_enrolled = await bob.sft(*invite["enroll_command"].split()[1:])
    assert bob_enrolled.returncode == 0, bob_enrolled.stderr
    assert (await bob.sft("list-servers", "-o", "json")).json() == []
    assert (await bob.sft("list-servers")).stdout == "No servers.\n"
    refused = (await bob.sft("admin", "project", "create", "mine")).one_error_line()
    assert "team admin role" in refused and "bob" in refused
    quiet = await bob.sft("resolve", "-q", "web-1")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")
    missing = (await bob.sft("resolve", "web-1")).one_error_line()
    assert "`sft list-servers`" in missing

    added = await ada.sft("admin", "group", "add-user", "developers", "bob")
    assert added.returncode == 0, added.stderr
    members = (await ada.sft("admin", "group", "members", "developers", "-o", "json")).json()
    assert [m["user"] for m in members] == ["bob"]
    granted = (await ada.sft("admin", "project", "grant", "developers", "web", "-o", "json")).json()
    assert granted["group"] == "developers" and granted["role"] == "user"
    grants = (await ada.sft("admin", "project", "grants", "web", "-o", "json")).json()
    assert [(g["group"], g["role"]) for g in grants] == [("developers", "user")]

    token = (
        await ada.sft(
            "admin", "token", "create", "--project", "web", "--max-uses", "2", "-o", "json"
        )
    ).json()
    assert token["token"].startswith("sftt1_") and token["max_uses"] == 2
    listed = (await ada.sft("admin", "token", "list", "--project", "web", "-o", "json")).json()
    assert [t["id"] for t in listed] == [token["id"]]
    assert token["token"] not in json.dumps(listed)

    users = (await ada.sft("admin", "user", "list", "-o", "json")).json()
    assert [(u["name"], u["team_admin"]) for u in users] == [("ada", True), ("bob", False)]

    # A server enrolls with the token the CLI printed (what sftd does with the file).
    server = await _enroll_server(platform, token["token"])
    seen = (await bob.sft("list-servers", "-o", "json")).json()
    assert [(s["name"], s["id"], s["project"]) for s in seen] == [("web-1", server.id, "web")]
    (item,) = seen
    assert item["hostname"] == "ip-10-0-0-5" and item["os"] == "linux"
    assert item["access_address"] == "10.0.0.5" and item["labels"] == {"env": "prod"}
    assert item["last_seen"] is None or item["last_seen"].startswith("20")
    assert (await bob.sft("list-servers", "--selector", "env=dev", "-o", "json")).json() == []
    table = (await bob.sft("list-servers", "--columns", "name,labels")).stdout.splitlines()
    assert [line.split() for line in table] == [["NAME", "LABELS"], ["web-1", "env=prod"]]
    found = await bob.sft("resolve", "-q", "web-1")
    assert (found.returncode, found.stdout, found.stderr) == (0, "", "")
    assert (await bob.sft("resolve", server.id, "-o", "json")).json()["name"] == "web-1"
    admin_view = (await ada.sft("admin", "server", "list", "-o", "json")).json()
    assert [s["resource"] for s in admin_view] == [server.name]
    cut_off = await ada.sft("admin", "server", "delete", "web-1", "--yes")
    assert cut_off.returncode == 0, cut_off.stderr
    assert (await ada.sft("admin", "server", "list", "-o", "json")).json() == []

    events = (await ada.sft("admin", "audit", "list", "--oldest-first", "-o", "json")).json()
    done = [(e["action"], e["resource"]) for e in events if e["outcome"] == "success"]
    for expected in (
        ("project.create", "teams/acme/projects/web"),
        ("project.update", "teams/acme/projects/web"),
        ("group.create", "teams/acme/groups/developers"),
        ("user.create", "teams/acme/users/bob"),
    ):
        assert expected in done, done
    actions = {action for action, _ in done}
    assert {"grant.create", "enrollment_code.create"} <= actions, actions
    assert any(action.startswith("token.") for action in actions), actions
    # Secrets never reach the trail.
    trail = json.dumps(events)
    assert invite["code"] not in trail and token["token"] not in trail

    verified = (await ada.sft("admin", "audit", "verify", "-o", "json")).json()
    assert verified["ok"] is True and verified["first_break"] is None
    checkpoint = verified["checkpoint"]
    assert checkpoint == f"{verified['last_sequence']}:{verified['last_hash']}"
    again = await ada.sft("admin", "audit", "verify", "--checkpoint", checkpoint)
    assert again.returncode == 0, again.stderr
    assert "Checkpoint to keep for the next verify: " in again.stdout


async def test_service_users_keys_and_bastions(platform: Platform, tmp_path: Path) -> None:
    ada = Person(tmp_path / "ada")
    code = await platform.enrollment_code("acme", "ada")
    enrolled = await ada.sft("enroll", "--url", _url(platform), "--team", "acme", "--code", code)
    assert enrolled.returncode == 0, enrolled.stderr

    bot = (await ada.sft("admin", "service-user", "create", "deploy-bot", "-o", "json")).json()
    assert bot["name"] == "deploy-bot" and bot["user"] == "teams/acme/users/deploy-bot"
    key = (
        await ada.sft("admin", "service-user", "key", "create", "deploy-bot", "-o", "json")
    ).json()
    assert key["key_id"] and key["secret"]
    listed = (await ada.sft("admin", "service-user", "list", "-o", "json")).json()
    assert [k["key_id"] for k in listed[0]["keys"]] == [key["key_id"]]
    assert key["secret"] not in json.dumps(listed)
    deleted = await ada.sft("admin", "service-user", "key", "delete", "deploy-bot", key["key_id"])
    assert deleted.returncode == 0, deleted.stderr

    bastion = (
        await ada.sft("admin", "bastion", "create", "jump", "--address", "jump.example.com",
                      "--port", "2222", "-o", "json")
    ).json()  # fmt: skip
    assert (bastion["address"], bastion["ssh_port"]) == ("jump.example.com", 2222)
    assert [
        b["name"] for b in (await ada.sft("admin", "bastion", "list", "-o", "json")).json()
    ] == ["jump"]
    gone = await ada.sft("admin", "bastion", "delete", "jump")
    assert gone.returncode == 0, gone.stderr
    assert (await ada.sft("admin", "bastion", "list", "-o", "json")).json() == []
