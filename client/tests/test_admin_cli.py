"""`sft admin …` without the real platform: help, usage errors, and what the verbs send and print
against stand-in services (the real platform is driven in tests/e2e/test_admin_cli.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import click
import grpc
import grpc.aio
import pytest
from click.testing import CliRunner, Result

from client.cli import main
from client.commands.admin import admin_group
from client.enrollment import enroll
from client.state import Home
from client.tests.test_servers_cli import ServersFake, _one_error_line, _sft
from sft.auth.v1 import (
    audit_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    enrollment_code_pb2,
    enrollment_code_service_pb2,
    enrollment_code_service_pb2_grpc,
)
from sft.inventory.v1 import (
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)

Context = Any
CODE = "sftc1_" + "a" * 32 + "_" + "b" * 52
TOKEN = "sftt1_" + "c" * 32 + "_" + "d" * 52
HASH = "e" * 64
ADMIN_DENIED = (
    "this needs the team admin role in team 'acme', which 'teams/acme/users/ada' does not have"
)
SFTD_ENROLLMENT_FILE = "/var/lib/sftd/enrollment.token"


class _Users(user_service_pb2_grpc.UserServiceServicer):
    def __init__(self, fake: AdminFake) -> None:
        self.fake = fake

    async def CreateUser(
        self, request: user_service_pb2.CreateUserRequest, context: Context
    ) -> user_service_pb2.CreateUserResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.UserService/CreateUser")
        self.fake.received.append(request)
        if request.user_id == "ada":
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "user 'ada' already exists")
        user = user_pb2.User()
        user.CopyFrom(request.user)
        user.name = f"{request.parent}/users/{request.user_id}"
        user.status = user_pb2.USER_STATUS_ACTIVE
        user.unix_uid = 60002
        return user_service_pb2.CreateUserResponse(user=user)


class _Codes(enrollment_code_service_pb2_grpc.EnrollmentCodeServiceServicer):
    def __init__(self, fake: AdminFake) -> None:
        self.fake = fake

    async def CreateEnrollmentCode(
        self, request: enrollment_code_service_pb2.CreateEnrollmentCodeRequest, context: Context
    ) -> enrollment_code_service_pb2.CreateEnrollmentCodeResponse:
        await self.fake.authenticate(
            context, "/sft.auth.v1.EnrollmentCodeService/CreateEnrollmentCode"
        )
        self.fake.received.append(request)
        record = enrollment_code_pb2.EnrollmentCode(name=f"{request.parent}/enrollmentCodes/c1")
        record.expire_time.GetCurrentTime()
        record.expire_time.seconds += request.ttl_seconds
        return enrollment_code_service_pb2.CreateEnrollmentCodeResponse(
            enrollment_code=record, code=CODE
        )


class _Projects(project_service_pb2_grpc.ProjectServiceServicer):
    def __init__(self, fake: AdminFake) -> None:
        self.fake = fake

    async def CreateProject(
        self, request: project_service_pb2.CreateProjectRequest, context: Context
    ) -> project_service_pb2.CreateProjectResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.ProjectService/CreateProject")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, ADMIN_DENIED)
        raise AssertionError("unreachable")

    async def UpdateProject(
        self, request: project_service_pb2.UpdateProjectRequest, context: Context
    ) -> project_service_pb2.UpdateProjectResponse:
        await self.fake.authenticate(context, "/sft.inventory.v1.ProjectService/UpdateProject")
        self.fake.received.append(request)
        project = project_pb2.Project(
            name=request.project.name, certificate_ttl_seconds=600, create_server_users=True
        )
        request.update_mask.MergeMessage(request.project, project)
        return project_service_pb2.UpdateProjectResponse(project=project)


class _EnrollmentTokens(enrollment_token_service_pb2_grpc.EnrollmentTokenServiceServicer):
    def __init__(self, fake: AdminFake) -> None:
        self.fake = fake

    async def CreateEnrollmentToken(
        self, request: enrollment_token_service_pb2.CreateEnrollmentTokenRequest, context: Context
    ) -> enrollment_token_service_pb2.CreateEnrollmentTokenResponse:
        await self.fake.authenticate(
            context, "/sft.inventory.v1.EnrollmentTokenService/CreateEnrollmentToken"
        )
        self.fake.received.append(request)
        record = enrollment_token_pb2.EnrollmentToken()
        record.CopyFrom(request.enrollment_token)
        record.name = f"{request.parent}/enrollmentTokens/t1"
        return enrollment_token_service_pb2.CreateEnrollmentTokenResponse(
            enrollment_token=record, token=TOKEN
        )


class _Audit(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, fake: AdminFake) -> None:
        self.fake = fake

    async def VerifyAuditChain(
        self, request: audit_service_pb2.VerifyAuditChainRequest, context: Context
    ) -> audit_service_pb2.VerifyAuditChainResponse:
        await self.fake.authenticate(context, "/sft.auth.v1.AuditService/VerifyAuditChain")
        self.fake.received.append(request)
        return self.fake.verify_reply


class AdminFake(ServersFake):
    """ServersFake plus the admin services the tests below need; records every request."""

    received: list[Any]
    verify_reply: audit_service_pb2.VerifyAuditChainResponse

    def add_servicers(self, server: grpc.aio.Server) -> None:
        """Add the admin servicers."""
        self.received = []
        self.verify_reply = audit_service_pb2.VerifyAuditChainResponse(
            ok=True, checked_events=7, last_sequence=7, last_hash=HASH
        )
        user_service_pb2_grpc.add_UserServiceServicer_to_server(_Users(self), server)
        enrollment_code_service_pb2_grpc.add_EnrollmentCodeServiceServicer_to_server(
            _Codes(self), server
        )
        project_service_pb2_grpc.add_ProjectServiceServicer_to_server(_Projects(self), server)
        enrollment_token_service_pb2_grpc.add_EnrollmentTokenServiceServicer_to_server(
            _EnrollmentTokens(self), server
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(_Audit(self), server)


@pytest.fixture
async def platform() -> AsyncIterator[AdminFake]:
    fake = AdminFake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def home(tmp_path: Path, platform: AdminFake) -> Home:
    home = Home(tmp_path / "home")
    await enroll(home, url=platform.url, team="acme", code=platform.new_code())
    return home


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name)


ADMIN_VERBS = sorted(_leaves(admin_group))


def _run(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, list(args), prog_name="sft", env={"SFT_HOME": str(tmp_path / "home")}
    )


def test_the_admin_verbs_are_the_documented_ones() -> None:
    assert [" ".join(verb) for verb in ADMIN_VERBS] == [
        "audit list",
        "audit verify",
        "bastion create",
        "bastion delete",
        "bastion list",
        "group add-user",
        "group create",
        "group delete",
        "group list",
        "group members",
        "group remove-user",
        "project create",
        "project delete",
        "project grant",
        "project grants",
        "project list",
        "project revoke",
        "project update",
        "server delete",
        "server list",
        "service-user create",
        "service-user key create",
        "service-user key delete",
        "service-user list",
        "token create",
        "token list",
        "token revoke",
        "user disable",
        "user enable",
        "user invite",
        "user list",
        "user new-code",
        "user update",
    ]


@pytest.mark.parametrize("verb", ADMIN_VERBS, ids=" ".join)
def test_every_admin_verb_explains_itself_with_examples(tmp_path: Path, verb: tuple[str]) -> None:
    result = _run(tmp_path, "admin", *verb, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Examples:" in result.stdout
    assert "--team TEAM" in result.stdout
    assert f"sft admin {' '.join(verb)}" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["token", "create", "--project", "web", "--expires", "10x"],
            "Invalid value for '--expires': '10x' is not a duration; write a number and a unit",
        ),
        (["token", "create"], "Missing option '--project'."),
        (
            ["project", "update", "web"],
            "give at least one setting to change (see --help)",
        ),
        (
            ["project", "update", "web", "--required-bastion", "b", "--no-required-bastion"],
            "give --required-bastion or --no-required-bastion, not both",
        ),
        (["project", "create", "web", "--ttl", "soon"], "Invalid value for '--ttl': 'soon'"),
        (["user", "update", "bob"], "give at least one of --admin/--no-admin"),
        (
            ["user", "invite", "bob", "--expires", "8d"],
            "Invalid value for '--expires': an enrollment code lasts from 1m to 7d, not 8d",
        ),
        (
            ["bastion", "create", "b", "--server", "s", "--address", "a"],
            "give exactly one of --server and --address",
        ),
        (["bastion", "create", "b"], "give exactly one of --server and --address"),
        (
            ["audit", "verify", "--checkpoint", "12"],
            "Invalid value for '--checkpoint': '12' is not a checkpoint; use SEQUENCE:HASH",
        ),
        (
            ["audit", "list", "--since", "tomorrow"],
            "Invalid value for '--since': 'tomorrow' is neither a duration ago",
        ),
        (
            ["audit", "list", "--since", "1h", "--until", "2h"],
            "Invalid value for '--since': --since must be before --until",
        ),
        (["audit", "list", "--limit", "-1"], "Invalid value for '--limit'"),
        (["server", "list", "--columns", "name,colour"], "unknown column 'colour'"),
        (["group", "add-user", "developers"], "Missing argument 'USER'."),
        (["user", "frobnicate"], "No such command 'frobnicate'."),
    ],
)
def test_usage_errors_are_one_line_with_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    line = _one_error_line(_run(tmp_path, "admin", *args), 2)
    assert message in line
    assert line.endswith("--help`)")


def test_admin_verbs_need_an_enrolled_device(tmp_path: Path) -> None:
    line = _one_error_line(_run(tmp_path, "admin", "user", "list"))
    assert "sft enroll --url URL --team TEAM --code CODE" in line


def test_deleting_without_a_terminal_needs_yes_and_asks_nobody(tmp_path: Path) -> None:
    for args in (["server", "delete", "web-1"], ["project", "delete", "web"]):
        line = _one_error_line(_run(tmp_path, "admin", *args), 2)
        assert line == (
            "refusing to go ahead without confirmation (stdin is not a terminal); "
            "rerun with --yes if you are sure"
        )


async def test_delete_with_yes_resolves_then_deletes(home: Home, platform: AdminFake) -> None:
    result = await _sft(home, "admin", "server", "delete", "web-1", "--yes", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert platform.deleted == ["teams/acme/projects/web/servers/22222222-bbbb"]
    assert json.loads(result.stdout)["deleted"] is True
    ambiguous = _one_error_line(await _sft(home, "admin", "server", "delete", "db", "--yes"))
    assert ambiguous.startswith("'db' could mean 2 servers")
    assert len(platform.deleted) == 1


async def test_invite_creates_the_user_then_prints_the_code_once(
    home: Home, platform: AdminFake
) -> None:
    result = await _sft(home, "admin", "user", "invite", "bob", "--display-name", "Bob Smith")
    assert result.exit_code == 0, result.stderr
    created, code_request = platform.received
    assert created.parent == "teams/acme" and created.user_id == "bob"
    assert created.user.display_name == "Bob Smith"
    assert created.user.kind == user_pb2.USER_KIND_HUMAN and not created.user.team_admin
    assert code_request.parent == "teams/acme/users/bob"
    assert code_request.ttl_seconds == 86400
    lines = result.stdout.splitlines()
    assert lines[0] == "Invited bob to team acme (uid 60002)."
    assert lines[2] == f"  {CODE}"
    assert lines[-1] == f"  sft enroll --url {platform.url} --team acme --code {CODE}"
    # Once as the code, once inside the command to run; never anywhere else.
    assert result.stdout.count(CODE) == 2
    assert CODE not in result.stderr

    as_json = await _sft(home, "admin", "user", "invite", "carol", "--admin", "-o", "json")
    document = json.loads(as_json.stdout)
    assert document["code"] == CODE
    assert document["enroll_command"] == (
        f"sft enroll --url {platform.url} --team acme --code {CODE}"
    )
    assert document["user"]["name"] == "carol" and document["user"]["team_admin"] is True
    assert document["expire_time"]


async def test_inviting_someone_who_exists_says_how_to_get_a_new_code(home: Home) -> None:
    line = _one_error_line(await _sft(home, "admin", "user", "invite", "ada"))
    assert line == (
        "user 'ada' already exists; to give them a new enrollment code, run "
        "`sft admin user new-code ada`"
    )


async def test_permission_denied_is_the_platforms_one_line(home: Home) -> None:
    line = _one_error_line(await _sft(home, "admin", "project", "create", "web"))
    assert line == ADMIN_DENIED


async def test_project_update_sends_only_the_given_settings(
    home: Home, platform: AdminFake
) -> None:
    result = await _sft(
        home, "admin", "project", "update", "web", "--max-ttl", "2h", "--no-rdp", "-o", "json"
    )
    assert result.exit_code == 0, result.stderr
    (request,) = platform.received
    assert request.project.name == "teams/acme/projects/web"
    assert sorted(request.update_mask.paths) == ["certificate_max_ttl_seconds", "rdp_enabled"]
    assert request.project.certificate_max_ttl_seconds == 7200
    document = json.loads(result.stdout)
    assert document["certificate_max_ttl_seconds"] == 7200
    assert document["certificate_ttl_seconds"] == 600 and document["rdp_enabled"] is False


async def test_token_create_prints_the_token_once_and_where_it_goes(
    home: Home, platform: AdminFake
) -> None:
    args = ["--project", "web", "--expires", "never", "--max-uses", "3"]
    result = await _sft(home, "admin", "token", "create", *args)
    assert result.exit_code == 0, result.stderr
    (request,) = platform.received
    assert request.parent == "teams/acme/projects/web"
    assert not request.enrollment_token.HasField("expire_time")
    assert request.enrollment_token.max_uses == 3
    assert result.stdout.count(TOKEN) == 1
    assert SFTD_ENROLLMENT_FILE in result.stdout
    assert "enrolls 3 servers, forever" in result.stdout

    as_json = await _sft(home, "admin", "token", "create", "--project", "web", "-o", "json")
    document = json.loads(as_json.stdout)
    assert document["token"] == TOKEN and document["id"] == "t1"
    assert document["project"] == "web" and document["expire_time"]
    assert document["token_file"] == SFTD_ENROLLMENT_FILE


async def test_audit_verify_prints_a_checkpoint_or_fails_naming_the_event(
    home: Home, platform: AdminFake
) -> None:
    good = await _sft(home, "admin", "audit", "verify", "--checkpoint", f"3:{HASH}")
    assert good.exit_code == 0, good.stderr
    (request,) = platform.received
    assert (request.checkpoint_sequence, request.checkpoint_hash) == (3, HASH)
    assert good.stdout.splitlines() == [
        "The audit trail of team acme verifies: 7 events, including checkpoint 3.",
        f"Checkpoint to keep for the next verify: 7:{HASH}",
    ]

    platform.verify_reply = audit_service_pb2.VerifyAuditChainResponse(
        ok=False,
        checked_events=4,
        first_break=audit_pb2.AuditChainBreak(
            sequence=4,
            event="teams/acme/auditEvents/e4",
            kind=audit_pb2.AUDIT_CHAIN_BREAK_KIND_CHANGED,
            detail="hash of event 4 does not match its content",
        ),
    )
    line = _one_error_line(await _sft(home, "admin", "audit", "verify"))
    assert line.startswith(
        "the audit trail of team acme is broken: event 4 was changed after it was written "
        "(hash of event 4 does not match its content)"
    )
    broken = await _sft(home, "admin", "audit", "verify", "-o", "json")
    assert broken.exit_code == 1
    document = json.loads(broken.stdout)
    assert document["ok"] is False
    assert document["first_break"] == {
        "sequence": 4,
        "event": "teams/acme/auditEvents/e4",
        "kind": "changed",
        "detail": "hash of event 4 does not match its content",
    }
    assert broken.stderr.startswith("sft: error: the audit trail of team acme is broken")
