"""The floor: the benchmark operations served by bare Starlette + asyncpg + orjson, each with
one hand-written SQL statement that builds the whole JSON response (`json_agg`) in PostgreSQL.

It accepts the same GraphQL POST bodies as the service (it dispatches on `operationName` and
never parses the document) and answers with the same JSON, so wrk drives both alike. It is the
speed a GraphQL layer could at best approach on this machine, not a GraphQL server.

    DATABASE_URL=... gunicorn -c gunicorn.conf.py bench.floor:app
"""

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.settings import get_settings


def _global_id(type_name: str, column: str) -> str:
    """SQL for the service's Relay ID: unpadded URL-safe base64 of "Type:id"."""
    return (
        f"translate(encode(convert_to('{type_name}:' || {column}, 'UTF8'), 'base64'), "
        f"E'+/=\\n', '-_')"
    )


def _cursor(json_array_sql: str) -> str:
    """SQL for an opaque cursor: unpadded URL-safe base64 of a compact JSON array."""
    return f"translate(encode(convert_to({json_array_sql}, 'UTF8'), 'base64'), E'+/=\\n', '-_')"


# The user of the API token $1, as the service resolves it (services/auth.py).
_VIEWER = (
    "SELECT user_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
    " AND (expires_at IS NULL OR expires_at > now())"
)

_PRODUCT_CURSOR = _cursor(
    """format('["products:PRICE_ASC",%s,%s,%s]', to_json(currency), to_json(price::text), id)"""
)
_ORDER_CURSOR = _cursor("""format('["orders",%s]', id)""")

PRODUCTS_PAGE = f"""
WITH page AS (
    SELECT p.*, row_number() OVER (ORDER BY p.currency, p.price, p.id) AS n
      FROM (SELECT id, name, kind, price, currency, stock FROM products
             ORDER BY currency, price, id LIMIT $1 + 1) p
), edges AS (
    SELECT n, {_PRODUCT_CURSOR} AS cursor,
           id, name, kind, price, currency, stock
      FROM page WHERE n <= $1
)
SELECT json_build_object('data', json_build_object('products', json_build_object(
    'edges', coalesce((SELECT json_agg(json_build_object(
        'cursor', cursor,
        'node', json_build_object(
            'id', {_global_id("Product", "id")}, 'name', name, 'kind', kind,
            'price', json_build_object('amount', price::text, 'currency', currency),
            'stock', stock)) ORDER BY n) FROM edges), '[]'),
    'pageInfo', json_build_object(
        'hasNextPage', (SELECT count(*) > $1 FROM page),
        'endCursor', (SELECT cursor FROM edges ORDER BY n DESC LIMIT 1)))))::text
"""

ORDER_HISTORY = f"""
WITH viewer AS ({_VIEWER}),
page AS (
    SELECT o.id, o.status, o.created_at, o.total_amount, o.currency FROM orders o
     WHERE o.user_id = (SELECT user_id FROM viewer) ORDER BY o.id DESC LIMIT $2 + 1
), shown AS (SELECT * FROM page ORDER BY id DESC LIMIT $2)
SELECT CASE WHEN EXISTS (SELECT 1 FROM viewer) THEN
json_build_object('data', json_build_object('orders', json_build_object(
    'edges', coalesce((SELECT json_agg(json_build_object('node', json_build_object(
        'id', {_global_id("Order", "o.id")}, 'status', o.status, 'createdAt', o.created_at,
        'total', json_build_object('amount', o.total_amount::text, 'currency', o.currency),
        'items', (SELECT coalesce(json_agg(json_build_object(
                'quantity', i.quantity,
                'unitPrice', json_build_object('amount', i.unit_price::text,
                                               'currency', o.currency),
                'product', json_build_object('id', {_global_id("Product", "p.id")},
                                             'name', p.name)) ORDER BY i.id), '[]')
            FROM order_items i JOIN products p ON p.id = i.product_id
           WHERE i.order_id = o.id))) ORDER BY o.id DESC) FROM shown o), '[]'),
    'pageInfo', json_build_object(
        'hasNextPage', (SELECT count(*) > $2 FROM page),
        'endCursor', (SELECT {_ORDER_CURSOR}
                        FROM shown ORDER BY id LIMIT 1)))))::text
END
"""

PRODUCT_BY_ID = f"""
SELECT json_build_object('data', json_build_object('product', (
    SELECT json_build_object(
        'id', {_global_id("Product", "id")}, 'sku', sku, 'name', name,
        'description', description, 'kind', kind,
        'price', json_build_object('amount', price::text, 'currency', currency),
        'stock', stock)
      FROM products WHERE id = $1)))::text
"""

CREATE_ORDER = f"""
SELECT CASE WHEN r.order_id IS NOT NULL THEN
    json_build_object('data', json_build_object('createOrder', json_build_object(
        '__typename', 'CreateOrderSuccess',
        'order', json_build_object('id', {_global_id("Order", "r.order_id")}))))
ELSE
    json_build_object('data', json_build_object('createOrder', json_build_object(
        '__typename', 'InsufficientStock', 'available', r.available)))
END::text
  FROM bench_pg.place_order(({_VIEWER}), $2, $3, $4) r
"""

