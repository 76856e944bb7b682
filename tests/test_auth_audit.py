"""The tamper-evident audit trail through the real platform, on SQLite and PostgreSQL:
other services append with CreateAuditEvent, team admins list and verify, and direct
SQL tampering (an edited field, a deleted row, a forged row, a cut tail, a rewritten
history) is reported as the first break, naming the exact event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, insert, select, text

from runtime.database import Database
from services.auth import repository
from services.auth.audit_chain import EventContent, chain_event
from services.auth.audit_service import LocalAuditTrail
from services.auth.models import AuditEventRow, AuditHeadRow
from sft.auth.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from tests.support.platform import Platform, running_platform

TEAM = "acme"
PARENT = f"teams/{TEAM}"
Code = grpc.StatusCode
Kind = audit_pb2.AuditChainBreakKind


@pytest.fixture
async def platform(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform with team acme: alice (team admin) and bob (member)."""
    async with running_platform(database_url, tmp_path) as running:
        await running.create_team(TEAM, "alice", members=("bob",))
        yield running


def _event(n: int = 1, **fields: Any) -> audit_pb2.AuditEvent:
    values: dict[str, Any] = {
        "actor": f"{PARENT}/users/alice",
        "actor_kind": audit_pb2.ACTOR_KIND_USER,
        "action": "project.create",
        "resource": f"{PARENT}/projects/p{n}",
        "outcome": audit_pb2.AUDIT_OUTCOME_SUCCESS,
        "source_address": "127.0.0.1",
        "request_id": f"req-{n}",
        "details": {"n": str(n)},
    }
    values.update(fields)
    return audit_pb2.AuditEvent(**values)


def _appender(platform: Platform, service: str = "inventory") -> Any:
    return platform.as_service(audit_service_pb2_grpc.AuditServiceStub, service)


async def _append(platform: Platform, count: int, **fields: Any) -> list[audit_pb2.AuditEvent]:
    stub = _appender(platform)
    stored = []
    for n in range(1, count + 1):
        reply = await stub.CreateAuditEvent(
            audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=_event(n, **fields))
        )
        stored.append(reply.event)
    return stored


async def _admin(platform: Platform) -> audit_service_pb2_grpc.AuditServiceStub:
    token = await platform.login(TEAM, "alice")
    return platform.stub(audit_service_pb2_grpc.AuditServiceStub, token)


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _verify(
    audit: audit_service_pb2_grpc.AuditServiceStub, **fields: Any
) -> audit_service_pb2.VerifyAuditChainResponse:
    reply: audit_service_pb2.VerifyAuditChainResponse = await audit.VerifyAuditChain(
        audit_service_pb2.VerifyAuditChainRequest(parent=PARENT, **fields)
    )
    return reply


async def _sql(platform: Platform, statement: Any, **params: Any) -> None:
    async with platform.database.engine.begin() as conn:
        await conn.execute(statement if not isinstance(statement, str) else text(statement), params)


async def _event_count(database: Database) -> int:
    async with database.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditEventRow)) or 0)


async def test_the_trail_places_and_hashes_each_event_whatever_the_sender_says(
    platform: Platform,
) -> None:
    sent = _event(
        1,
        id="my-own-id",
        sequence=99,
        hash="f" * 64,
        previous_hash="e" * 64,
        name="teams/acme/auditEvents/x",
    )
    sent.time.FromDatetime(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    stub = _appender(platform)
    first = (
        await stub.CreateAuditEvent(
            audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=sent)
        )
    ).event
    second = (await _append(platform, 1))[0]
    assert first.id != "my-own-id" and uuid.UUID(first.id)
    assert first.name == f"{PARENT}/auditEvents/{first.id}"
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.previous_hash == "0" * 64
    assert second.previous_hash == first.hash != "f" * 64
    age = dt.datetime.now(dt.UTC) - first.time.ToDatetime(dt.UTC)
    assert abs(age) < dt.timedelta(minutes=1)
    assert first.actor == f"{PARENT}/users/alice" and first.details["n"] == "1"
    # The CA may append too; each team has its own chain.
    other = await _appender(platform, "ca").CreateAuditEvent(
        audit_service_pb2.CreateAuditEventRequest(
            parent="teams/other", event=_event(1, resource="teams/other/projects/p1")
        )
    )
    assert other.event.sequence == 1


