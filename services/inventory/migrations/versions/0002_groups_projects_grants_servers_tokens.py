"""Create groups, memberships, projects, grants, servers, enrollment tokens and bastions.

Revision ID: inventory_0002
Revises: inventory_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "inventory_0002"
down_revision: str | None = "inventory_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "inventory_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["inventory_teams.id"],
            name=op.f("fk_inventory_groups_team_id_inventory_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_groups")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_inventory_groups_team_id_name")),
    )
    op.create_table(
        "inventory_projects",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("certificate_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("certificate_max_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("create_server_users", sa.Boolean(), nullable=False),
        sa.Column("permit_port_forwarding", sa.Boolean(), nullable=False),
        sa.Column("permit_agent_forwarding", sa.Boolean(), nullable=False),
        sa.Column("rdp_enabled", sa.Boolean(), nullable=False),
        sa.Column("required_bastion", sa.String(length=63), nullable=False),
        sa.Column("allowed_admin_account_names", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["inventory_teams.id"],
            name=op.f("fk_inventory_projects_team_id_inventory_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_projects")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_inventory_projects_team_id_name")),
    )
    op.create_table(
        "inventory_enrollment_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("creator", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["inventory_projects.id"],
            name=op.f("fk_inventory_enrollment_tokens_project_id_inventory_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_enrollment_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_inventory_enrollment_tokens_secret_hash")),
    )
    with op.batch_alter_table("inventory_enrollment_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_enrollment_tokens_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "inventory_grants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column(
            "role",
            sa.Enum("USER", "ADMIN", name="grantrole", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["inventory_groups.id"],
            name=op.f("fk_inventory_grants_group_id_inventory_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["inventory_projects.id"],
            name=op.f("fk_inventory_grants_project_id_inventory_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_grants")),
        sa.UniqueConstraint(
            "project_id", "group_id", name=op.f("uq_inventory_grants_project_id_group_id")
        ),
    )
    with op.batch_alter_table("inventory_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_grants_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "inventory_group_members",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["inventory_groups.id"],
            name=op.f("fk_inventory_group_members_group_id_inventory_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["inventory_users.id"],
            name=op.f("fk_inventory_group_members_user_id_inventory_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_inventory_group_members")),
    )
    with op.batch_alter_table("inventory_group_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_group_members_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "inventory_servers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("canonical_name", sa.String(length=253), nullable=False),
        sa.Column("alt_names", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("os", sa.String(length=16), nullable=False),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("access_address", sa.String(length=253), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("broker_port", sa.Integer(), nullable=False),
        sa.Column("bastion", sa.String(length=63), nullable=False),
        sa.Column("host_key_fingerprints", sa.JSON(), nullable=False),
        sa.Column("agent_public_key", sa.String(length=200), nullable=False),
        sa.Column("agent_key_fingerprint", sa.String(length=60), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("enrollment_token_id", sa.String(length=36), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["inventory_projects.id"],
            name=op.f("fk_inventory_servers_project_id_inventory_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["inventory_teams.id"],
            name=op.f("fk_inventory_servers_team_id_inventory_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_servers")),
        sa.UniqueConstraint(
            "agent_key_fingerprint", name=op.f("uq_inventory_servers_agent_key_fingerprint")
        ),
    )
    with op.batch_alter_table("inventory_servers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inventory_servers_project_created", ["project_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_inventory_servers_team_created", ["team_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "inventory_bastions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("server_id", sa.String(length=36), nullable=True),
        sa.Column("address", sa.String(length=253), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["inventory_servers.id"],
            name=op.f("fk_inventory_bastions_server_id_inventory_servers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["inventory_teams.id"],
            name=op.f("fk_inventory_bastions_team_id_inventory_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_bastions")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_inventory_bastions_team_id_name")),
    )
    op.create_table(
        "inventory_server_names",
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["inventory_servers.id"],
            name=op.f("fk_inventory_server_names_server_id_inventory_servers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("server_id", "name", name=op.f("pk_inventory_server_names")),
    )
    with op.batch_alter_table("inventory_server_names", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inventory_server_names_team_name", ["team_id", "name"], unique=False
        )

    with op.batch_alter_table("inventory_teams", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("accounts_revision", sa.BigInteger(), nullable=False, server_default="1")
        )

    with op.batch_alter_table("inventory_users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "kind",
                sa.Enum("HUMAN", "SERVICE", name="userkind", native_enum=False, length=16),
                nullable=False,
                server_default="HUMAN",
            )
        )
        batch_op.add_column(
            sa.Column("display_name", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("email", sa.String(length=254), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("inventory_users", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("email")
        batch_op.drop_column("display_name")
        batch_op.drop_column("kind")

    with op.batch_alter_table("inventory_teams", schema=None) as batch_op:
        batch_op.drop_column("accounts_revision")

    with op.batch_alter_table("inventory_server_names", schema=None) as batch_op:
        batch_op.drop_index("ix_inventory_server_names_team_name")

    op.drop_table("inventory_server_names")
    op.drop_table("inventory_bastions")
    with op.batch_alter_table("inventory_servers", schema=None) as batch_op:
        batch_op.drop_index("ix_inventory_servers_team_created")
        batch_op.drop_index("ix_inventory_servers_project_created")

    op.drop_table("inventory_servers")
    with op.batch_alter_table("inventory_group_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inventory_group_members_user_id"))

    op.drop_table("inventory_group_members")
    with op.batch_alter_table("inventory_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inventory_grants_group_id"))

    op.drop_table("inventory_grants")
    with op.batch_alter_table("inventory_enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inventory_enrollment_tokens_project_id"))

    op.drop_table("inventory_enrollment_tokens")
    op.drop_table("inventory_projects")
    op.drop_table("inventory_groups")
