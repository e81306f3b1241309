"""notifications keep the trace context of the request that wrote them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The W3C trace context (traceparent, tracestate) of the writer, when it was traced: the
    # worker's delivery continues that trace. Nullable, no default: adding it rewrites nothing.
    op.add_column(
        "notifications",
        sa.Column("trace_context", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("notifications", "trace_context")
