"""API tokens in their own table; users gain the identity provider's subject

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00

Every `users.token_hash` becomes a row of `api_tokens` with the same hash, so the tokens
already handed out keep working. Their text is unknown here, so their `prefix` (what `python -m
services.tokens list` shows and `revoke` takes) is `sha256:` and the start of the hash.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool) -> sa.Column[datetime]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=20), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("expires_at", nullable=True),
        _timestamp("last_used_at", nullable=True),
        _timestamp("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_tokens_prefix")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"], unique=False)
    op.execute(
        "INSERT INTO api_tokens (user_id, token_hash, prefix, created_at) "
        "SELECT id, token_hash, 'sha256:' || left(token_hash, 12), created_at FROM users "
        "ORDER BY id"
    )
    op.drop_constraint("uq_users_token_hash", "users", type_="unique")
    op.drop_column("users", "token_hash")
    op.add_column("users", sa.Column("external_subject", sa.String(length=255), nullable=True))
    op.create_unique_constraint(op.f("uq_users_external_subject"), "users", ["external_subject"])


def downgrade() -> None:
    op.drop_constraint("uq_users_external_subject", "users", type_="unique")
    op.drop_column("users", "external_subject")
    op.add_column("users", sa.Column("token_hash", sa.String(length=64), nullable=True))
    # One token per user before 0003: each keeps its newest live one.
    op.execute(
        "UPDATE users SET token_hash = live.token_hash FROM ("
        " SELECT DISTINCT ON (user_id) user_id, token_hash FROM api_tokens"
        " WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
        " ORDER BY user_id, created_at DESC, id DESC"
        ") AS live WHERE live.user_id = users.id"
    )
    # The column was NOT NULL: a user without a live token gets a value no sha256 hex equals.
    op.execute("UPDATE users SET token_hash = 'none:' || id WHERE token_hash IS NULL")
    op.alter_column("users", "token_hash", nullable=False)
    op.create_unique_constraint(op.f("uq_users_token_hash"), "users", ["token_hash"])
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.drop_table("api_tokens")
