-- The benchmark's own objects, outside the app's migrations: seeding state, the seeded stock
-- (to reset it before write scenarios), and the two write operations as PL/pgSQL functions.
-- PostGraphile exposes the functions as custom mutations; the floor calls the same ones, so
-- both peers lock exactly as the service does (FOR UPDATE, ascending product id).
CREATE SCHEMA IF NOT EXISTS bench_pg;

CREATE TABLE IF NOT EXISTS bench_pg.seeded (
    users integer NOT NULL,
    products integer NOT NULL,
    orders integer NOT NULL,
    seed integer NOT NULL,
    max_order_id bigint NOT NULL,
    seeded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bench_pg.initial_stock (
    product_id bigint PRIMARY KEY,
    stock integer NOT NULL
);

COMMENT ON TABLE bench_pg.seeded IS E'@omit';
COMMENT ON TABLE bench_pg.initial_stock IS E'@omit';

DROP FUNCTION IF EXISTS bench_pg.place_order(bigint, bigint[], integer[], text);
DROP FUNCTION IF EXISTS bench_pg.reserve_product(bigint, bigint, integer, integer);
DROP TYPE IF EXISTS bench_pg.order_result;
DROP TYPE IF EXISTS bench_pg.reservation_result;

CREATE TYPE bench_pg.order_result AS (order_id bigint, product_id bigint, available integer);
CREATE TYPE bench_pg.reservation_result AS (
    reservation_id bigint, product_id bigint, available integer
);

-- createOrder: all lines or nothing. An order_id means success; otherwise product_id and
-- available name the first line that could not be served (InsufficientStock).
CREATE FUNCTION bench_pg.place_order(
    user_id bigint, product_ids bigint[], quantities integer[], idempotency_key text
) RETURNS bench_pg.order_result
LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
    line record;
    new_order_id bigint;
    order_currency text;
    order_total numeric(12, 2) := 0;
BEGIN
    SELECT o.id INTO new_order_id FROM orders o
     WHERE o.user_id = place_order.user_id AND o.idempotency_key = place_order.idempotency_key;
    IF FOUND THEN
        RETURN (new_order_id, NULL, NULL)::bench_pg.order_result;
    END IF;
    -- Lock every product of the order in ascending id order: no deadlock between orders that
    -- name the same products in different orders.
    FOR line IN
        SELECT p.id, p.stock, p.price, p.currency, r.quantity
          FROM products p
          JOIN unnest(product_ids, quantities) AS r(product_id, quantity) ON r.product_id = p.id
         ORDER BY p.id
           FOR UPDATE OF p
    LOOP
        IF line.stock < line.quantity THEN
            RETURN (NULL, line.id, line.stock)::bench_pg.order_result;
        END IF;
        order_currency := coalesce(order_currency, line.currency);
        order_total := order_total + line.price * line.quantity;
    END LOOP;
    IF order_currency IS NULL THEN
        RETURN (NULL, product_ids[1], 0)::bench_pg.order_result;
    END IF;
    UPDATE products p SET stock = p.stock - r.quantity, updated_at = now()
      FROM unnest(product_ids, quantities) AS r(product_id, quantity)
     WHERE p.id = r.product_id;
    INSERT INTO orders (user_id, status, total_amount, currency, idempotency_key)
    VALUES (place_order.user_id, 'PENDING', order_total, order_currency,
            place_order.idempotency_key)
    RETURNING id INTO new_order_id;
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT new_order_id, p.id, r.quantity, p.price
      FROM unnest(product_ids, quantities) AS r(product_id, quantity)
      JOIN products p ON p.id = r.product_id
     ORDER BY p.id;
    INSERT INTO notifications (kind, payload)
    VALUES ('order.created', jsonb_build_object('order_id', new_order_id));
    RETURN (new_order_id, NULL, NULL)::bench_pg.order_result;
END
$$;

-- reserveProduct: hold `quantity` units for `ttl_seconds`, taking them from stock now.
CREATE FUNCTION bench_pg.reserve_product(
    user_id bigint, product_id bigint, quantity integer, ttl_seconds integer
) RETURNS bench_pg.reservation_result
LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
    current_stock integer;
    new_id bigint;
BEGIN
    SELECT p.stock INTO current_stock FROM products p
     WHERE p.id = reserve_product.product_id FOR UPDATE;
    IF NOT FOUND OR current_stock < quantity THEN
        RETURN (NULL, reserve_product.product_id, coalesce(current_stock, 0))
            ::bench_pg.reservation_result;
    END IF;
    UPDATE products p SET stock = p.stock - quantity, updated_at = now()
     WHERE p.id = reserve_product.product_id;
    INSERT INTO reservations (user_id, product_id, quantity, status, expires_at)
    VALUES (reserve_product.user_id, reserve_product.product_id, quantity, 'HELD',
            now() + make_interval(secs => ttl_seconds))
    RETURNING id INTO new_id;
    RETURN (new_id, NULL, NULL)::bench_pg.reservation_result;
END
$$;
