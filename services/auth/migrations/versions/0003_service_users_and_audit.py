"""Create service users and their API keys, tie access tokens to keys, and the audit chain.

Revision ID: auth_0003
Revises: auth_0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from runtime.database import UTCDateTime

revision: str = "auth_0003"
down_revision: str | None = "auth_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "auth_service_users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_service_users")),
        sa.UniqueConstraint("team", "name", name=op.f("uq_auth_service_users_team_name")),
    )
    op.create_table(
        "auth_service_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("service_user_id", sa.String(32), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("last_use_time", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["service_user_id"],
            ["auth_service_users.id"],
            name=op.f("fk_auth_service_keys_service_user_id_auth_service_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_service_keys")),
    )
    op.create_index(
        op.f("ix_auth_service_keys_service_user_id"), "auth_service_keys", ["service_user_id"]
    )
    # Batch mode: SQLite can add a foreign key only by rebuilding the table.
    with op.batch_alter_table("auth_access_tokens") as batch:
        batch.add_column(sa.Column("service_key_id", sa.String(36), nullable=True))
        batch.create_index(op.f("ix_auth_access_tokens_service_key_id"), ["service_key_id"])
        batch.create_foreign_key(
            op.f("fk_auth_access_tokens_service_key_id_auth_service_keys"),
            "auth_service_keys",
            ["service_key_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_table(
        "auth_audit_events",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(500), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(500), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("previous_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_audit_events")),
        sa.UniqueConstraint("team", "sequence", name=op.f("uq_auth_audit_events_team_sequence")),
    )
    op.create_index("ix_auth_audit_events_team_time", "auth_audit_events", ["team", "time"])
    op.create_table(
        "auth_audit_heads",
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("team", name=op.f("pk_auth_audit_heads")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("auth_audit_heads")
    op.drop_index("ix_auth_audit_events_team_time", table_name="auth_audit_events")
    op.drop_table("auth_audit_events")
    with op.batch_alter_table("auth_access_tokens") as batch:
        batch.drop_constraint(
            op.f("fk_auth_access_tokens_service_key_id_auth_service_keys"), type_="foreignkey"
        )
        batch.drop_index(op.f("ix_auth_access_tokens_service_key_id"))
        batch.drop_column("service_key_id")
    op.drop_index(op.f("ix_auth_service_keys_service_user_id"), table_name="auth_service_keys")
    op.drop_table("auth_service_keys")
    op.drop_table("auth_service_users")
