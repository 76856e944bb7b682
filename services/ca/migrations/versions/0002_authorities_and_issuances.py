"""Create the authorities (sealed keys) and the issuance log.

Revision ID: ca_0002
Revises: ca_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from runtime.database import UTCDateTime

revision: str = "ca_0002"
down_revision: str | None = "ca_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "ca_authorities",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("public_key", sa.String(200), nullable=False),
        sa.Column("certificate_pem", sa.String(4000), nullable=False),
        sa.Column("fingerprint", sa.String(60), nullable=False),
        sa.Column("sealed_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("retire_time", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ca_authorities")),
    )
    op.create_index(op.f("ix_ca_authorities_project"), "ca_authorities", ["project"])
    op.create_index(
        "uq_ca_authorities_active_kind",
        "ca_authorities",
        ["project", "kind"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_table(
        "ca_issuances",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("principals", sa.JSON(), nullable=False),
        sa.Column("key_id", sa.String(400), nullable=False),
        sa.Column("key_fingerprint", sa.String(60), nullable=False),
        sa.Column("authority_id", sa.String(32), nullable=False),
        sa.Column("authority_fingerprint", sa.String(60), nullable=False),
        sa.Column("valid_after", UTCDateTime(), nullable=False),
        sa.Column("valid_before", UTCDateTime(), nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["ca_authorities.id"],
            name=op.f("fk_ca_issuances_authority_id_ca_authorities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ca_issuances")),
    )
    op.create_index(
        "uq_ca_issuances_project_serial", "ca_issuances", ["project", "serial"], unique=True
    )
    op.create_index(
        "ix_ca_issuances_project_created", "ca_issuances", ["project", "create_time", "serial"]
    )
    op.create_index(
        "ix_ca_issuances_team_created", "ca_issuances", ["team", "create_time", "serial"]
    )
    op.create_index(op.f("ix_ca_issuances_subject"), "ca_issuances", ["subject"])
    op.create_index(op.f("ix_ca_issuances_request_id"), "ca_issuances", ["request_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("ca_issuances")
    op.drop_table("ca_authorities")
