"""Every service's migrations go up and down on SQLite and PostgreSQL, and match its models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from runtime.database import Database
from runtime.migrations import current_revision, downgrade, pending_services, upgrade
from services.platform.registry import APPS, histories_for

ALL = tuple(APPS)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database.connect(database_url)
    yield db
    await db.close()


async def _tables(database: Database) -> set[str]:
    async with database.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_fresh_database_is_pending_for_every_service(database: Database) -> None:
    assert await pending_services(database, histories_for(ALL)) == list(ALL)


async def test_upgrade_then_downgrade_each_service_alone(database: Database) -> None:
    histories = histories_for(ALL)
    await upgrade(database, histories)
    assert await pending_services(database, histories) == []
    tables = await _tables(database)
    assert {"inventory_teams", "inventory_users", "auth_enrollment_codes"} <= tables
    assert {f"alembic_version_{name}" for name in ALL} <= tables

    inventory = histories_for(("inventory",))
    await downgrade(database, inventory, "base")
    tables = await _tables(database)
    assert not any(t.startswith("inventory_") for t in tables)
    assert "auth_enrollment_codes" in tables  # other services are untouched
    assert await pending_services(database, histories) == ["inventory"]
    assert await current_revision(database, inventory[0]) is None

    await upgrade(database, histories)  # and back up again
    assert await pending_services(database, histories) == []


async def test_upgrade_twice_is_a_no_op(database: Database) -> None:
    histories = histories_for(ALL)
    await upgrade(database, histories)
    before = {h.service: await current_revision(database, h) for h in histories}
    await upgrade(database, histories)
    assert {h.service: await current_revision(database, h) for h in histories} == before


async def test_migrations_create_exactly_what_the_models_describe(database: Database) -> None:
    await upgrade(database, histories_for(ALL))
    for name, app in APPS.items():
        metadata = __import__(f"services.{name}.models", fromlist=["Base"]).Base.metadata
        prefix = app.HISTORY.table_prefix

        def diff(
            conn: Connection, metadata: MetaData = metadata, prefix: str = prefix
        ) -> list[object]:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_name": lambda n, t, _p: t != "table" or (n or "").startswith(prefix),
                    "compare_type": True,
                },
            )
            return list(compare_metadata(context, metadata))

        async with database.engine.connect() as conn:
            assert await conn.run_sync(diff) == [], f"{name}: models and migrations differ"