async def test_only_the_inventory_and_the_ca_may_append(platform: Platform) -> None:
    request = audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=_event())
    admin_token = await platform.login(TEAM, "alice")
    for stub in (
        _appender(platform, "auth"),
        platform.stub(audit_service_pb2_grpc.AuditServiceStub),
        platform.stub(audit_service_pb2_grpc.AuditServiceStub, admin_token),
    ):
        error = await _refusal(stub.CreateAuditEvent(request))
        assert error.code() == Code.PERMISSION_DENIED
    # Nothing appended but the admin's device.enroll, and the admin's own refused call
    # (audited as rpc.create_audit_event, DENIED); the others name no team.
    assert await _event_count(platform.database) == 2


@pytest.mark.parametrize(
    ("case", "event", "expected"),
    [
        ("no-outcome", _event(outcome=audit_pb2.AUDIT_OUTCOME_UNSPECIFIED), "outcome"),
        ("no-actor-kind", _event(actor_kind=audit_pb2.ACTOR_KIND_UNSPECIFIED), "actor_kind"),
        ("bad-action", _event(action="Created a project"), "action"),
        ("token-in-details", _event(details={"token": "sfta1_" + "x" * 43}), "secret"),
        (
            "private-key",
            _event(details={"key": "-----BEGIN OPENSSH PRIVATE KEY-----"}),
            "secret",
        ),
        ("other-team", _event(resource="teams/other/projects/web"), "not in team"),
        ("too-many-details", _event(details={str(n): "v" for n in range(33)}), "at most 32"),
    ],
)
async def test_malformed_events_are_refused_and_nothing_is_appended(
    platform: Platform, case: str, event: audit_pb2.AuditEvent, expected: str
) -> None:
    error = await _refusal(
        _appender(platform).CreateAuditEvent(
            audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=event)
        )
    )
    assert error.code() == Code.INVALID_ARGUMENT
    assert expected in (error.details() or "")
    assert await _event_count(platform.database) == 0


async def test_listing_filters_and_pages_in_chain_order(platform: Platform) -> None:
    audit = await _admin(platform)  # appends alice's device.enroll as event 1
    stub = _appender(platform)
    cases = [
        _event(1, resource=f"{PARENT}/projects/web"),
        _event(2, resource=f"{PARENT}/projects/web/servers/s1", action="server.enroll"),
        _event(3, resource=f"{PARENT}/projects/web2", action="server.enroll"),
        _event(4, outcome=audit_pb2.AUDIT_OUTCOME_DENIED, actor=f"{PARENT}/users/bob"),
        _event(5, action="server.delete", resource=f"{PARENT}/projects/web/servers/s1"),
    ]
    for offset, event in enumerate(cases):
        platform.clock.offset = dt.timedelta(hours=offset)
        await stub.CreateAuditEvent(
            audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=event)
        )
    platform.clock.offset = dt.timedelta()

    async def listed(**fields: Any) -> list[str]:
        reply = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(parent=PARENT, **fields)
        )
        return [event.request_id for event in reply.events]

    assert await listed(action="server.enroll") == ["req-2", "req-3"]
    assert await listed(action="server.") == ["req-2", "req-3", "req-5"]
    assert await listed(resource=f"{PARENT}/projects/web") == ["req-1", "req-2", "req-5"]
    assert await listed(actor=f"{PARENT}/users/bob") == ["req-4"]
    assert await listed(outcome=audit_pb2.AUDIT_OUTCOME_DENIED) == ["req-4"]
    now = dt.datetime.now(dt.UTC)
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(now + dt.timedelta(minutes=30))
    end.FromDatetime(now + dt.timedelta(hours=2, minutes=30))
    assert await listed(start_time=start, end_time=end) == ["req-2", "req-3"]
    newest = await listed(newest_first=True)
    assert newest[:2] == ["req-5", "req-4"] and len(newest) == 6

    seen: list[int] = []
    token = ""
    while True:
        page = await audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(
                parent=PARENT, page_size=2, page_token=token, newest_first=True
            )
        )
        seen += [event.sequence for event in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == [6, 5, 4, 3, 2, 1]
    first = await audit.ListAuditEvents(
        audit_service_pb2.ListAuditEventsRequest(parent=PARENT, page_size=2)
    )
    error = await _refusal(
        audit.ListAuditEvents(
            audit_service_pb2.ListAuditEventsRequest(
                parent=PARENT, page_size=2, page_token=first.next_page_token, action="server."
            )
        )
    )
    assert error.code() == Code.INVALID_ARGUMENT and "different filters" in (error.details() or "")
    for bad in (
        audit_service_pb2.ListAuditEventsRequest(parent=PARENT, page_size=-1),
        audit_service_pb2.ListAuditEventsRequest(parent=PARENT, start_time=end, end_time=start),
        audit_service_pb2.ListAuditEventsRequest(parent=PARENT, page_token="%%"),  # noqa: S106
    ):
        assert (await _refusal(audit.ListAuditEvents(bad))).code() == Code.INVALID_ARGUMENT


async def test_only_team_admins_list_and_verify(platform: Platform) -> None:
    bob = platform.stub(audit_service_pb2_grpc.AuditServiceStub, await platform.login(TEAM, "bob"))
    for call in (
        bob.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest(parent=PARENT)),
        bob.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(parent=PARENT)),
    ):
        error = await _refusal(call)
        assert error.code() == Code.PERMISSION_DENIED
        assert "team admin" in (error.details() or "")
    anonymous = platform.stub(audit_service_pb2_grpc.AuditServiceStub)
    error = await _refusal(
        anonymous.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest(parent=PARENT))
    )
    assert error.code() == Code.UNAUTHENTICATED
    admin = await _admin(platform)
    error = await _refusal(
        admin.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest(parent="teams/other"))
    )
    assert error.code() == Code.PERMISSION_DENIED


