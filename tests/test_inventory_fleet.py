"""The inventory's fleet through real gRPC on loopback, on SQLite and PostgreSQL: server
enrollment tokens, listing and resolving servers as people with and without grants,
admin changes, and the access decision the auth service asks for.

The harness (`running_fleet`, the world, enrollment helpers) is tests/support/fleet.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import func, select

from runtime.clock import timestamp
from runtime.pinned_codes import CodeKind, PinnedCode
from services.inventory.models import (
    Bastion,
    EnrollmentTokenRow,
    Project,
    Server,
    ServerName,
)
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    enrollment_token_pb2,
    enrollment_token_service_pb2,
    project_pb2,
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
)
from tests.support.fleet import (
    TEAM,
    build_world,
    create_token,
    enroll,
    expect_error,
    host_key_line,
    running_fleet,
)

# --- enrollment tokens --------------------------------------------------------------------


async def test_project_admin_creates_lists_and_revokes_tokens(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        alice = running.tokens(await running.user_token("alice"))
        parent = f"teams/{TEAM}/projects/web"
        created = await alice.CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                parent=parent,
                enrollment_token=enrollment_token_pb2.EnrollmentToken(
                    description="web autoscaling group", max_uses=3
                ),
            )
        )
        code = PinnedCode.parse(created.token, CodeKind.SERVER_ENROLLMENT)
        assert code.pins(running.pin)
        token = created.enrollment_token
        assert token.name.startswith(f"{parent}/enrollmentTokens/")
        assert token.creator == f"teams/{TEAM}/users/alice"
        assert token.max_uses == 3 and token.uses == 0 and not token.revoked
        lifetime = token.expire_time.ToDatetime(dt.UTC) - token.create_time.ToDatetime(dt.UTC)
        assert lifetime == dt.timedelta(hours=24)
        async with running.database.sessions() as session:
            stored = await session.scalar(select(EnrollmentTokenRow.secret_hash))
        assert stored == code.secret_hash and created.token not in stored

        second = await alice.CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(parent=parent)
        )
        first_page = await alice.ListEnrollmentTokens(
            enrollment_token_service_pb2.ListEnrollmentTokensRequest(parent=parent, page_size=1)
        )
        assert [t.name for t in first_page.enrollment_tokens] == [second.enrollment_token.name]
        rest = await alice.ListEnrollmentTokens(
            enrollment_token_service_pb2.ListEnrollmentTokensRequest(
                parent=parent, page_size=1, page_token=first_page.next_page_token
            )
        )
        assert [t.name for t in rest.enrollment_tokens] == [token.name]
        assert rest.next_page_token == ""

        revoked = await alice.RevokeEnrollmentToken(
            enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(name=token.name)
        )
        again = await alice.RevokeEnrollmentToken(
            enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(name=token.name)
        )
        assert revoked.enrollment_token.revoked
        assert again.enrollment_token.revoke_time == revoked.enrollment_token.revoke_time
        visible = await alice.ListEnrollmentTokens(
            enrollment_token_service_pb2.ListEnrollmentTokensRequest(parent=parent)
        )
        assert [t.name for t in visible.enrollment_tokens] == [second.enrollment_token.name]
        everything = await alice.ListEnrollmentTokens(
            enrollment_token_service_pb2.ListEnrollmentTokensRequest(
                parent=parent, show_revoked=True
            )
        )
        assert len(everything.enrollment_tokens) == 2
        assert [e.resource for e in running.trail.events_of("token.create")] == [
            token.name,
            second.enrollment_token.name,
        ]
        assert len(running.trail.events_of("token.revoke")) == 2
        assert all(created.token not in str(event) for _, event in running.trail.events)


async def test_tokens_need_a_project_admin_and_sane_settings(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        bob = running.tokens(await running.user_token("bob"))
        # bob is a user on web and an admin on db.
        denied = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            bob.CreateEnrollmentToken(
                enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                    parent=f"teams/{TEAM}/projects/web"
                )
            ),
        )
        assert "admin grant on project 'web'" in denied
        await bob.CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                parent=f"teams/{TEAM}/projects/db"
            )
        )
        too_far = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
        message = await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            bob.CreateEnrollmentToken(
                enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                    parent=f"teams/{TEAM}/projects/db",
                    enrollment_token=enrollment_token_pb2.EnrollmentToken(
                        expire_time=timestamp(too_far)
                    ),
                )
            ),
        )
        assert "30 days" in message
        await expect_error(
            grpc.StatusCode.NOT_FOUND,
            bob.RevokeEnrollmentToken(
                enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(
                    name=f"teams/{TEAM}/projects/db/enrollmentTokens/nope"
                )
            ),
        )


# --- listing and reading servers ----------------------------------------------------------


async def test_people_see_only_servers_of_projects_granted_to_them(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        web_token = await create_token(running, "web")
        db_token = await create_token(running, "db")
        web = [
            await enroll(running, web_token, f"web-{i}", labels={"env": env, "role": "web"})
            for i, env in enumerate(["prod", "prod", "staging"])
        ]
        linux = await enroll(
            running,
            web_token,
            "web-linux",
            os=server_pb2.OPERATING_SYSTEM_LINUX,
            host_keys=[host_key_line()],
            labels={"env": "prod"},
        )
        db = await enroll(running, db_token, "db-1", labels={"env": "prod"})
        everyone = [*[r.server.name for r in web], linux.server.name, db.server.name]

        alice = running.servers(await running.user_token("alice"))
        carol = running.servers(await running.user_token("carol"))
        bob = running.servers(await running.user_token("bob"))

        team_wide = f"teams/{TEAM}"
        listed = await alice.ListServers(server_service_pb2.ListServersRequest(parent=team_wide))
        assert [s.name for s in listed.servers] == list(reversed(everyone))  # newest first
        assert all(s.agent_public_key.startswith("ssh-ed25519 ") for s in listed.servers)
        nothing = await carol.ListServers(server_service_pb2.ListServersRequest(parent=team_wide))
        assert list(nothing.servers) == []
        denied = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            carol.ListServers(
                server_service_pb2.ListServersRequest(parent=f"teams/{TEAM}/projects/web")
            ),
        )
        assert "sft admin project grant GROUP web" in denied
        await expect_error(
            grpc.StatusCode.NOT_FOUND,
            carol.GetServer(server_service_pb2.GetServerRequest(name=everyone[0])),
        )
        got = await bob.GetServer(server_service_pb2.GetServerRequest(name=everyone[0]))
        assert got.server.canonical_name == "web-0"

        # bob is granted both projects; page through prod servers two at a time.
        pages: list[str] = []
        token = ""
        while True:
            page = await bob.ListServers(
                server_service_pb2.ListServersRequest(
                    parent=f"teams/{TEAM}/projects/-",
                    selector=" env = prod ",
                    page_size=2,
                    page_token=token,
                )
            )
            pages.extend(s.canonical_name for s in page.servers)
            token = page.next_page_token
            if not token:
                break
        assert pages == ["db-1", "web-linux", "web-1", "web-0"]
        linux_only = await bob.ListServers(
            server_service_pb2.ListServersRequest(
                parent=f"teams/{TEAM}/projects/web", os=server_pb2.OPERATING_SYSTEM_LINUX
            )
        )
        assert [s.canonical_name for s in linux_only.servers] == ["web-linux"]
        staged = await bob.ListServers(
            server_service_pb2.ListServersRequest(parent=team_wide, selector="env=staging,role=web")
        )
        assert [s.canonical_name for s in staged.servers] == ["web-2"]
        message = await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            bob.ListServers(
                server_service_pb2.ListServersRequest(parent=team_wide, selector="env")
            ),
        )
        assert "key=value" in message
        first = await bob.ListServers(
            server_service_pb2.ListServersRequest(parent=team_wide, page_size=1)
        )
        message = await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            bob.ListServers(
                server_service_pb2.ListServersRequest(
                    parent=team_wide, selector="env=staging", page_token=first.next_page_token
                )
            ),
        )
        assert "different filters" in message

        # auth reads any server (with the agent key) as a platform service.
        as_auth = running.as_service(server_service_pb2_grpc.ServerServiceStub, "auth")
        read = await as_auth.GetServer(server_service_pb2.GetServerRequest(name=db.server.name))
        assert read.server.agent_public_key == db.server.agent_public_key


# --- admin changes ------------------------------------------------------------------------


async def test_update_keeps_names_in_sync_and_delete_stops_the_agent(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        enrolled = await enroll(
            running, await create_token(running, "web"), "web-1", alt_names=["old.example.com"]
        )
        name = enrolled.server.name
        alice = running.servers(await running.user_token("alice"))
        updated = await alice.UpdateServer(
            server_service_pb2.UpdateServerRequest(
                server=server_pb2.Server(
                    name=name,
                    alt_names=["New.Example.com"],
                    labels={"tier": "front"},
                    access_address="203.0.113.9",
                ),
                update_mask=FieldMask(paths=["alt_names", "labels", "access_address"]),
            )
        )
        assert list(updated.server.alt_names) == ["new.example.com"]
        assert dict(updated.server.labels) == {"tier": "front"}
        async with running.database.sessions() as session:
            names = set(await session.scalars(select(ServerName.name)))
        assert names == {"web-1", "new.example.com", "203.0.113.9"}
        await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            alice.UpdateServer(
                server_service_pb2.UpdateServerRequest(
                    server=server_pb2.Server(name=name, hostname="x"),
                    update_mask=FieldMask(paths=["hostname"]),
                )
            ),
        )
        bob = running.servers(await running.user_token("bob"))
        await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            bob.DeleteServer(server_service_pb2.DeleteServerRequest(name=name)),
        )
        agent = running.agents(await running.agent_token(name))
        await alice.DeleteServer(server_service_pb2.DeleteServerRequest(name=name))
        await expect_error(
            grpc.StatusCode.NOT_FOUND,
            alice.GetServer(server_service_pb2.GetServerRequest(name=name)),
        )
        message = await expect_error(
            grpc.StatusCode.NOT_FOUND,
            agent.Heartbeat(
                agent_service_pb2.HeartbeatRequest(
                    facts=agent_pb2.ServerFacts(
                        hostname="web-1", os=server_pb2.OPERATING_SYSTEM_WINDOWS
                    )
                )
            ),
        )
        assert "enroll it again" in message
        async with running.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(ServerName)) == 0
        assert [e.resource for e in running.trail.events_of("server.delete")] == [name]


# --- resolve ------------------------------------------------------------------------------


async def test_resolve_by_name_alias_or_id_and_explain_misses(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        web_token = await create_token(running, "web")
        db_token = await create_token(running, "db")
        web = await enroll(running, web_token, "web-1", alt_names=["www.example.com"])
        await enroll(running, web_token, "web-2")
        twin = await enroll(running, db_token, "web-1")
        bob = running.servers(await running.user_token("bob"))
        carol = running.servers(await running.user_token("carol"))
        team = f"teams/{TEAM}"

        by_alias = await bob.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=team, query="WWW.example.com")
        )
        assert by_alias.server.name == web.server.name
        by_id = await bob.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=team, query=twin.server.id.upper())
        )
        assert by_id.server.name == twin.server.name
        in_project = await bob.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=f"{team}/projects/db", query="web-1")
        )
        assert in_project.server.name == twin.server.name

        ambiguous = await bob.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=team, query="web-1")
        )
        assert not ambiguous.HasField("server")
        # Ordered by project, then canonical name.
        assert [c.name for c in ambiguous.candidates] == [twin.server.name, web.server.name]
        # auth resolves too, as a platform service that sees every project.
        as_auth = running.as_service(server_service_pb2_grpc.ServerServiceStub, "auth")
        by_auth = await as_auth.ResolveServer(
            server_service_pb2.ResolveServerRequest(parent=team, query=web.server.id)
        )
        assert by_auth.server.name == web.server.name

        missing = await expect_error(
            grpc.StatusCode.NOT_FOUND,
            bob.ResolveServer(server_service_pb2.ResolveServerRequest(parent=team, query="web-3")),
        )
        assert "did you mean" in missing and "web-1" in missing and "web-2" in missing
        # carol has no grants: she sees none of them, and gets no hints about them.
        hidden = await expect_error(
            grpc.StatusCode.NOT_FOUND,
            carol.ResolveServer(
                server_service_pb2.ResolveServerRequest(parent=team, query="web-2")
            ),
        )
        assert "did you mean" not in hidden


# --- the access decision ------------------------------------------------------------------


async def test_check_server_access_decides_account_role_and_hops(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        world = await build_world(running)
        web_token = await create_token(running, "web")
        jump = await enroll(
            running,
            web_token,
            "jump-1",
            os=server_pb2.OPERATING_SYSTEM_LINUX,
            host_keys=[host_key_line()],
            addresses=["10.0.0.5"],
            ssh_port=2222,
        )
        target = await enroll(
            running,
            web_token,
            "web-1",
            os=server_pb2.OPERATING_SYSTEM_LINUX,
            host_keys=[host_key_line()],
            bastion="jump-1",
        )
        db = await enroll(running, await create_token(running, "db"), "db-1")
        auth = running.as_service(server_service_pb2_grpc.ServerServiceStub, "auth")

        def check(server: str, user: str, account: str = "") -> Any:
            return auth.CheckServerAccess(
                server_service_pb2.CheckServerAccessRequest(
                    server=server, user=f"teams/{TEAM}/users/{user}", account_name=account
                )
            )

        allowed = await check(target.server.name, "bob")
        assert allowed.role == project_pb2.GRANT_ROLE_USER
        assert allowed.account.name == "bob" and allowed.account.uid == 60002
        assert list(allowed.account.supplementary_groups) == ["devs"]
        assert allowed.user.name == f"teams/{TEAM}/users/bob"
        assert allowed.project.name == f"teams/{TEAM}/projects/web"
        assert [(h.server, h.address, h.ssh_port) for h in allowed.bastion_hops] == [
            (jump.server.name, "10.0.0.5", 2222)
        ]

        no_grant = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED, check(target.server.name, "carol")
        )
        assert "no grant on project 'web'" in no_grant
        assert "sft admin project grant GROUP web" in no_grant
        await expect_error(grpc.StatusCode.FAILED_PRECONDITION, check(target.server.name, "dave"))
        await expect_error(grpc.StatusCode.NOT_FOUND, check(target.server.name, "nobody"))
        as_root = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED, check(target.server.name, "bob", "root")
        )
        assert "admin grant" in as_root

        # bob is an admin on db, which allows no shared admin accounts yet.
        admin = await check(db.server.name, "bob")
        assert admin.role == project_pb2.GRANT_ROLE_ADMIN and admin.account.admin
        not_listed = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED, check(db.server.name, "bob", "root")
        )
        assert "does not allow logging in as 'root'" in not_listed
        async with running.database.sessions.begin() as session:
            project = await session.get_one(Project, world.projects["db"].id)
            project.allowed_admin_account_names = ["root"]
            project.required_bastion = "edge"
            session.add(Bastion(team_id=world.team.id, name="edge", address="bastion.example.com"))
        as_root_ok = await check(db.server.name, "bob", "root")
        assert as_root_ok.account.name == "root" and as_root_ok.account.admin
        assert [(h.server, h.address, h.ssh_port) for h in as_root_ok.bastion_hops] == [
            ("", "bastion.example.com", 22)
        ]

        async with running.database.sessions.begin() as session:
            project = await session.get_one(Project, world.projects["db"].id)
            project.required_bastion = "gone"
        missing = await expect_error(
            grpc.StatusCode.FAILED_PRECONDITION, check(db.server.name, "bob")
        )
        assert "bastion 'gone'" in missing

        # Only the auth service may ask.
        bob = running.servers(await running.user_token("bob"))
        await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            bob.CheckServerAccess(
                server_service_pb2.CheckServerAccessRequest(
                    server=target.server.name, user=f"teams/{TEAM}/users/bob"
                )
            ),
        )
        async with running.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Server)) == 3
