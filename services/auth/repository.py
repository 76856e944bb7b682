"""Queries over the auth tables. Takes a session; never commits (the servicer owns the
transaction). Secrets arrive here already hashed.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from runtime.page_tokens import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    filter_digest,
    newest_first_page,
)
from services.auth.audit_chain import GENESIS_HASH, Anchor, ChainedEvent, EventContent, chain_event
from services.auth.models import (
    AccessTokenRow,
    AuditEventRow,
    AuditHeadRow,
    DeviceRow,
    EnrollmentCode,
    FailedAttempt,
    ServiceKeyRow,
    ServiceUserRow,
    UsedAssertion,
)

__all__ = [
    "DEVICE_ACTIVE",
    "DEVICE_REVOKED",
    "AuditQuery",
    "append_audit_event",
    "audit_chain_bounds",
    "audit_event_at",
    "audit_events_from",
    "chained_event",
    "count_failed_attempts",
    "count_service_keys",
    "create_access_token",
    "create_device",
    "create_service_key",
    "create_service_user",
    "delete_service_key",
    "device_by_fingerprint",
    "enrollment_code_by_hash",
    "find_access_token",
    "get_device",
    "get_service_key",
    "get_service_user",
    "list_audit_events",
    "list_devices",
    "list_service_users",
    "new_id",
    "record_failed_attempt",
    "redeem_enrollment_code",
    "revoke_device",
    "service_keys_of",
    "spend_assertion",
    "void_unused_codes",
]

DEVICE_ACTIVE = "active"
DEVICE_REVOKED = "revoked"


def new_id() -> str:
    """Return a fresh random id for a resource name segment (16 hex characters)."""
    return secrets.token_hex(8)


async def redeem_enrollment_code(
    session: AsyncSession, team: str, secret_hash: str, now: dt.datetime
) -> EnrollmentCode:
    """Mark the code with `secret_hash` used and return it; refuse unknown, used or expired."""
    code = await session.scalar(
        select(EnrollmentCode).where(EnrollmentCode.secret_hash == secret_hash).with_for_update()
    )
    # One message for every refusal: a guesser learns nothing about which codes exist.
    refused = Unauthenticated(
        "the enrollment code is unknown, already used, expired or for another team; ask a "
        "team admin for a new one (`sft admin user invite`)"
    )
    if code is None or code.team != team or code.used_at is not None or code.expire_time <= now:
        raise refused
    code.used_at = now
    await session.flush()
    return code


async def count_failed_attempts(
    session: AsyncSession, scope: str, source: str, since: dt.datetime
) -> int:
    """Return how many refused guesses `source` made in `scope` since `since`."""
    count = await session.scalar(
        select(func.count())
        .select_from(FailedAttempt)
        .where(
            FailedAttempt.scope == scope,
            FailedAttempt.source == source,
            FailedAttempt.create_time >= since,
        )
    )
    return int(count or 0)


async def record_failed_attempt(
    session: AsyncSession, scope: str, source: str, now: dt.datetime, keep_since: dt.datetime
) -> None:
    """Record a refused guess, and forget those older than `keep_since`."""
    await session.execute(delete(FailedAttempt).where(FailedAttempt.create_time < keep_since))
    session.add(FailedAttempt(id=new_id(), scope=scope, source=source, create_time=now))
    await session.flush()


async def create_device(
    session: AsyncSession,
    *,
    team: str,
    user: str,
    display_name: str,
    hostname: str,
    os: str,
    public_key: str,
    fingerprint: str,
    now: dt.datetime,
) -> DeviceRow:
    """Record a newly enrolled device; refuse a key that is already enrolled."""
    if await device_by_fingerprint(session, fingerprint) is not None:
        raise Conflict(
            "this device key is already enrolled; make a new key (`sft enroll` does) rather "
            "than reusing one"
        )
    row = DeviceRow(
        id=new_id(),
        team=team,
        user=user,
        display_name=display_name,
        hostname=hostname,
        os=os,
        public_key=public_key,
        fingerprint=fingerprint,
        state=DEVICE_ACTIVE,
        create_time=now,
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict("this device key is already enrolled; make a new key") from None
    return row


async def device_by_fingerprint(session: AsyncSession, fingerprint: str) -> DeviceRow | None:
    """Return the device whose key has `fingerprint`, if any."""
    return await session.scalar(select(DeviceRow).where(DeviceRow.fingerprint == fingerprint))


async def get_device(session: AsyncSession, user: str, device_id: str) -> DeviceRow:
    """Return device `device_id` of `user`, or raise NotFound."""
    row = await session.scalar(
        select(DeviceRow).where(DeviceRow.id == device_id, DeviceRow.user == user)
    )
    if row is None:
        raise NotFound(f"device {user}/devices/{device_id} does not exist")
    return row


async def revoke_device(session: AsyncSession, row: DeviceRow, now: dt.datetime) -> DeviceRow:
    """Revoke `row` (idempotent) and delete its access tokens, so they stop at once."""
    if row.state != DEVICE_REVOKED:
        row.state = DEVICE_REVOKED
        row.revoke_time = now
        await session.execute(delete(AccessTokenRow).where(AccessTokenRow.device_id == row.id))
        await session.flush()
    return row


async def list_devices(
    session: AsyncSession,
    *,
    team: str,
    user: str | None,
    state: str | None,
    page_size: int,
    page_token: str,
) -> tuple[Sequence[DeviceRow], str]:
    """Return one page of devices (of `user`, or of the whole team), newest first."""
    query = select(DeviceRow).where(DeviceRow.team == team)
    if user is not None:
        query = query.where(DeviceRow.user == user)
    if state is not None:
        query = query.where(DeviceRow.state == state)
    return await newest_first_page(
        session,
        query,
        DeviceRow,
        page_size=page_size,
        page_token=page_token,
        digest=filter_digest(team, user, state),
    )


async def spend_assertion(
    session: AsyncSession, issuer: str, jti: str, expire_time: dt.datetime, now: dt.datetime
) -> None:
    """Record that `issuer` used `jti`; refuse a jti seen before (a replay)."""
    await session.execute(delete(UsedAssertion).where(UsedAssertion.expire_time < now))
    if await session.get(UsedAssertion, (issuer, jti)) is not None:
        raise Unauthenticated(
            "this assertion was already used (its jti is spent); sign a fresh one"
        )
    session.add(UsedAssertion(issuer=issuer, jti=jti, expire_time=expire_time))
    try:
        await session.flush()
    except IntegrityError:
        # Another replica took the same jti a moment ago: still a replay.
        raise Unauthenticated(
            "this assertion was already used (its jti is spent); sign a fresh one"
        ) from None


async def create_access_token(
    session: AsyncSession,
    *,
    token_hash: str,
    kind: str,
    team: str,
    principal: str,
    device_id: str | None,
    now: dt.datetime,
    expire_time: dt.datetime,
    service_key_id: str | None = None,
) -> AccessTokenRow:
    """Record an issued token by its hash."""
    await session.execute(delete(AccessTokenRow).where(AccessTokenRow.expire_time < now))
    row = AccessTokenRow(
        id=new_id(),
        token_hash=token_hash,
        kind=kind,
        team=team,
        principal=principal,
        device_id=device_id,
        service_key_id=service_key_id,
        create_time=now,
        expire_time=expire_time,
    )
    session.add(row)
    await session.flush()
    return row


async def find_access_token(
    session: AsyncSession, token_hash: str, now: dt.datetime
) -> AccessTokenRow | None:
    """Return the live token with `token_hash` (not expired), if any."""
    return await session.scalar(
        select(AccessTokenRow).where(
            AccessTokenRow.token_hash == token_hash, AccessTokenRow.expire_time > now
        )
    )


async def void_unused_codes(session: AsyncSession, user: str) -> int:
    """Delete `user`'s unused enrollment codes (a user has at most one); return how many."""
    result = await session.execute(
        delete(EnrollmentCode).where(EnrollmentCode.user == user, EnrollmentCode.used_at.is_(None))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def enrollment_code_by_hash(session: AsyncSession, secret_hash: str) -> EnrollmentCode:
    """Return the code stored under `secret_hash` (one just issued)."""
    row = await session.scalar(
        select(EnrollmentCode).where(EnrollmentCode.secret_hash == secret_hash)
    )
    if row is None:
        raise NotFound("the enrollment code just issued is not stored")
    return row


# Service users and their API keys.


async def get_service_user(session: AsyncSession, team: str, name: str) -> ServiceUserRow | None:
    """Return service user `name` of `team`, if any."""
    return await session.scalar(
        select(ServiceUserRow).where(ServiceUserRow.team == team, ServiceUserRow.name == name)
    )


async def create_service_user(
    session: AsyncSession, *, team: str, name: str, description: str, now: dt.datetime
) -> ServiceUserRow:
    """Record service user `name`; refuse one that exists."""
    exists = Conflict(
        f"service user {name!r} already exists in team {team!r}; add a key to it with "
        "`sft admin service-user key create`"
    )
    if await get_service_user(session, team, name) is not None:
        raise exists
    row = ServiceUserRow(
        id=new_id(), team=team, name=name, description=description, create_time=now
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:
        raise exists from None
    return row


async def list_service_users(
    session: AsyncSession, team: str, *, page_size: int, page_token: str
) -> tuple[Sequence[ServiceUserRow], str]:
    """Return one page of `team`'s service users, ordered by id, and the next token."""
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    digest = filter_digest("service-users", team)
    query = select(ServiceUserRow).where(ServiceUserRow.team == team)
    if page_token:
        _, after = decode_page_token(page_token, digest)
        query = query.where(ServiceUserRow.name > after)
    rows = list(await session.scalars(query.order_by(ServiceUserRow.name).limit(size + 1)))
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode_page_token(last.create_time, last.name, digest)


async def service_keys_of(
    session: AsyncSession, service_user_ids: Sequence[str]
) -> dict[str, list[ServiceKeyRow]]:
    """Return the keys of each service user, newest first."""
    keys: dict[str, list[ServiceKeyRow]] = {user_id: [] for user_id in service_user_ids}
    if not service_user_ids:
        return keys
    rows = await session.scalars(
        select(ServiceKeyRow)
        .where(ServiceKeyRow.service_user_id.in_(service_user_ids))
        .order_by(ServiceKeyRow.create_time.desc(), ServiceKeyRow.id.desc())
    )
    for row in rows:
        keys[row.service_user_id].append(row)
    return keys


async def count_service_keys(session: AsyncSession, service_user_id: str) -> int:
    """Return how many keys a service user has."""
    count = await session.scalar(
        select(func.count())
        .select_from(ServiceKeyRow)
        .where(ServiceKeyRow.service_user_id == service_user_id)
    )
    return int(count or 0)


async def create_service_key(
    session: AsyncSession, service_user: ServiceUserRow, secret_hash: str, now: dt.datetime
) -> ServiceKeyRow:
    """Record a new API key (by the hash of its secret) for `service_user`."""
    row = ServiceKeyRow(
        id=str(uuid.uuid4()),
        service_user_id=service_user.id,
        team=service_user.team,
        secret_hash=secret_hash,
        create_time=now,
    )
    session.add(row)
    await session.flush()
    return row


async def get_service_key(
    session: AsyncSession, key_id: str
) -> tuple[ServiceKeyRow, ServiceUserRow] | None:
    """Return API key `key_id` and its service user, if the key exists."""
    found = (
        await session.execute(
            select(ServiceKeyRow, ServiceUserRow)
            .join(ServiceUserRow, ServiceUserRow.id == ServiceKeyRow.service_user_id)
            .where(ServiceKeyRow.id == key_id)
        )
    ).first()
    return None if found is None else (found[0], found[1])


async def delete_service_key(session: AsyncSession, key: ServiceKeyRow) -> None:
    """Delete an API key and every token got with it, so they stop at once."""
    await session.execute(delete(AccessTokenRow).where(AccessTokenRow.service_key_id == key.id))
    await session.delete(key)
    await session.flush()


# The audit trail: one hash chain per team.


def chained_event(row: AuditEventRow) -> ChainedEvent:
    """Return a stored event as the chain sees it."""
    return ChainedEvent(
        EventContent(
            id=row.id,
            time=row.time,
            actor=row.actor,
            actor_kind=row.actor_kind,
            action=row.action,
            resource=row.resource,
            outcome=row.outcome,
            source_address=row.source_address,
            request_id=row.request_id,
            details=dict(row.details or {}),
        ),
        row.sequence,
        row.previous_hash,
        row.hash,
    )


async def _locked_head(session: AsyncSession, team: str) -> AuditHeadRow:
    """Return `team`'s chain head, locked until the transaction ends (made if missing).

    The lock is what serializes appends across replicas on PostgreSQL; SQLite has one
    writer at a time anyway. Creating the head races harmlessly: ON CONFLICT DO NOTHING.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    await session.execute(
        dialect.insert(AuditHeadRow)
        .values(team=team, last_sequence=0, last_hash=GENESIS_HASH)
        .on_conflict_do_nothing(index_elements=["team"])
    )
    head = await session.scalar(
        select(AuditHeadRow)
        .where(AuditHeadRow.team == team)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert head is not None, "the head row was just inserted or already there"
    return head


async def append_audit_event(
    session: AsyncSession, team: str, content: EventContent, *, resync: bool = False
) -> AuditEventRow:
    """Append `content` to `team`'s chain in the caller's transaction and return the row.

    `resync` (for a retry after a sequence clash) first moves the head past any stored
    event it does not know of, so the next append takes a free place.
    """
    content.check()
    head = await _locked_head(session, team)
    if resync:
        latest = await session.scalar(
            select(AuditEventRow)
            .where(AuditEventRow.team == team)
            .order_by(AuditEventRow.sequence.desc())
            .limit(1)
        )
        if latest is not None and latest.sequence > head.last_sequence:
            head.last_sequence, head.last_hash = latest.sequence, latest.hash
    chained = chain_event(content, head.last_sequence + 1, head.last_hash)
    row = AuditEventRow(
        id=content.id,
        team=team,
        sequence=chained.sequence,
        time=content.time,
        actor=content.actor,
        actor_kind=content.actor_kind,
        action=content.action,
        resource=content.resource,
        outcome=content.outcome,
        source_address=content.source_address,
        request_id=content.request_id,
        details=dict(content.details),
        previous_hash=chained.previous_hash,
        hash=chained.hash,
    )
    session.add(row)
    head.last_sequence, head.last_hash = chained.sequence, chained.hash
    await session.flush()
    return row


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit listing; empty values match everything."""

    team: str
    actor: str = ""
    #: Exact action, or a prefix when it ends in ".".
    action: str = ""
    #: This resource or any resource under it.
    resource: str = ""
    outcome: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    newest_first: bool = False


async def list_audit_events(
    session: AsyncSession, query: AuditQuery, *, page_size: int, page_token: str
) -> tuple[Sequence[AuditEventRow], str]:
    """Return one page of events matching `query`, by sequence, and the next token."""
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    digest = filter_digest(
        "audit",
        query.team,
        query.actor,
        query.action,
        query.resource,
        query.outcome,
        query.start_time,
        query.end_time,
        query.newest_first,
    )
    statement = select(AuditEventRow).where(AuditEventRow.team == query.team)
    if query.actor:
        statement = statement.where(AuditEventRow.actor == query.actor)
    if query.action.endswith("."):
        statement = statement.where(AuditEventRow.action.startswith(query.action, autoescape=True))
    elif query.action:
        statement = statement.where(AuditEventRow.action == query.action)
    if query.resource:
        statement = statement.where(
            (AuditEventRow.resource == query.resource)
            | AuditEventRow.resource.startswith(query.resource.rstrip("/") + "/", autoescape=True)
        )
    if query.outcome:
        statement = statement.where(AuditEventRow.outcome == query.outcome)
    if query.start_time is not None:
        statement = statement.where(AuditEventRow.time >= query.start_time)
    if query.end_time is not None:
        statement = statement.where(AuditEventRow.time < query.end_time)
    if page_token:
        _, after_text = decode_page_token(page_token, digest)
        if not after_text.isdigit():
            raise InvalidInput(
                "page_token is not valid; pass next_page_token from the previous response unchanged"
            )
        after = int(after_text)
        statement = statement.where(
            AuditEventRow.sequence < after if query.newest_first else AuditEventRow.sequence > after
        )
    order = AuditEventRow.sequence.desc() if query.newest_first else AuditEventRow.sequence.asc()
    rows = list(await session.scalars(statement.order_by(order).limit(size + 1)))
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], encode_page_token(last.time, last.sequence, digest)


async def audit_chain_bounds(session: AsyncSession, team: str) -> tuple[Anchor | None, int]:
    """Return `team`'s recorded head (None if it has none) and its highest stored sequence.

    One statement, so both come from one snapshot: an append committing meanwhile is
    either in both or in neither.
    """
    highest = (
        select(func.coalesce(func.max(AuditEventRow.sequence), 0))
        .where(AuditEventRow.team == team)
        .scalar_subquery()
    )
    head_query = select(AuditHeadRow.last_sequence, AuditHeadRow.last_hash, highest).where(
        AuditHeadRow.team == team
    )
    found = (await session.execute(head_query)).first()
    if found is not None:
        return Anchor(int(found[0]), str(found[1])), int(found[2])
    # No head: there may still be events (the head row itself was deleted).
    return None, int(await session.scalar(select(highest)) or 0)


async def audit_event_at(session: AsyncSession, team: str, sequence: int) -> AuditEventRow | None:
    """Return the event at `sequence` of `team`'s chain, if any."""
    return await session.scalar(
        select(AuditEventRow)
        .where(AuditEventRow.team == team, AuditEventRow.sequence == sequence)
        .order_by(AuditEventRow.id)
        .limit(1)
    )


async def audit_events_from(
    session: AsyncSession,
    team: str,
    *,
    after: tuple[int, str] | None,
    start: int,
    end: int,
    limit: int,
) -> Sequence[AuditEventRow]:
    """Return up to `limit` events with start <= sequence <= end, after (sequence, id)."""
    statement = select(AuditEventRow).where(
        AuditEventRow.team == team,
        AuditEventRow.sequence >= start,
        AuditEventRow.sequence <= end,
    )
    if after is not None:
        statement = statement.where(
            (AuditEventRow.sequence > after[0])
            | ((AuditEventRow.sequence == after[0]) & (AuditEventRow.id > after[1]))
        )
    ordered = statement.order_by(AuditEventRow.sequence, AuditEventRow.id).limit(limit)
    return list(await session.scalars(ordered))
