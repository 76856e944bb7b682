"""The agent-facing API through real gRPC on loopback, on SQLite and PostgreSQL: enrollment
with real OpenSSH host keys and certificates, refused tokens, idempotent re-enrollment,
heartbeats and renewal, account conflicts, and the WatchAccounts stream with its hub.

Agents call with real access tokens of kind "server" recorded in auth's table (what
TokenService issues for an agent key assertion); see tests/test_inventory_fleet.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from runtime.clock import timestamp
from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth import repository as auth_repository
from services.auth.access_tokens import hash_access_token, new_access_token
from services.inventory import accounts_watch, desired_accounts, server_keys, servers
from services.inventory.accounts_watch import AccountsHub
from services.inventory.models import (
    EnrollmentTokenRow,
    Grant,
    GrantRole,
    GroupMember,
    Project,
    Server,
)
from sft.auth.v1 import audit_pb2
from sft.inventory.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    enrollment_token_service_pb2,
    enrollment_token_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    project_pb2,
    project_service_pb2,
    project_service_pb2_grpc,
    server_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
    user_service_pb2,
    user_service_pb2_grpc,
)
from tests.support.fleet import (
    TEAM,
    Fleet,
    World,
    agent_key_line,
    build_world,
    create_token,
    enroll,
    expect_error,
    host_key_line,
    running_fleet,
)
from tests.support.platform import running_platform
from tests.support.real_software import require_program

LINUX = server_pb2.OPERATING_SYSTEM_LINUX


async def run(*argv: str) -> str:
    """Run a program (argument list, no shell) and return its stdout; fail on error."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def openssh_host_key(directory: Path, kind: str = "ed25519") -> Path:
    """Make a host key with the real ssh-keygen; return the private key's path."""
    ssh_keygen = require_program("ssh-keygen", "openssh-client")
    path = directory / f"ssh_host_{kind}_key"
    await run(ssh_keygen, "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path))
    return path


def broker_csr() -> str:
    """Return a PEM CSR for a fresh broker key."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def linux_facts(hostname: str, **facts: Any) -> agent_pb2.ServerFacts:
    """Return Linux facts for `hostname`."""
    return agent_pb2.ServerFacts(hostname=hostname, os=LINUX, **facts)


# --- enrollment ---------------------------------------------------------------------------


async def test_enrollment_certifies_openssh_host_keys_with_every_name(
    database_url: str, tmp_path: Path
) -> None:
    ssh_keygen = require_program("ssh-keygen", "openssh-client")
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        ed25519_key = await openssh_host_key(tmp_path, "ed25519")
        ecdsa_key = await openssh_host_key(tmp_path, "ecdsa")
        host_keys = [
            (await asyncio.to_thread(Path(f"{key}.pub").read_text)).strip()
            for key in (ed25519_key, ecdsa_key)
        ]
        _, agent_key = agent_key_line()
        reply = await running.agents().EnrollServer(
            agent_service_pb2.EnrollServerRequest(
                enrollment_token=await create_token(running, "web"),
                agent_public_key=agent_key,
                host_public_keys=host_keys,
                broker_csr_pem=broker_csr(),
                facts=linux_facts(
                    "Web-1",
                    canonical_name="web-1.prod",
                    alt_names=["www.example.com"],
                    addresses=["10.0.0.7", "2001:db8::7"],
                    access_address="203.0.113.7",
                    broker_port=4421,
                    agent_version="0.1.0",
                    labels={"env": "prod"},
                ),
            )
        )
        server = reply.server
        assert server.name == f"teams/{TEAM}/projects/web/servers/{server.id}"
        assert server.hostname == "web-1" and server.canonical_name == "web-1.prod"
        assert reply.credential.subject == server.name
        assert (
            reply.credential.key_fingerprint == server_keys.parse_agent_key(agent_key).fingerprint
        )
        assert reply.trust_anchors.trusted_user_ca_keys.startswith("ssh-ed25519 ")
        assert "BEGIN CERTIFICATE" in reply.trust_anchors.x509_ca_bundle_pem

        expected = [
            "web-1.prod",
            "web-1",
            "www.example.com",
            "203.0.113.7",
            "10.0.0.7",
            "2001:db8::7",
        ]
        assert len(reply.host_certificates) == 2
        for key, certificate in zip((ed25519_key, ecdsa_key), reply.host_certificates, strict=True):
            assert list(certificate.principals) == expected
            cert_file = Path(f"{key}-cert.pub")
            await asyncio.to_thread(cert_file.write_text, certificate.certificate + "\n")
            shown = await run(ssh_keygen, "-L", "-f", str(cert_file))
            assert "host certificate" in shown
            principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
            assert principals == expected
            fingerprint = (await run(ssh_keygen, "-l", "-f", f"{key}.pub")).split()[1]
            assert certificate.host_key_fingerprint == fingerprint

        broker = x509.load_pem_x509_certificate(reply.broker_certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(reply.trust_anchors.x509_ca_bundle_pem.encode())
        broker.verify_directly_issued_by(ca)
        names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"sft://{TEAM}/web/servers/{server.id}" in names.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        assert "web-1.prod" in names.get_values_for_type(x509.DNSName)

        enrolled = running.trail.events_of("server.enroll")
        assert [(e.resource, e.outcome) for e in enrolled] == [
            (server.name, audit_pb2.AUDIT_OUTCOME_SUCCESS)
        ]


async def test_bad_enrollment_input_is_refused_with_what_to_fix(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        token = await create_token(running, "web")
        agents = running.agents()

        async def refused(**fields: Any) -> str:
            request: dict[str, Any] = {
                "enrollment_token": token,
                "agent_public_key": agent_key_line()[1],
                "host_public_keys": [host_key_line()],
                "facts": linux_facts("web-1"),
            }
            request.update(fields)
            return await expect_error(
                grpc.StatusCode.INVALID_ARGUMENT,
                agents.EnrollServer(agent_service_pb2.EnrollServerRequest(**request)),
            )

        # A weak key on purpose: the refusal is what is tested.
        weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        weak = weak_key.public_key()
        weak_line = weak.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        assert "1024-bit RSA" in await refused(host_public_keys=[weak_line])
        assert "at least one SSH host key" in await refused(host_public_keys=[])
        assert "Ed25519" in await refused(agent_public_key=host_key_line().replace("ed", "xx"))
        assert "facts.hostname is required" in await refused(facts=linux_facts(""))
        assert "facts.alt_names entry" in await refused(
            facts=linux_facts("web-1", alt_names=["bad name"])
        )
        assert "label" in await refused(facts=linux_facts("web-1", labels={"env": "a,b"}))
        assert "facts.os is required" in await refused(
            facts=agent_pb2.ServerFacts(hostname="web-1")
        )
        assert "not an IP address" in await refused(
            facts=linux_facts("web-1", addresses=["10.0.0.300"])
        )
        async with running.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Server)) == 0
            assert await session.scalar(select(EnrollmentTokenRow.uses)) == 0


async def test_refused_tokens_each_say_why_and_write_nothing(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        alice = running.tokens(await running.user_token("alice"))
        revoked = await alice.CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(
                parent=f"teams/{TEAM}/projects/web"
            )
        )
        await alice.RevokeEnrollmentToken(
            enrollment_token_service_pb2.RevokeEnrollmentTokenRequest(
                name=revoked.enrollment_token.name
            )
        )
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        expiring = await create_token(running, "web", expire_time=timestamp(soon))
        once = await create_token(running, "web", max_uses=1)
        await enroll(running, once, "first")

        async def refusal(token: str) -> str:
            return await expect_error(grpc.StatusCode.UNAUTHENTICATED, enroll(running, token, "x"))

        messages = {
            "garbage": await refusal("hello"),
            "truncated": await refusal(once[:-10]),
            "unknown": await refusal(
                PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, running.pin).encode()
            ),
            "foreign": await refusal(
                PinnedCode.generate(CodeKind.SERVER_ENROLLMENT, b"\x01" * 32).encode()
            ),
            "revoked": await refusal(revoked.token),
            "used up": await refusal(once),
        }
        running.clock.offset = dt.timedelta(hours=3)
        messages["expired"] = await refusal(expiring)
        running.clock.offset = dt.timedelta()

        assert "not an sft enrollment token" in messages["garbage"]
        assert "truncated" in messages["truncated"] or "damaged" in messages["truncated"]
        assert "not known here" in messages["unknown"]
        assert "another platform" in messages["foreign"]
        assert "was revoked" in messages["revoked"]
        assert "used up" in messages["used up"]
        assert "expired 2h ago" in messages["expired"]
        assert len(set(messages.values())) == len(messages)
        for why in ("revoked", "used up", "expired"):
            assert "sft admin token create --project web" in messages[why]

        async with running.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Server)) == 1
            uses = await session.scalar(
                select(func.sum(EnrollmentTokenRow.uses)).select_from(EnrollmentTokenRow)
            )
        assert uses == 1
        denied = [
            e
            for e in running.trail.events_of("server.enroll")
            if e.outcome == audit_pb2.AUDIT_OUTCOME_DENIED
        ]
        assert len(denied) == 3
        assert {e.actor for e in denied} == {"anonymous"}
        assert revoked.enrollment_token.name in {e.resource for e in denied}


async def test_re_enrolling_the_same_agent_key_returns_the_same_server(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        once = await create_token(running, "web", max_uses=1)
        _, agent_key = agent_key_line()
        host_key = host_key_line()
        first = await enroll(
            running, once, "web-1", agent_key=agent_key, host_keys=[host_key], os=LINUX
        )
        # A restarted agent, or a retry after the CA failed: the used-up token still works
        # for the key it enrolled, and updates the facts.
        again = await enroll(
            running,
            once,
            "web-1",
            agent_key=agent_key,
            host_keys=[host_key],
            os=LINUX,
            alt_names=["www.example.com"],
        )
        assert again.server.id == first.server.id
        assert list(again.server.alt_names) == ["www.example.com"]
        assert len(again.host_certificates) == 1
        async with running.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Server)) == 1
            assert await session.scalar(select(EnrollmentTokenRow.uses)) == 1
        message = await expect_error(
            grpc.StatusCode.ALREADY_EXISTS,
            enroll(running, await create_token(running, "db"), "web-1", agent_key=agent_key),
        )
        assert "project 'web'" in message
        other_token = await expect_error(
            grpc.StatusCode.ALREADY_EXISTS,
            enroll(running, await create_token(running, "web"), "web-1", agent_key=agent_key),
        )
        assert "another enrollment token" in other_token


# --- heartbeat, renewal, conflicts --------------------------------------------------------


async def test_heartbeat_renewal_and_conflict_reports(database_url: str, tmp_path: Path) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        host_key = host_key_line()
        enrolled = await enroll(
            running,
            await create_token(running, "web"),
            "web-1",
            host_keys=[host_key],
            os=LINUX,
            addresses=["10.0.0.7"],
        )
        name = enrolled.server.name
        agent = running.agents(await running.agent_token(name))
        now = dt.datetime.now(dt.UTC)

        async def heartbeat(
            expires: dt.datetime | None, **facts: Any
        ) -> agent_service_pb2.HeartbeatResponse:
            status = agent_pb2.AgentStatus(health=agent_pb2.AGENT_HEALTH_OK)
            if expires is not None:
                status.certificates_expire_time.CopyFrom(timestamp(expires))
            reply: agent_service_pb2.HeartbeatResponse = await agent.Heartbeat(
                agent_service_pb2.HeartbeatRequest(
                    facts=linux_facts("web-1", **facts), status=status
                )
            )
            return reply

        fresh = await heartbeat(now + dt.timedelta(days=6), addresses=["10.0.0.7"])
        assert not fresh.renew_host_certificates
        assert fresh.next_heartbeat_seconds == 60
        assert abs(fresh.server_time.ToDatetime(dt.UTC) - now) < dt.timedelta(minutes=1)
        assert fresh.trust_anchors == enrolled.trust_anchors
        assert (
            await heartbeat(now + dt.timedelta(days=1), addresses=["10.0.0.7"])
        ).renew_host_certificates
        assert (await heartbeat(None, addresses=["10.0.0.7"])).renew_host_certificates
        moved = await heartbeat(
            now + dt.timedelta(days=6), addresses=["10.0.0.8"], agent_version="0.2.0"
        )
        assert moved.renew_host_certificates
        got = await running.servers(await running.user_token("alice")).GetServer(
            server_service_pb2.GetServerRequest(name=name)
        )
        assert list(got.server.addresses) == ["10.0.0.8"] and got.server.agent_version == "0.2.0"
        assert got.server.HasField("last_seen_time")

        renewed = await agent.RenewHostCertificates(
            agent_service_pb2.RenewHostCertificatesRequest(
                host_public_keys=[host_key], broker_csr_pem=broker_csr()
            )
        )
        assert "10.0.0.8" in renewed.host_certificates[0].principals
        assert "BEGIN CERTIFICATE" in renewed.broker_certificate_pem
        stranger = await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            agent.RenewHostCertificates(
                agent_service_pb2.RenewHostCertificatesRequest(host_public_keys=[host_key_line()])
            ),
        )
        assert "not enrolled" in stranger

        await agent.ReportAccountConflict(
            agent_service_pb2.ReportAccountConflictRequest(
                account_name="bob",
                kind=agent_pb2.ACCOUNT_CONFLICT_KIND_UID_IN_USE,
                detail='uid 60002 belongs to local user "backup"',
            )
        )
        [conflict] = running.trail.events_of("account.conflict")
        assert conflict.outcome == audit_pb2.AUDIT_OUTCOME_FAILED
        assert conflict.resource == name
        assert dict(conflict.details) == {
            "account_name": "bob",
            "kind": "uid_in_use",
            "detail": 'uid 60002 belongs to local user "backup"',
        }
        await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            agent.ReportAccountConflict(
                agent_service_pb2.ReportAccountConflictRequest(account_name="bob")
            ),
        )

        # Only agents, with a token: a person's token is refused, no token is unknown.
        person = running.agents(await running.user_token("alice"))
        await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            person.Heartbeat(agent_service_pb2.HeartbeatRequest(facts=linux_facts("web-1"))),
        )
        await expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            running.agents().Heartbeat(
                agent_service_pb2.HeartbeatRequest(facts=linux_facts("web-1"))
            ),
        )


# --- WatchAccounts ------------------------------------------------------------------------


async def change(running: Fleet, world: World, *rows: Any, notify: bool = True) -> None:
    """Add `rows` and bump the team's revision, as the directory servicers do."""
    async with running.database.sessions.begin() as session:
        session.add_all(rows)
        await servers.bump_accounts_revision(session, world.team.id)
    if notify:
        running.hub.notify(world.team.id)


def accounts(message: agent_service_pb2.WatchAccountsResponse) -> list[tuple[str, bool, list[str]]]:
    """Return (name, admin, supplementary groups) of each account in a stream message."""
    return [(a.name, a.admin, list(a.supplementary_groups)) for a in message.accounts]


async def test_watch_accounts_sends_the_list_and_every_change(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path, poll_interval=0.2) as running:
        world = await build_world(running)
        enrolled = await enroll(running, await create_token(running, "web"), "web-1")
        name = enrolled.server.name
        stream = running.agents(await running.agent_token(name)).WatchAccounts(
            agent_service_pb2.WatchAccountsRequest()
        )

        async def next_message() -> agent_service_pb2.WatchAccountsResponse:
            message = await asyncio.wait_for(stream.read(), timeout=10)
            assert isinstance(message, agent_service_pb2.WatchAccountsResponse)
            return message

        first = await next_message()
        # dave is in devs too, but disabled.
        assert accounts(first) == [("bob", False, ["devs"])]
        assert first.create_missing
        [bob] = first.accounts
        assert (bob.user, bob.uid, bob.gid, bob.primary_group) == (
            f"teams/{TEAM}/users/bob",
            60002,
            63002,
            "bob",
        )
        assert (bob.windows_name, bob.full_name) == ("bob", "Bob")

        await change(
            running,
            world,
            GroupMember(group_id=world.groups["devs"].id, user_id=world.users["carol"].id),
        )
        second = await next_message()
        assert accounts(second) == [("bob", False, ["devs"]), ("carol", False, ["devs"])]
        assert second.revision > first.revision

        # A change on another replica: no notify here, the team's poller sees it.
        await change(
            running,
            world,
            Grant(
                project_id=world.projects["web"].id,
                group_id=world.groups["dbas"].id,
                role=GrantRole.ADMIN,
            ),
            notify=False,
        )
        third = await next_message()
        assert accounts(third) == [("bob", True, ["dbas", "devs"]), ("carol", False, ["devs"])]

        # A bump that changes nothing for this project sends nothing: the next message
        # is the next real change, at the latest revision.
        await change(running, world)
        await asyncio.sleep(0.5)  # let the hub act on it (it must send nothing)
        async with running.database.sessions.begin() as session:
            project = await session.get_one(Project, world.projects["web"].id)
            project.create_server_users = False
            await servers.bump_accounts_revision(session, world.team.id)
        running.hub.notify(world.team.id)
        fourth = await next_message()
        assert not fourth.create_missing
        assert fourth.revision == third.revision + 2

        await running.servers(await running.user_token("alice")).DeleteServer(
            server_service_pb2.DeleteServerRequest(name=name)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stream.read(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        await expect_error(
            grpc.StatusCode.NOT_FOUND,
            running.agents(await running.agent_token(name))
            .WatchAccounts(agent_service_pb2.WatchAccountsRequest())
            .read(),
        )


async def wait_until_idle(hub: AccountsHub) -> accounts_watch.HubStats:
    """Return the hub's stats once it holds no watchers or tasks (or after 5 seconds)."""
    for _ in range(100):
        stats = hub.stats()
        if (stats.teams, stats.watchers, stats.tasks) == (0, 0, 0):
            return stats
        await asyncio.sleep(0.05)
    return hub.stats()


async def test_cancelled_streams_leave_no_watchers_or_tasks(
    database_url: str, tmp_path: Path
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        await build_world(running)
        token = await create_token(running, "web")
        servers = [(await enroll(running, token, f"web-{i}")).server.name for i in range(3)]
        agent_tokens = [await running.agent_token(name) for name in servers]
        streams = [
            running.agents(agent_tokens[i % 3]).WatchAccounts(
                agent_service_pb2.WatchAccountsRequest()
            )
            for i in range(30)
        ]
        firsts = await asyncio.gather(*(stream.read() for stream in streams))
        assert all(isinstance(m, agent_service_pb2.WatchAccountsResponse) for m in firsts)
        stats = running.hub.stats()
        assert (stats.teams, stats.watchers, stats.tasks) == (1, 30, 1)
        assert stats.cached_lists == 1  # one list for the project, shared by all 30
        for stream in streams:
            stream.cancel()
        idle = await wait_until_idle(running.hub)
        assert (idle.teams, idle.watchers, idle.tasks) == (0, 0, 0)

        # Closing the hub (platform shutdown) ends open streams cleanly, with OK.
        stream = running.agents(agent_tokens[0]).WatchAccounts(
            agent_service_pb2.WatchAccountsRequest()
        )
        await stream.read()
        await running.hub.close()
        assert await asyncio.wait_for(stream.read(), timeout=10) is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        assert (await wait_until_idle(running.hub)).tasks == 0


async def test_hub_computes_each_project_list_once_and_cleans_up(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_fleet(database_url, tmp_path) as running:
        world = await build_world(running)
        hub = AccountsHub(running.database, poll_interval=0.05)
        computed: list[tuple[str, int]] = []
        real = desired_accounts.desired_accounts

        async def counting(session: Any, project_id: str, revision: int) -> Any:
            computed.append((project_id, revision))
            return await real(session, project_id, revision)

        monkeypatch.setattr(desired_accounts, "desired_accounts", counting)
        web = world.projects["web"].id
        lists = await asyncio.gather(*(hub.desired(web, 1) for _ in range(200)))
        assert computed == [(web, 1)]
        assert len({id(item) for item in lists}) == 1

        team = world.team.id
        enrolled = await enroll(running, await create_token(running, "web"), "web-1")
        woken: list[int | None] = []

        async def watcher(server_id: str) -> None:
            async with hub.watch(team, server_id, 1) as watch:
                woken.append(await watch.changed(1))

        tasks = [asyncio.create_task(watcher(enrolled.server.id)) for _ in range(200)]
        await asyncio.sleep(0.1)
        assert hub.stats().watchers == 200
        for task in tasks[:100]:
            task.cancel()
        await asyncio.gather(*tasks[:100], return_exceptions=True)
        async with running.database.sessions.begin() as session:
            await servers.bump_accounts_revision(session, team)
        # No notify: the poller (one per team) finds the new revision.
        await asyncio.wait_for(asyncio.gather(*tasks[100:]), timeout=5)
        assert woken == [2] * 100
        assert (await wait_until_idle(hub)).tasks == 0
        await hub.close()


# --- the production wiring ----------------------------------------------------------------


async def test_directory_changes_reach_the_account_stream_on_the_real_platform(
    database_url: str, tmp_path: Path
) -> None:
    """Through services.inventory.app's wiring: directory servicers notify the same hub."""
    async with running_platform(database_url, tmp_path) as platform:
        await platform.create_team(TEAM, "alice")
        alice = await platform.login(TEAM, "alice")
        team = f"teams/{TEAM}"
        projects = platform.stub(project_service_pb2_grpc.ProjectServiceStub, alice)
        groups = platform.stub(group_service_pb2_grpc.GroupServiceStub, alice)
        users = platform.stub(user_service_pb2_grpc.UserServiceStub, alice)
        await projects.CreateProject(
            project_service_pb2.CreateProjectRequest(parent=team, project_id="web")
        )
        await users.CreateUser(user_service_pb2.CreateUserRequest(parent=team, user_id="bob"))
        await groups.CreateGroup(group_service_pb2.CreateGroupRequest(parent=team, group_id="devs"))
        await groups.AddGroupMember(
            group_service_pb2.AddGroupMemberRequest(
                group=f"{team}/groups/devs", user=f"{team}/users/bob"
            )
        )
        await projects.CreateGrant(
            project_service_pb2.CreateGrantRequest(
                parent=f"{team}/projects/web",
                grant=project_pb2.ProjectGrant(
                    group=f"{team}/groups/devs", role=project_pb2.GRANT_ROLE_USER
                ),
            )
        )
        created = await platform.stub(
            enrollment_token_service_pb2_grpc.EnrollmentTokenServiceStub, alice
        ).CreateEnrollmentToken(
            enrollment_token_service_pb2.CreateEnrollmentTokenRequest(parent=f"{team}/projects/web")
        )
        enrolled = await platform.stub(agent_service_pb2_grpc.AgentServiceStub).EnrollServer(
            agent_service_pb2.EnrollServerRequest(
                enrollment_token=created.token,
                agent_public_key=agent_key_line()[1],
                host_public_keys=[host_key_line()],
                facts=linux_facts("web-1"),
            )
        )
        agent_token = await mint_agent_token(platform.database, enrolled.server.name)
        stream = platform.stub(agent_service_pb2_grpc.AgentServiceStub, agent_token).WatchAccounts(
            agent_service_pb2.WatchAccountsRequest()
        )
        first = await asyncio.wait_for(stream.read(), timeout=10)
        assert isinstance(first, agent_service_pb2.WatchAccountsResponse)
        assert [a.name for a in first.accounts] == ["bob"]
        await groups.AddGroupMember(
            group_service_pb2.AddGroupMemberRequest(
                group=f"{team}/groups/devs", user=f"{team}/users/alice"
            )
        )
        second = await asyncio.wait_for(stream.read(), timeout=10)
        assert isinstance(second, agent_service_pb2.WatchAccountsResponse)
        assert [a.name for a in second.accounts] == ["alice", "bob"]
        stream.cancel()

        access = await platform.as_service(
            server_service_pb2_grpc.ServerServiceStub, "auth"
        ).CheckServerAccess(
            server_service_pb2.CheckServerAccessRequest(
                server=enrolled.server.name, user=f"{team}/users/bob"
            )
        )
        assert access.account.name == "bob" and access.role == project_pb2.GRANT_ROLE_USER


async def mint_agent_token(database: Any, server_name: str) -> str:
    """Record an agent access token in auth's table (what TokenService issues for sftd)."""
    token = new_access_token()
    token_hash = hash_access_token(token)
    assert token_hash is not None
    now = dt.datetime.now(dt.UTC)
    async with database.sessions.begin() as session:
        await auth_repository.create_access_token(
            session,
            token_hash=token_hash,
            kind="server",
            team=TEAM,
            principal=server_name,
            device_id=None,
            now=now,
            expire_time=now + dt.timedelta(hours=1),
        )
    return token