async def test_an_intact_chain_verifies_and_hands_out_a_checkpoint(platform: Platform) -> None:
    audit = await _admin(platform)
    stored = await _append(platform, 4)
    result = await _verify(audit)
    assert result.ok and not result.HasField("first_break")
    assert (result.checked_events, result.last_sequence) == (5, 5)
    assert result.last_hash == stored[-1].hash
    later = await _verify(audit, checkpoint_sequence=5, checkpoint_hash=result.last_hash)
    assert later.ok and later.checked_events == 1
    ranged = await _verify(audit, start_sequence=2, end_sequence=3)
    assert ranged.ok and (ranged.checked_events, ranged.last_sequence) == (2, 3)
    for bad in (
        {"checkpoint_sequence": 2, "checkpoint_hash": "nope"},
        {"checkpoint_hash": "0" * 64},
        {"start_sequence": 4, "end_sequence": 2},
        {"start_sequence": 40},
        {"checkpoint_sequence": 4, "checkpoint_hash": "0" * 64, "end_sequence": 3},
    ):
        error = await _refusal(
            audit.VerifyAuditChain(audit_service_pb2.VerifyAuditChainRequest(parent=PARENT, **bad))
        )
        assert error.code() == Code.INVALID_ARGUMENT, bad


async def test_an_edited_field_is_reported_as_changed_at_that_event(platform: Platform) -> None:
    audit = await _admin(platform)
    stored = await _append(platform, 4)
    target = stored[1]  # sequence 3
    await _sql(
        platform,
        "UPDATE auth_audit_events SET outcome = 'denied' WHERE team = :team AND sequence = 3",
        team=TEAM,
    )
    result = await _verify(audit)
    assert not result.ok
    assert result.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_CHANGED
    assert result.first_break.sequence == 3
    assert result.first_break.event == target.name
    assert (result.checked_events, result.last_sequence) == (2, 2)


async def test_a_deleted_row_is_reported_as_removed(platform: Platform) -> None:
    audit = await _admin(platform)
    await _append(platform, 4)
    await _sql(
        platform, "DELETE FROM auth_audit_events WHERE team = :team AND sequence = 3", team=TEAM
    )
    result = await _verify(audit)
    assert result.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_REMOVED
    assert (result.first_break.sequence, result.first_break.event) == (3, "")
    # Verifying only after the gap still finds that the event before the range is gone.
    tail = await _verify(audit, start_sequence=4)
    assert tail.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_REMOVED
    assert tail.first_break.sequence == 3


async def test_a_cut_tail_is_reported_as_removed(platform: Platform) -> None:
    audit = await _admin(platform)
    await _append(platform, 4)
    await _sql(
        platform, "DELETE FROM auth_audit_events WHERE team = :team AND sequence = 5", team=TEAM
    )
    result = await _verify(audit)
    assert result.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_REMOVED
    assert (result.first_break.sequence, result.first_break.event) == (5, "")


