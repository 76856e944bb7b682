"""Create teams and users.

Revision ID: inventory_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "inventory_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "inventory_teams",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_inventory_teams_name")),
    )
    op.create_table(
        "inventory_users",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("team_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("unix_uid", sa.Integer(), nullable=False),
        sa.Column("unix_gid", sa.Integer(), nullable=False),
        sa.Column("windows_name", sa.String(20), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ACTIVE", "DISABLED", name="userstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("team_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["inventory_teams.id"],
            name=op.f("fk_inventory_users_team_id_inventory_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_users")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_inventory_users_team_id_name")),
        sa.UniqueConstraint(
            "team_id", "unix_uid", name=op.f("uq_inventory_users_team_id_unix_uid")
        ),
        sa.UniqueConstraint(
            "team_id", "unix_gid", name=op.f("uq_inventory_users_team_id_unix_gid")
        ),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("inventory_users")
    op.drop_table("inventory_teams")
