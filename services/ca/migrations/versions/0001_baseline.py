"""Start the CA service's migration history (tables arrive with the CA issue).

Revision ID: ca_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

revision: str = "ca_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision (records the version only)."""


def downgrade() -> None:
    """Revert this revision."""
