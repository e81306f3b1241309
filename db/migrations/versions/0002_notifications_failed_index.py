"""a partial index of failed notifications

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_notifications_failed_kind_created_at",
        "notifications",
        ["kind", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'FAILED'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_notifications_failed_kind_created_at",
        table_name="notifications",
        postgresql_where=sa.text("status = 'FAILED'"),
    )