async def test_a_forged_row_is_reported_as_inserted(platform: Platform) -> None:
    audit = await _admin(platform)
    stored = await _append(platform, 4)  # sequences 2..5
    # A well-formed, correctly hashed event that links back to event 3 (not 5).
    content = EventContent(
        id=str(uuid.uuid4()),
        time=dt.datetime.now(dt.UTC),
        actor=f"{PARENT}/users/alice",
        actor_kind="user",
        action="project.delete",
        resource=f"{PARENT}/projects/p2",
        outcome="success",
        source_address="127.0.0.1",
        request_id="forged",
        details={},
    )
    forged = chain_event(content, 6, stored[1].hash)
    await _sql(
        platform,
        insert(AuditEventRow).values(
            id=content.id,
            team=TEAM,
            sequence=6,
            time=content.time,
            actor=content.actor,
            actor_kind=content.actor_kind,
            action=content.action,
            resource=content.resource,
            outcome=content.outcome,
            source_address=content.source_address,
            request_id=content.request_id,
            details={},
            previous_hash=forged.previous_hash,
            hash=forged.hash,
        ),
    )
    result = await _verify(audit)
    assert result.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_INSERTED
    assert result.first_break.sequence == 6
    assert result.first_break.event == f"{PARENT}/auditEvents/{content.id}"
    assert (result.checked_events, result.last_sequence) == (5, 5)


async def test_a_rewritten_history_is_caught_only_with_a_checkpoint(platform: Platform) -> None:
    audit = await _admin(platform)
    await _append(platform, 4)
    checkpoint = await _verify(audit)
    # Rewrite every event (eve for alice) and re-chain them all, head included.
    async with platform.database.sessions.begin() as session:
        rows = list(
            await session.scalars(
                select(AuditEventRow).where(AuditEventRow.team == TEAM).order_by("sequence")
            )
        )
        previous = "0" * 64
        for row in rows:
            event = repository.chained_event(row)
            content = EventContent(**{**vars(event.content), "actor": f"{PARENT}/users/eve"})
            rewritten = chain_event(content, row.sequence, previous)
            row.actor, row.previous_hash, row.hash = content.actor, previous, rewritten.hash
            previous = rewritten.hash
        head = await session.get(AuditHeadRow, TEAM)
        assert head is not None
        head.last_hash = previous
    assert (await _verify(audit)).ok  # a consistent rewrite is invisible on its own
    caught = await _verify(
        audit,
        checkpoint_sequence=checkpoint.last_sequence,
        checkpoint_hash=checkpoint.last_hash,
    )
    assert caught.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_CHANGED
    assert caught.first_break.sequence == checkpoint.last_sequence
    # A checkpoint whose event was deleted reports it removed.
    await _sql(
        platform, "DELETE FROM auth_audit_events WHERE team = :team AND sequence = 5", team=TEAM
    )
    gone = await _verify(audit, checkpoint_sequence=5, checkpoint_hash=checkpoint.last_hash)
    assert gone.first_break.kind == Kind.AUDIT_CHAIN_BREAK_KIND_REMOVED
    assert gone.first_break.sequence == 5


async def test_concurrent_appends_from_several_replicas_take_contiguous_places(
    platform: Platform,
) -> None:
    # Two engines on one database stand for two auth replicas, each with its own pool.
    replicas = [Database.connect(platform.database.url) for _ in range(2)]
    try:
        trails = [LocalAuditTrail(database) for database in replicas]
        await asyncio.gather(
            *(trails[n % 2].append(TEAM, _event(n)) for n in range(1, 41)),
            *(
                _appender(platform).CreateAuditEvent(
                    audit_service_pb2.CreateAuditEventRequest(parent=PARENT, event=_event(n))
                )
                for n in range(41, 51)
            ),
        )
    finally:
        for database in replicas:
            await database.close()
    async with platform.database.sessions() as session:
        sequences = list(
            await session.scalars(
                select(AuditEventRow.sequence)
                .where(AuditEventRow.team == TEAM)
                .order_by(AuditEventRow.sequence)
            )
        )
    assert sequences == list(range(1, 51))
    result = await _verify(await _admin(platform))
    assert result.ok, result.first_break
    assert result.checked_events == 51


async def test_an_append_after_the_head_fell_behind_takes_the_next_free_place(
    platform: Platform,
) -> None:
    await _append(platform, 3)
    # The head says 1 while events 1 to 3 exist (e.g. restored from an older backup).
    await _sql(
        platform, "UPDATE auth_audit_heads SET last_sequence = 1 WHERE team = :team", team=TEAM
    )
    appended = await LocalAuditTrail(platform.database).append(TEAM, _event(4))
    assert appended.sequence == 4
    result = await _verify(await _admin(platform))
    assert result.ok, result.first_break
    assert result.checked_events == 5
