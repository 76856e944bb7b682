"""The database engine: SQLite in the data dir by default, PostgreSQL by URL.

Each service owns its tables (prefixed with its name) and its own migration history;
they may share one database. Sessions come from `Database.sessions`, one per RPC;
repositories take a session and never commit: the servicer owns the transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, TypeDecorator, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = [
    "NAMING_CONVENTION",
    "Database",
    "UTCDateTime",
    "default_sqlite_url",
    "describe_database_error",
    "normalize_database_url",
    "redact_url",
    "sqlite_path",
]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


#: Deterministic constraint names, so migrations can alter them on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every database.

    SQLite has no time zones and hands back naive values; comparing those with aware
    ones raises. Naive values are refused on the way in so none is ever stored.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        """Store `value` in UTC; refuse naive datetimes (they have no defined instant)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use an aware one")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        """Return `value` as an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def default_sqlite_url(data_dir: Path) -> str:
    """Return the URL of the SQLite file a laptop platform keeps in its data dir."""
    return f"sqlite+aiosqlite:///{(data_dir / 'platform.db').resolve()}"


def normalize_database_url(raw: str) -> str:
    """Return `raw` with the async driver sft uses, or raise ValueError saying what is wrong."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "is not a database URL; use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        ) from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"database {url.drivername!r} is not supported; use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST/DB"
        )
    if driver.startswith("sqlite") and not url.database:
        raise ValueError("a SQLite URL needs a file path, e.g. sqlite:////var/lib/sft/platform.db")
    if driver.startswith("postgresql") and not url.host and not url.query.get("host"):
        raise ValueError("a PostgreSQL URL needs a host, e.g. postgresql://sft@db.internal/sft")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def redact_url(raw: str) -> str:
    """Return the URL with any password masked, for logs and messages."""
    return make_url(raw).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; busy_timeout makes concurrent writers
    # wait instead of failing with "database is locked"; SQLite needs foreign keys on.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@dataclass
class Database:
    """An engine and the session factory bound to it."""

    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @property
    def is_sqlite(self) -> bool:
        """Return whether this is a SQLite database."""
        return self.engine.dialect.name == "sqlite"

    @classmethod
    def connect(cls, raw_url: str) -> Database:
        """Create an engine for `raw_url` (normalized to its async driver)."""
        url = normalize_database_url(raw_url)
        kwargs: dict[str, Any]
        if make_url(url).drivername.startswith("postgresql"):
            kwargs = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
        else:
            # SQLite has one writer at a time. With one pooled connection writers queue
            # here in order instead of sleeping in SQLite's busy handler (which made p99
            # latency seconds under load); a local file needs no pre-ping.
            kwargs = {"pool_size": 1, "max_overflow": 0}
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(url, engine, async_sessionmaker(engine, expire_on_commit=False))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def sqlite_path(url: str) -> Path | None:
    """Return the file a SQLite URL points at, or None for other databases."""
    parsed: URL = make_url(url)
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    return Path(parsed.database)


def describe_database_error(exc: BaseException) -> str | None:
    """Return one line for a failure to reach or use the database, or None if it is not one."""
    if isinstance(exc, OperationalError | DBAPIError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        return f"database error: {detail}; check --database-url and that the database is up"
    if isinstance(exc, ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and exc.errno is not None
    ):
        return (
            f"cannot reach the database ({exc}); check --database-url and that the "
            "database server is running"
        )
    return None
