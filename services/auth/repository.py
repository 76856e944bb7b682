"""Queries over the auth tables. Takes a session; never commits (the servicer owns the
transaction). Secrets arrive here already hashed.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import Conflict, NotFound, Unauthenticated
from runtime.page_tokens import filter_digest, newest_first_page
from services.auth.models import (
    AccessTokenRow,
    DeviceRow,
    EnrollmentCode,
    FailedAttempt,
    UsedAssertion,
)

__all__ = [
    "DEVICE_ACTIVE",
    "DEVICE_REVOKED",
    "count_failed_attempts",
    "create_access_token",
    "create_device",
    "device_by_fingerprint",
    "find_access_token",
    "get_device",
    "list_devices",
    "new_id",
    "record_failed_attempt",
    "redeem_enrollment_code",
    "revoke_device",
    "spend_assertion",
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
