"""change notifications: products' stock and orders' status announced with pg_notify

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One channel, small payloads: PostgreSQL delivers a NOTIFY only once its transaction commits,
# in commit order, never for rolled-back work, whatever wrote the row (orders, cancels, holds,
# releases, the worker's expiries). Listeners read the current state themselves
# (services/events.py); the payload only says what changed: `p:<product id>:<correlation id>`,
# `o:<order id>:<user id>:<correlation id>`, the correlation ID being the writer's
# `booking.correlation_id` setting when it set one (else empty).
_STATEMENTS = (
    """
CREATE FUNCTION notify_product_stock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('booking_changes', 'p:' || NEW.id || ':'
        || coalesce(current_setting('booking.correlation_id', true), ''));
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION notify_order_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('booking_changes', 'o:' || NEW.id || ':' || NEW.user_id || ':'
        || coalesce(current_setting('booking.correlation_id', true), ''));
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER products_stock_notify AFTER UPDATE OF stock ON products
    FOR EACH ROW WHEN (OLD.stock IS DISTINCT FROM NEW.stock)
    EXECUTE FUNCTION notify_product_stock()
""",
    """
CREATE TRIGGER orders_insert_notify AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION notify_order_change()
""",
    """
CREATE TRIGGER orders_status_notify AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_order_change()
""",
)


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TRIGGER orders_status_notify ON orders")
    op.execute("DROP TRIGGER orders_insert_notify ON orders")
    op.execute("DROP TRIGGER products_stock_notify ON products")
    op.execute("DROP FUNCTION notify_order_change()")
    op.execute("DROP FUNCTION notify_product_stock()")
