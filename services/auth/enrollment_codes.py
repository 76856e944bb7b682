"""One-time device enrollment codes: issue them. Only the hash is stored.

Redeeming a code (`EnrollDevice`) is the device-enrollment slice of the auth issue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from runtime.errors import InvalidInput
from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth.models import EnrollmentCode

__all__ = ["DEFAULT_CODE_TTL", "MAX_CODE_TTL", "IssuedCode", "issue_enrollment_code"]

DEFAULT_CODE_TTL = dt.timedelta(hours=24)
MAX_CODE_TTL = dt.timedelta(days=7)


@dataclass(frozen=True)
class IssuedCode:
    """A code as shown once to whoever will enroll the device."""

    code: str
    expire_time: dt.datetime


async def issue_enrollment_code(
    session: AsyncSession,
    *,
    team: str,
    user: str,
    created_by: str,
    ca_sha256: bytes,
    ttl: dt.timedelta = DEFAULT_CODE_TTL,
    now: dt.datetime | None = None,
) -> IssuedCode:
    """Record a new code for `user` (a `teams/T/users/U` name) and return it once."""
    if not dt.timedelta(minutes=1) <= ttl <= MAX_CODE_TTL:
        raise InvalidInput("an enrollment code must live between 1 minute and 7 days")
    now = now or dt.datetime.now(dt.UTC)
    code = PinnedCode.generate(CodeKind.DEVICE_ENROLLMENT, ca_sha256)
    row = EnrollmentCode(
        user=user,
        team=team,
        secret_hash=code.secret_hash,
        created_by=created_by,
        created_at=now,
        expire_time=now + ttl,
    )
    session.add(row)
    await session.flush()
    return IssuedCode(code.encode(), row.expire_time)
