"""The benchmark operations: for each scenario, the request body each target is sent.

Keep these stable: before/after numbers are only comparable on the same operations. `ours` and
the floor get the same documents (the floor dispatches on operationName); PostGraphile gets the
equivalent query in its own schema naming.

A body template may hold two placeholders that the wrk script (bench/wrk/graphql.lua) fills
per request: @@VALUE@@ (the next line of the scenario's values, e.g. product IDs) and @@KEY@@
(unique per request, for idempotency keys).
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from db.seed import demo_token

VALUE = "@@VALUE@@"
KEY = "@@KEY@@"
TARGETS = ("floor", "ours", "postgraphile")
GRAPHQL_TARGETS = ("ours", "floor")  # speak the service's schema

PRODUCTS_PAGE = """query ProductsPage {
  products(first: 20, orderBy: PRICE_ASC) {
    edges { cursor node { id name kind price { amount currency } stock } }
    pageInfo { hasNextPage endCursor }
  }
}"""
PRODUCTS_PAGE_PG = """query ProductsPage {
  allProducts(first: 20, orderBy: [CURRENCY_ASC, PRICE_ASC, ID_ASC]) {
    edges { cursor node { id name kind price currency stock } }
    pageInfo { hasNextPage endCursor }
  }
}"""

ORDER_HISTORY = """query OrderHistory {
  orders(first: 20) {
    edges {
      node {
        id status createdAt total { amount currency }
        items { quantity unitPrice { amount currency } product { id name } }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""
ORDER_HISTORY_PG = """query OrderHistory($userId: BigInt!) {
  userById(id: $userId) {
    ordersByUserId(first: 20, orderBy: ID_DESC) {
      edges {
        node {
          id status createdAt totalAmount currency
          orderItemsByOrderId(orderBy: ID_ASC) {
            nodes { quantity unitPrice productByProductId { id name } }
          }
        }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""

PRODUCT_BY_ID = """query ProductById($id: ID!) {
  product(id: $id) { id sku name description kind price { amount currency } stock }
}"""
PRODUCT_BY_ID_PG = """query ProductById($id: BigInt!) {
  productById(id: $id) { id sku name description kind price currency stock }
}"""

CREATE_ORDER = """mutation CreateOrder($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on CreateOrderSuccess { order { id } }
    ... on InsufficientStock { available }
  }
}"""
CREATE_ORDER_PG = """mutation CreateOrder($input: PlaceOrderInput!) {
  placeOrder(input: $input) { orderResult { orderId productId available } }
}"""

RESERVE_PRODUCT = """mutation ReserveProduct($input: ReserveProductInput!) {
  reserveProduct(input: $input) {
    __typename
    ... on ReserveProductSuccess { reservation { id } }
    ... on InsufficientStock { available }
  }
}"""
RESERVE_PRODUCT_PG = """mutation ReserveProduct($input: ReserveProductInput!) {
  reserveProduct(input: $input) { reservationResult { reservationId productId available } }
}"""


def product_global_id(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"Product:{row_id}".encode()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Request:
    """What wrk sends for one (target, scenario): a body template and its headers."""

    body: str
    headers: dict[str, str] = field(default_factory=dict)
    values: list[str] = field(default_factory=list)
    # Substring of a response body that means "refused as data" (InsufficientStock).
    rejected_marker: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """What the scenarios need from the seeded database."""

    seed: int
    reader_index: int  # the user whose order history is read
    writer_index: int  # the user who orders and reserves
    product_ids: list[int]  # products to read by id
    orderable_ids: list[int]  # products with stock, one per createOrder request
    hot_product_id: int  # the product every reserveProduct request races for


def _body(query: str, operation: str, variables: dict[str, object] | None = None) -> str:
    payload: dict[str, object] = {"query": query, "operationName": operation}
    if variables is not None:
        payload["variables"] = variables
    return orjson.dumps(payload).decode()


def _bearer(context: Context, user_index: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {demo_token(context.seed, user_index)}"}


def products_page(target: str, context: Context) -> Request:
    if target == "postgraphile":
        return Request(_body(PRODUCTS_PAGE_PG, "ProductsPage"))
    return Request(_body(PRODUCTS_PAGE, "ProductsPage"))


def order_history(target: str, context: Context) -> Request:
    if target == "postgraphile":
        # PostGraphile has no notion of our API tokens: the user is named in the query.
        variables = {"userId": str(context.reader_index)}
        return Request(_body(ORDER_HISTORY_PG, "OrderHistory", variables))
    return Request(_body(ORDER_HISTORY, "OrderHistory"), _bearer(context, context.reader_index))


def product_by_id(target: str, context: Context) -> Request:
    if target == "postgraphile":
        values = [str(i) for i in context.product_ids]
    else:
        values = [product_global_id(i) for i in context.product_ids]
    return Request(
        _body(
            PRODUCT_BY_ID if target != "postgraphile" else PRODUCT_BY_ID_PG,
            "ProductById",
            {"id": VALUE},
        ),
        values=values,
    )


def create_order(target: str, context: Context) -> Request:
    key = f"bench-{KEY}"
    if target == "postgraphile":
        variables: dict[str, object] = {
            "input": {
                "userId": str(context.writer_index),
                "productIds": [VALUE],
                "quantities": [1],
                "idempotencyKey": key,
            }
        }
        return Request(
            _body(CREATE_ORDER_PG, "CreateOrder", variables),
            values=[str(i) for i in context.orderable_ids],
            rejected_marker='"orderId":null',
        )
    variables = {"input": {"items": [{"productId": VALUE, "quantity": 1}], "idempotencyKey": key}}
    return Request(
        _body(CREATE_ORDER, "CreateOrder", variables),
        _bearer(context, context.writer_index),
        values=[product_global_id(i) for i in context.orderable_ids],
        rejected_marker='"InsufficientStock"',
    )


def reserve_product(target: str, context: Context) -> Request:
    if target == "postgraphile":
        variables: dict[str, object] = {
            "input": {
                "userId": str(context.writer_index),
                "productId": str(context.hot_product_id),
                "quantity": 1,
                "ttlSeconds": 900,
            }
        }
        return Request(
            _body(RESERVE_PRODUCT_PG, "ReserveProduct", variables),
            rejected_marker='"reservationId":null',
        )
    variables = {
        "input": {
            "productId": product_global_id(context.hot_product_id),
            "quantity": 1,
            "ttlSeconds": 900,
        }
    }
    return Request(
        _body(RESERVE_PRODUCT, "ReserveProduct", variables),
        _bearer(context, context.writer_index),
        rejected_marker='"InsufficientStock"',
    )


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    request: Callable[[str, Context], Request]
    writes: bool = False


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("products", "products page: first 20 by price", products_page),
        Scenario(
            "order_history",
            "one user's 20 latest orders x items x product (Bearer token)",
            order_history,
        ),
        Scenario("product_by_id", "one product by id, ids varying", product_by_id),
        Scenario(
            "create_order",
            "createOrder of 1 unit, a different product and idempotency key each time",
            create_order,
            writes=True,
        ),
        Scenario(
            "reserve_product",
            "reserveProduct of 1 unit, every client on the same hot product",
            reserve_product,
            writes=True,
        ),
    )
}
