"""Create device enrollment codes (hashes only).

Revision ID: auth_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "auth_enrollment_codes",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_enrollment_codes")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_auth_enrollment_codes_secret_hash")),
    )
    op.create_index(
        op.f("ix_auth_enrollment_codes_team"), "auth_enrollment_codes", ["team"], unique=False
    )
    op.create_index(
        op.f("ix_auth_enrollment_codes_user"), "auth_enrollment_codes", ["user"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_auth_enrollment_codes_user"), table_name="auth_enrollment_codes")
    op.drop_index(op.f("ix_auth_enrollment_codes_team"), table_name="auth_enrollment_codes")
    op.drop_table("auth_enrollment_codes")