RESERVE_PRODUCT = f"""
SELECT CASE WHEN r.reservation_id IS NOT NULL THEN
    json_build_object('data', json_build_object('reserveProduct', json_build_object(
        '__typename', 'ReserveProductSuccess',
        'reservation', json_build_object(
            'id', {_global_id("Reservation", "r.reservation_id")}))))
ELSE
    json_build_object('data', json_build_object('reserveProduct', json_build_object(
        '__typename', 'InsufficientStock', 'available', r.available)))
END::text
  FROM bench_pg.reserve_product(({_VIEWER}), $2, $3, $4) r
"""


class ClientError(Exception):
    """A request the floor cannot answer: a GraphQL-shaped error, like the service's."""

    def __init__(self, message: str, code: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _row_id(global_id: object, type_name: str) -> int:
    if not isinstance(global_id, str):
        raise ClientError("malformed ID", "BAD_USER_INPUT")
    try:
        decoded = base64.urlsafe_b64decode(global_id + "=" * (-len(global_id) % 4)).decode()
        name, _, raw = decoded.partition(":")
        row_id = int(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ClientError("malformed ID", "BAD_USER_INPUT") from exc
    if name != type_name:
        raise ClientError(f"ID is not a {type_name} ID", "BAD_USER_INPUT")
    return row_id


def _token_hash(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ClientError("this field needs an API token", "UNAUTHENTICATED")
    return hashlib.sha256(token.strip().encode()).hexdigest()


Handler = Callable[[asyncpg.Connection, Request, dict[str, Any]], Awaitable[str | None]]


async def _products_page(
    connection: asyncpg.Connection, request: Request, variables: dict[str, Any]
) -> str | None:
    result: str | None = await connection.fetchval(PRODUCTS_PAGE, 20)
    return result


async def _order_history(
    connection: asyncpg.Connection, request: Request, variables: dict[str, Any]
) -> str | None:
    result: str | None = await connection.fetchval(ORDER_HISTORY, _token_hash(request), 20)
    if result is None:
        raise ClientError("invalid API token", "UNAUTHENTICATED")
    return result


async def _product_by_id(
    connection: asyncpg.Connection, request: Request, variables: dict[str, Any]
) -> str | None:
    product_id = _row_id(variables.get("id"), "Product")
    result: str | None = await connection.fetchval(PRODUCT_BY_ID, product_id)
    return result


async def _create_order(
    connection: asyncpg.Connection, request: Request, variables: dict[str, Any]
) -> str | None:
    token_hash = _token_hash(request)
    payload = variables.get("input") or {}
    items = payload.get("items") or []
    product_ids = [_row_id(item.get("productId"), "Product") for item in items]
    quantities = [int(item.get("quantity", 0)) for item in items]
    key = str(payload.get("idempotencyKey", ""))
    result: str | None = await connection.fetchval(
        CREATE_ORDER, token_hash, product_ids, quantities, key
    )
    return result


async def _reserve_product(
    connection: asyncpg.Connection, request: Request, variables: dict[str, Any]
) -> str | None:
    token_hash = _token_hash(request)
    payload = variables.get("input") or {}
    product_id = _row_id(payload.get("productId"), "Product")
    quantity = int(payload.get("quantity", 1))
    ttl = int(payload.get("ttlSeconds") or 900)
    result: str | None = await connection.fetchval(
        RESERVE_PRODUCT, token_hash, product_id, quantity, ttl
    )
    return result


HANDLERS: dict[str, Handler] = {
    "ProductsPage": _products_page,
    "OrderHistory": _order_history,
    "ProductById": _product_by_id,
    "CreateOrder": _create_order,
    "ReserveProduct": _reserve_product,
}


def _error(message: str, code: str, status: int = 200) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def graphql(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error("the body is not JSON", "BAD_REQUEST", 400)
    if not isinstance(body, dict):
        return _error("the body is not a JSON object", "BAD_REQUEST", 400)
    handler = HANDLERS.get(body.get("operationName") or "")
    if handler is None:
        return _error("the floor knows only the benchmark operations", "BAD_REQUEST", 400)
    pool: asyncpg.Pool = request.app.state.pool
    try:
        async with pool.acquire() as connection:
            result = await handler(connection, request, body.get("variables") or {})
    except ClientError as error:
        return _error(str(error), error.code, error.status)
    return Response(result, media_type="application/json")


async def _keep_as_is(connection: asyncpg.Connection) -> None:
    """The floor leaves no session state behind, so it skips asyncpg's reset query on release
    (one more statement per request)."""


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings = get_settings()
    if not settings.database_url:
        raise RuntimeError("the floor needs DATABASE_URL")
    dsn = make_url(settings.database_url).set(drivername="postgresql")
    # As many connections as the service's pool may open (pool size + overflow).
    app.state.pool = await asyncpg.create_pool(
        dsn.render_as_string(hide_password=False),
        min_size=settings.db_pool_size,
        max_size=settings.db_pool_size + settings.db_max_overflow,
        server_settings={"application_name": "bench-floor", "timezone": "UTC"},
        reset=_keep_as_is,
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(routes=[Route("/graphql", graphql, methods=["POST"])], lifespan=lifespan)
