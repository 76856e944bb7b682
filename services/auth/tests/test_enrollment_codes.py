"""Enrollment codes: stored as a hash only, with bounded lifetimes."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from runtime.database import Database, default_sqlite_url
from runtime.errors import InvalidInput
from runtime.migrations import upgrade
from runtime.pinned_codes import CodeKind, PinnedCode
from services.auth.app import HISTORY
from services.auth.enrollment_codes import issue_enrollment_code
from services.auth.models import EnrollmentCode

PIN = hashlib.sha256(b"ca").digest()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database.connect(default_sqlite_url(tmp_path))
    await upgrade(db, [HISTORY])
    yield db
    await db.close()


async def test_a_code_is_stored_only_as_its_hash(database: Database) -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    async with database.sessions.begin() as session:
        issued = await issue_enrollment_code(
            session,
            team="acme",
            user="teams/acme/users/alice",
            created_by="test",
            ca_sha256=PIN,
            now=now,
        )
    assert issued.expire_time == now + dt.timedelta(hours=24)
    code = PinnedCode.parse(issued.code, CodeKind.DEVICE_ENROLLMENT)
    async with database.sessions() as session:
        rows = (await session.scalars(select(EnrollmentCode))).all()
    assert [row.secret_hash for row in rows] == [code.secret_hash]
    assert issued.code not in repr([vars(row) for row in rows])


@pytest.mark.parametrize("ttl", [dt.timedelta(seconds=30), dt.timedelta(days=8)])
async def test_a_code_lifetime_outside_bounds_is_refused_and_nothing_is_stored(
    database: Database, ttl: dt.timedelta
) -> None:
    with pytest.raises(InvalidInput, match="between 1 minute and 7 days"):
        async with database.sessions.begin() as session:
            await issue_enrollment_code(
                session,
                team="acme",
                user="teams/acme/users/alice",
                created_by="test",
                ca_sha256=PIN,
                ttl=ttl,
            )
    async with database.sessions() as session:
        assert (await session.scalars(select(EnrollmentCode))).all() == []
