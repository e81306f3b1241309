"""place_order_from_stock: an order taken from stock alone, placed by one statement

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The common order (items from stock, no holds to check out) as one call that is its own
# transaction (services/checkout.py, `create_order_in_one_statement`): the same steps as the
# ORM path, in the same order, with the locks held for this call only instead of across six
# round trips. Every case but the plain success (an earlier order with the key, an unknown
# product, two currencies, too few units, a total too large) returns no row and writes
# nothing: the ORM path then runs and answers it (replay, typed errors, lapsed holds
# reclaimed), so the rules of those cases live in one place. The outbox payload is the ORM
# path's (`_announcement`); a differential test compares both paths' rows.
_CREATE = """
CREATE FUNCTION place_order_from_stock(
    p_user_id bigint,
    p_idempotency_key text,
    p_lock_name text,
    p_status text,
    p_product_ids bigint[],
    p_quantities integer[],
    p_max_total numeric,
    p_correlation_id text,
    p_trace_context text
) RETURNS TABLE (
    placed_id bigint,
    placed_user_id bigint,
    placed_status text,
    placed_total_amount text,
    placed_currency text,
    placed_idempotency_key text,
    placed_created_at timestamptz,
    placed_updated_at timestamptz,
    id bigint,
    order_id bigint,
    product_id bigint,
    quantity integer,
    unit_price text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_found integer;
    v_currencies integer;
    v_short integer;
    v_total numeric;
    v_currency text;
    v_order orders%ROWTYPE;
BEGIN
    -- For the change triggers' notifications (migration 0005), as services.stock does.
    PERFORM set_config('booking.correlation_id', coalesce(p_correlation_id, ''), true);
    -- Same-key requests queue here, before the lookup (services.checkout.create_order).
    PERFORM pg_advisory_xact_lock(hashtextextended(p_lock_name, 0));
    IF EXISTS (
        SELECT FROM orders o
        WHERE o.user_id = p_user_id AND o.idempotency_key = p_idempotency_key
    ) THEN
        RETURN;
    END IF;
    -- The products locked in ascending id order, like every write (services/stock.py).
    SELECT count(*), count(DISTINCT p.currency), count(*) FILTER (WHERE p.stock < l.quantity),
           sum(p.price * l.quantity), min(p.currency)
      INTO v_found, v_currencies, v_short, v_total, v_currency
      FROM (
          SELECT pr.id, pr.price, pr.currency, pr.stock
            FROM products pr
           WHERE pr.id = ANY (p_product_ids)
           ORDER BY pr.id
             FOR UPDATE
      ) p
      JOIN unnest(p_product_ids, p_quantities) AS l (product_id, quantity)
        ON l.product_id = p.id;
    IF v_found <> cardinality(p_product_ids) OR v_currencies <> 1 OR v_short > 0
       OR v_total >= p_max_total THEN
        RETURN;
    END IF;
    INSERT INTO orders (user_id, status, total_amount, currency, idempotency_key)
         VALUES (p_user_id, p_status, v_total, v_currency, p_idempotency_key)
      RETURNING * INTO v_order;
    UPDATE products p
       SET stock = p.stock - l.quantity, updated_at = now()
      FROM unnest(p_product_ids, p_quantities) AS l (product_id, quantity)
     WHERE p.id = l.product_id;
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
         SELECT v_order.id, l.product_id, l.quantity, p.price
           FROM unnest(p_product_ids, p_quantities) AS l (product_id, quantity)
           JOIN products p ON p.id = l.product_id
       ORDER BY l.product_id;
    INSERT INTO notifications (kind, payload, correlation_id, trace_context)
         SELECT 'order.created',
                jsonb_build_object(
                    'orderId', v_order.id,
                    'userId', v_order.user_id,
                    'status', v_order.status,
                    'total', jsonb_build_object(
                        'amount', v_total::text, 'currency', v_order.currency),
                    'items', jsonb_agg(
                        jsonb_build_object(
                            'productId', i.product_id,
                            'quantity', i.quantity,
                            'unitPrice', i.unit_price::text)
                        ORDER BY i.id)),
                p_correlation_id,
                p_trace_context::jsonb
           FROM order_items i
          WHERE i.order_id = v_order.id;
    RETURN QUERY
        SELECT v_order.id, v_order.user_id, v_order.status::text, v_order.total_amount::text,
               v_order.currency::text, v_order.idempotency_key::text, v_order.created_at,
               v_order.updated_at, i.id, i.order_id, i.product_id, i.quantity,
               i.unit_price::text
          FROM order_items i
         WHERE i.order_id = v_order.id
      ORDER BY i.id;
END
$$
"""


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION place_order_from_stock("
        "bigint, text, text, text, bigint[], integer[], numeric, text, text)"
    )
