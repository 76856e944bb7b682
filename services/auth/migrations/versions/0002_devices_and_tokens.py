"""Create devices, access tokens, used assertions and failed attempts.

Revision ID: auth_0002
Revises: auth_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from runtime.database import UTCDateTime

revision: str = "auth_0002"
down_revision: str | None = "auth_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "auth_devices",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("os", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(60), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("last_use_time", UTCDateTime(), nullable=True),
        sa.Column("revoke_time", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_devices")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_auth_devices_fingerprint")),
    )
    op.create_index(op.f("ix_auth_devices_user"), "auth_devices", ["user"])
    op.create_table(
        "auth_access_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("principal", sa.String(300), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("expire_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["auth_devices.id"],
            name=op.f("fk_auth_access_tokens_device_id_auth_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_access_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_access_tokens_token_hash")),
    )
    op.create_index(op.f("ix_auth_access_tokens_device_id"), "auth_access_tokens", ["device_id"])
    op.create_index(
        op.f("ix_auth_access_tokens_expire_time"), "auth_access_tokens", ["expire_time"]
    )
    op.create_table(
        "auth_used_assertions",
        sa.Column("issuer", sa.String(300), nullable=False),
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("expire_time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_auth_used_assertions")),
    )
    op.create_index(
        op.f("ix_auth_used_assertions_expire_time"), "auth_used_assertions", ["expire_time"]
    )
    op.create_table(
        "auth_failed_attempts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failed_attempts")),
    )
    op.create_index(
        "ix_auth_failed_attempts_scope_source",
        "auth_failed_attempts",
        ["scope", "source", "create_time"],
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("auth_failed_attempts")
    op.drop_table("auth_used_assertions")
    op.drop_table("auth_access_tokens")
    op.drop_table("auth_devices")
