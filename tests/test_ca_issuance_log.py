"""The CA's group-committing issuance log, on SQLite and PostgreSQL: every append returns
only once its row is committed, concurrent appends share transactions, a serial
collision fails only the colliding call, a caller that leaves still gets its row
written, and a broken database fails every waiter with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy import event, func, select

from runtime.database import Database
from runtime.errors import Conflict, Unavailable
from runtime.migrations import upgrade
from services.ca import app as ca_app
from services.ca.issuance_log import IssuanceLog
from services.ca.key_encryption import LocalKeyEncryption
from services.ca.models import IssuanceRow
from services.ca.repository import IssuanceRecord, create_project_authorities

PROJECT = "teams/acme/projects/web"
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database.connect(database_url)
    await upgrade(db, [ca_app.HISTORY])
    yield db
    await db.close()


@pytest.fixture
async def record(database: Database) -> IssuanceRecord:
    kek = LocalKeyEncryption.from_env(base64.b64encode(os.urandom(32)).decode())
    async with database.sessions.begin() as session:
        authority = (await create_project_authorities(session, PROJECT, kek, NOW))[0]
    return IssuanceRecord(
        team="acme",
        project=PROJECT,
        serial=1,
        kind="ssh_user",
        subject="teams/acme/users/alice",
        principals=("alice",),
        key_id="user=alice@acme",
        key_fingerprint="SHA256:x",
        authority=authority,
        valid_after=NOW,
        valid_before=NOW + dt.timedelta(minutes=10),
        caller="service:auth",
        request_id="r1",
        create_time=NOW,
    )


async def _serials(database: Database) -> list[int]:
    async with database.sessions() as session:
        return sorted(await session.scalars(select(IssuanceRow.serial)))


def _count_commits(database: Database) -> list[int]:
    commits: list[int] = []
    event.listen(database.engine.sync_engine, "commit", lambda _conn: commits.append(1))
    return commits


async def test_concurrent_appends_are_all_committed_in_fewer_transactions(
    database: Database, record: IssuanceRecord
) -> None:
    log = IssuanceLog(database)
    commits = _count_commits(database)
    await asyncio.gather(*(log.append(replace(record, serial=n)) for n in range(1, 101)))
    assert await _serials(database) == list(range(1, 101))
    assert 1 <= len(commits) < 100


async def test_a_serial_collision_fails_only_the_colliding_call(
    database: Database, record: IssuanceRecord
) -> None:
    log = IssuanceLog(database)
    await log.append(replace(record, serial=7))
    results = await asyncio.gather(
        *(log.append(replace(record, serial=n)) for n in (5, 7, 9)), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Conflict)
    assert await _serials(database) == [5, 7, 9]


async def test_a_caller_that_leaves_still_gets_its_row_and_the_log_goes_on(
    database: Database, record: IssuanceRecord
) -> None:
    log = IssuanceLog(database)
    waiting = asyncio.create_task(log.append(replace(record, serial=11)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await log.append(replace(record, serial=12))
    for _ in range(50):
        if await _serials(database) == [11, 12]:
            break
        await asyncio.sleep(0.02)
    assert await _serials(database) == [11, 12]


async def test_a_broken_database_fails_every_waiter_with_unavailable(
    record: IssuanceRecord,
) -> None:
    broken = Database.connect("sqlite+aiosqlite:////nonexistent-dir/nope.db")
    log = IssuanceLog(broken)
    results = await asyncio.gather(
        *(log.append(replace(record, serial=n)) for n in (1, 2)), return_exceptions=True
    )
    await broken.close()
    assert all(isinstance(result, Unavailable) for result in results), results
    assert "issuance log" in str(results[0])


async def test_too_many_waiting_records_are_refused(
    database: Database, record: IssuanceRecord
) -> None:
    log = IssuanceLog(database, max_pending=2)
    results = await asyncio.gather(
        *(log.append(replace(record, serial=n)) for n in (1, 2, 3)), return_exceptions=True
    )
    refused = [r for r in results if r is not None]
    assert len(refused) == 1 and "behind" in str(refused[0])
    async with database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IssuanceRow)) == 2
