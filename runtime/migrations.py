"""Per-service Alembic migrations: run them, and tell whether a database is current.

Each service keeps its history in `services/<name>/migrations` with its own version
table (`alembic_version_<name>`), so services can be deployed and migrated apart even
when they share one database. A service's env.py is one call to `run_service_env`.
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from runtime.database import Database

__all__ = [
    "MigrationHistory",
    "current_revision",
    "downgrade",
    "pending_services",
    "run_service_env",
    "upgrade",
]

# Any constant works; it serializes concurrent `migrate` runs on PostgreSQL
# (two Jobs or replicas starting at once) so they never interleave DDL.
_PG_MIGRATION_LOCK = 0x5F7_3161


@dataclass(frozen=True)
class MigrationHistory:
    """Where one service's migrations live and which tables are its own."""

    service: str
    #: Alembic script location as "package:folder", e.g. "services.ca:migrations".
    script_location: str
    #: Every table name of this service starts with this prefix.
    table_prefix: str

    @property
    def version_table(self) -> str:
        """Return the table Alembic records this service's revision in."""
        return f"alembic_version_{self.service}"

    def config(self, connection: Connection | None = None) -> Config:
        """Return an Alembic Config for this history (no alembic.ini needed)."""
        cfg = Config()
        cfg.set_main_option("script_location", self.script_location)
        cfg.attributes["history"] = self
        if connection is not None:
            cfg.attributes["connection"] = connection
        return cfg

    def head(self) -> str | None:
        """Return the newest revision in this history."""
        return ScriptDirectory.from_config(self.config()).get_current_head()


def run_service_env(config: Config, metadata: MetaData) -> None:
    """Run migrations for the history in `config` on the connection it carries (env.py)."""
    from alembic import context  # only importable while Alembic runs env.py

    history: MigrationHistory = config.attributes["history"]
    connection: Connection = config.attributes["connection"]

    def own_tables(name: str | None, type_: str, _parent: object) -> bool:
        return type_ != "table" or (name or "").startswith(history.table_prefix)

    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=history.version_table,
        include_name=own_tables,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


async def upgrade(database: Database, histories: list[MigrationHistory], to: str = "head") -> None:
    """Apply every pending migration of each history, in one transaction per history."""
    for history in histories:
        async with database.engine.begin() as conn:

            def run(sync_conn: Connection, history: MigrationHistory = history) -> None:
                _lock(sync_conn)
                command.upgrade(history.config(sync_conn), to)

            await conn.run_sync(run)


async def downgrade(database: Database, histories: list[MigrationHistory], to: str) -> None:
    """Revert each history to revision `to` ("base" removes every table it made)."""
    for history in reversed(histories):
        async with database.engine.begin() as conn:

            def run(sync_conn: Connection, history: MigrationHistory = history) -> None:
                _lock(sync_conn)
                command.downgrade(history.config(sync_conn), to)

            await conn.run_sync(run)


async def current_revision(database: Database, history: MigrationHistory) -> str | None:
    """Return the revision the database is at for `history` (None if never migrated)."""
    async with database.engine.connect() as conn:

        def read(sync_conn: Connection) -> str | None:
            ctx = MigrationContext.configure(
                sync_conn, opts={"version_table": history.version_table}
            )
            return ctx.get_current_revision()

        return await conn.run_sync(read)


async def pending_services(database: Database, histories: list[MigrationHistory]) -> list[str]:
    """Return the services whose tables are not at their newest revision."""
    behind = []
    for history in histories:
        if await current_revision(database, history) != history.head():
            behind.append(history.service)
    return behind
