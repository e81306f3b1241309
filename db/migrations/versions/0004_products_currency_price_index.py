"""products ordered by price within their currency

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Price orderings and price ranges never compare amounts across currencies: they run on
    # (currency, price, id), which replaces the index on (price, id).
    op.create_index("ix_products_currency_price_id", "products", ["currency", "price", "id"])
    op.drop_index("ix_products_price_id", table_name="products")


def downgrade() -> None:
    op.create_index("ix_products_price_id", "products", ["price", "id"])
    op.drop_index("ix_products_currency_price_id", table_name="products")
