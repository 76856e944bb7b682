"""Fixtures that start real things (PostgreSQL, the platform) and always stop them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from runtime.database import default_sqlite_url
from tests.support.postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server per test worker."""
    with postgres_server() as server:
        yield server


async def _admin(postgres: PostgresServer, statement: str) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user=postgres.user, database="postgres"
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the throwaway server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres, f'CREATE DATABASE "{name}"'))
    yield postgres.url(name)
    asyncio.run(_admin(postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path_factory.mktemp("sqlite"))
    return str(request.getfixturevalue("postgres_url"))
