"""The audit trail's servicer and auth's own writer to it.

`LocalAuditTrail` appends auth's events, inside the transaction of the change they
record where there is one; `AuditServicer` takes other services' events
(CreateAuditEvent) and lets team admins list and verify a team's chain. The chain
itself (encoding, hashing, verification) is services.auth.audit_chain.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.authorization import Need, RoleResolver, requires
from runtime.cert_uris import split_team_name
from runtime.clock import Clock, timestamp, utc_now
from runtime.database import Database
from runtime.errors import InvalidInput, Unavailable
from runtime.page_tokens import page_limit
from services.auth import repository
from services.auth.audit_chain import (
    GENESIS_HASH,
    Anchor,
    BreakKind,
    ChainVerifier,
    EventContent,
    is_chain_hash,
)
from services.auth.models import AuditEventRow
from sft.auth.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc

__all__ = ["AuditServicer", "LocalAuditTrail", "audit_event_message"]

Context = Any  # grpc.aio.ServicerContext; grpc ships no type information

log = structlog.get_logger("sft.audit")

#: Appends retried after a sequence clash (the head lock makes one rare; see repository).
APPEND_ATTEMPTS = 3
#: Events read per query while verifying.
VERIFY_BATCH = 500

ACTOR_KINDS = {
    audit_pb2.ACTOR_KIND_USER: "user",
    audit_pb2.ACTOR_KIND_SERVICE_USER: "service_user",
    audit_pb2.ACTOR_KIND_SERVER: "server",
    audit_pb2.ACTOR_KIND_PLATFORM: "platform",
    audit_pb2.ACTOR_KIND_ANONYMOUS: "anonymous",
}
OUTCOMES = {
    audit_pb2.AUDIT_OUTCOME_SUCCESS: "success",
    audit_pb2.AUDIT_OUTCOME_DENIED: "denied",
    audit_pb2.AUDIT_OUTCOME_FAILED: "failed",
}
_ACTOR_KIND_VALUES = {text: value for value, text in ACTOR_KINDS.items()}
_OUTCOME_VALUES = {text: value for value, text in OUTCOMES.items()}
_BREAK_KINDS = {
    BreakKind.CHANGED: audit_pb2.AUDIT_CHAIN_BREAK_KIND_CHANGED,
    BreakKind.REMOVED: audit_pb2.AUDIT_CHAIN_BREAK_KIND_REMOVED,
    BreakKind.INSERTED: audit_pb2.AUDIT_CHAIN_BREAK_KIND_INSERTED,
}


def audit_event_message(row: AuditEventRow) -> audit_pb2.AuditEvent:
    """Return the protobuf view of a stored event."""
    return audit_pb2.AuditEvent(
        name=f"teams/{row.team}/auditEvents/{row.id}",
        id=row.id,
        sequence=row.sequence,
        time=timestamp(row.time),
        actor=row.actor,
        actor_kind=_ACTOR_KIND_VALUES.get(row.actor_kind, audit_pb2.ACTOR_KIND_UNSPECIFIED),
        action=row.action,
        resource=row.resource,
        outcome=_OUTCOME_VALUES.get(row.outcome, audit_pb2.AUDIT_OUTCOME_UNSPECIFIED),
        source_address=row.source_address,
        request_id=row.request_id,
        details=dict(row.details or {}),
        previous_hash=row.previous_hash,
        hash=row.hash,
    )


class LocalAuditTrail:
    """Appends events to auth's own tables (the AuditTrail of the auth service)."""

    def __init__(self, database: Database, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    def content(self, event: audit_pb2.AuditEvent) -> EventContent:
        """Return the chain content of `event`, with a fresh id and the current time.

        Whatever the sender put in id, sequence, time or the hashes is ignored: only the
        trail decides an event's place and time.
        """
        actor_kind = ACTOR_KINDS.get(event.actor_kind)
        outcome = OUTCOMES.get(event.outcome)
        if actor_kind is None:
            raise InvalidInput("the event's actor_kind must be set (USER, SERVER, PLATFORM, …)")
        if outcome is None:
            raise InvalidInput("the event's outcome must be set (SUCCESS, DENIED or FAILED)")
        content = EventContent(
            id=str(uuid.uuid4()),
            time=self._clock(),
            actor=event.actor,
            actor_kind=actor_kind,
            action=event.action,
            resource=event.resource,
            outcome=outcome,
            source_address=event.source_address,
            request_id=event.request_id,
            details=dict(event.details),
        )
        content.check()
        return content

    async def append_in(
        self, session: AsyncSession, team: str, event: audit_pb2.AuditEvent
    ) -> AuditEventRow:
        """Append `event` in the caller's transaction: it commits with the change, or not."""
        return await repository.append_audit_event(session, team, self.content(event))

    async def append(self, team: str, event: audit_pb2.AuditEvent) -> AuditEventRow:
        """Append `event` in a transaction of its own, retrying a sequence clash."""
        content = self.content(event)
        for attempt in range(APPEND_ATTEMPTS):
            try:
                async with self._database.sessions.begin() as session:
                    return await repository.append_audit_event(
                        session, team, content, resync=attempt > 0
                    )
            except IntegrityError:
                log.warning("audit append clashed; retrying", team=team, attempt=attempt + 1)
        raise Unavailable(
            f"the audit trail of team {team!r} is busy or its head is out of step; try again"
        )

    async def record(self, team: str, event: audit_pb2.AuditEvent) -> None:
        """Append `event` in a transaction of its own (the AuditTrail protocol)."""
        await self.append(team, event)


def _time(stamp: Any) -> dt.datetime:
    return stamp.ToDatetime(dt.UTC)  # type: ignore[no-any-return]


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """Serves sft.auth.v1.AuditService."""

    def __init__(self, database: Database, roles: RoleResolver, trail: LocalAuditTrail) -> None:
        self._database = database
        self.roles = roles
        self._trail = trail

    @requires(Need.PLATFORM_SERVICE, services=("inventory", "ca"))
    async def CreateAuditEvent(
        self, request: audit_service_pb2.CreateAuditEventRequest, context: Context
    ) -> audit_service_pb2.CreateAuditEventResponse:
        """Append another service's event to its team's chain."""
        team = split_team_name(request.parent)
        if not request.HasField("event"):
            raise InvalidInput("event is required")
        resource = request.event.resource
        if resource.startswith("teams/") and resource.split("/")[1] != team:
            raise InvalidInput(
                f"the event's resource {resource[:200]!r} is not in team {team!r}; send it to "
                "its own team's trail"
            )
        row = await self._trail.append(team, request.event)
        return audit_service_pb2.CreateAuditEventResponse(event=audit_event_message(row))

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def ListAuditEvents(
        self, request: audit_service_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_service_pb2.ListAuditEventsResponse:
        """List a team's events, oldest first unless newest_first."""
        team = split_team_name(request.parent)
        page_limit(request.page_size)
        start = _time(request.start_time) if request.HasField("start_time") else None
        end = _time(request.end_time) if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            raise InvalidInput("end_time must be after start_time")
        query = repository.AuditQuery(
            team=team,
            actor=request.actor,
            action=request.action,
            resource=request.resource,
            outcome=OUTCOMES.get(request.outcome, ""),
            start_time=start,
            end_time=end,
            newest_first=request.newest_first,
        )
        async with self._database.sessions() as session:
            rows, token = await repository.list_audit_events(
                session, query, page_size=request.page_size, page_token=request.page_token
            )
        return audit_service_pb2.ListAuditEventsResponse(
            events=[audit_event_message(row) for row in rows], next_page_token=token
        )

    @requires(Need.TEAM_ADMIN, resource="parent")
    async def VerifyAuditChain(
        self, request: audit_service_pb2.VerifyAuditChainRequest, context: Context
    ) -> audit_service_pb2.VerifyAuditChainResponse:
        """Recompute the team's chain over the range asked and report the first break."""
        team = split_team_name(request.parent)
        checkpoint = _checkpoint(request)
        if request.end_sequence and request.start_sequence > request.end_sequence:
            raise InvalidInput("start_sequence must not be after end_sequence")
        if checkpoint and request.end_sequence and checkpoint.sequence > request.end_sequence:
            raise InvalidInput("checkpoint_sequence must not be after end_sequence")
        async with self._database.sessions() as session:
            head, highest = await repository.audit_chain_bounds(session, team)
            latest = max(head.sequence if head else 0, highest)
            start = request.start_sequence or (checkpoint.sequence if checkpoint else 1)
            end = request.end_sequence or latest
            anchored = checkpoint is not None and start == checkpoint.sequence
            if start > max(latest, 1) and not anchored:
                raise InvalidInput(
                    f"start_sequence {start} is after the team's last event, {latest}"
                )
            verifier, previous_missing = await self._verifier(
                session, team, start, checkpoint, anchored, head, request.end_sequence
            )
            if previous_missing:
                verifier.predecessor_missing()
            if checkpoint is not None and checkpoint.sequence < start:
                found = await repository.audit_event_at(session, team, checkpoint.sequence)
                verifier.observe_checkpoint(
                    repository.chained_event(found) if found is not None else None
                )
            after: tuple[int, str] | None = None
            while not verifier.broken:
                rows = await repository.audit_events_from(
                    session, team, after=after, start=start, end=end, limit=VERIFY_BATCH
                )
                for row in rows:
                    verifier.feed(repository.chained_event(row))
                if len(rows) < VERIFY_BATCH:
                    break
                after = (rows[-1].sequence, rows[-1].id)
        result = verifier.finish()
        response = audit_service_pb2.VerifyAuditChainResponse(
            ok=result.ok,
            checked_events=result.checked,
            last_sequence=result.last_sequence,
            last_hash=result.last_hash,
        )
        found_break = result.first_break
        if found_break is not None:
            response.first_break.CopyFrom(
                audit_pb2.AuditChainBreak(
                    sequence=found_break.sequence,
                    event=(
                        f"teams/{team}/auditEvents/{found_break.event_id}"
                        if found_break.event_id
                        else ""
                    ),
                    kind=_BREAK_KINDS[found_break.kind],
                    detail=found_break.detail,
                )
            )
        return response

    async def _verifier(
        self,
        session: AsyncSession,
        team: str,
        start: int,
        checkpoint: Anchor | None,
        anchored: bool,
        head: Anchor | None,
        end_sequence: int,
    ) -> tuple[ChainVerifier, bool]:
        """Return a verifier for a range starting at `start`, and whether its link is gone."""
        previous: Anchor | None = None
        missing = False
        if anchored:
            previous = None  # the checkpoint vouches for the first event
        elif start == 1:
            previous = Anchor(0, GENESIS_HASH)
        else:
            before = await repository.audit_event_at(session, team, start - 1)
            missing = before is None
            previous = Anchor(start - 1, before.hash) if before is not None else None
        reaches_head = end_sequence == 0 or end_sequence >= (head.sequence if head else 0)
        verifier = ChainVerifier(start, previous, checkpoint, head=head, check_head=reaches_head)
        return verifier, missing


def _checkpoint(request: audit_service_pb2.VerifyAuditChainRequest) -> Anchor | None:
    if not request.checkpoint_sequence:
        if request.checkpoint_hash:
            raise InvalidInput("checkpoint_hash needs checkpoint_sequence")
        return None
    if not is_chain_hash(request.checkpoint_hash):
        raise InvalidInput(
            "checkpoint_hash must be the 64 lowercase hex characters a verify reported as last_hash"
        )
    return Anchor(request.checkpoint_sequence, request.checkpoint_hash)
