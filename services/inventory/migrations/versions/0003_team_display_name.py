"""Give teams a display name.

Revision ID: inventory_0003
Revises: inventory_0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "inventory_0003"
down_revision: str | None = "inventory_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("inventory_teams", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("display_name", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("inventory_teams", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("display_name")
