"""Connections both ways: `last`/`before` pages are the reversed tail of a forward walk, in
every ordering and on every connection, with the same cursors; `totalCount` is the walked count
and costs one count(*) only when selected; prices never compare across currencies."""

from decimal import Decimal
from typing import Any

import pytest

from db.models import ProductKind
from tests.conftest import GraphQL, StatementCounter, error_codes
from tests.edge_support import app_client
from tests.factories import Factory
from tests.test_reservations import reserve

PAGE = """
query Page($first: Int, $after: String, $last: Int, $before: String, $orderBy: ProductOrder!,
           $filter: ProductFilter) {
  products(first: $first, after: $after, last: $last, before: $before, orderBy: $orderBy,
           filter: $filter) {
    totalCount
    edges { cursor node { id name price { amount currency } } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""

OWN_PAGE = """
query Own($first: Int, $after: String, $last: Int, $before: String) {
  LIST(first: $first, after: $after, last: $last, before: $before) {
    totalCount
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""

ORDERINGS = ["NEWEST", "NAME_ASC", "PRICE_ASC", "PRICE_DESC"]


class Lister:
    """Walks one connection of the API, both ways, as a frontend's pager would."""

    def __init__(
        self, gql: GraphQL, query: str, field: str, token: str | None = None, **fixed: Any
    ):
        self.gql, self.query, self.field, self.token, self.fixed = gql, query, field, token, fixed

    async def page(self, **paging: Any) -> dict[str, Any]:
        body = await self.gql(self.query, {**self.fixed, **paging}, token=self.token)
        assert "errors" not in body, body
        connection: dict[str, Any] = body["data"][self.field]
        return connection

    async def forward(self, size: int) -> tuple[list[str], int]:
        ids: list[str] = []
        after = None
        while True:
            connection = await self.page(first=size, after=after)
            ids += [edge["node"]["id"] for edge in connection["edges"]]
            info = connection["pageInfo"]
            assert info["hasPreviousPage"] is (after is not None)
            if not info["hasNextPage"]:
                return ids, connection["totalCount"]
            after = info["endCursor"]

    async def backward(self, size: int) -> list[str]:
        ids: list[str] = []
        before = None
        while True:
            connection = await self.page(last=size, before=before)
            page = [edge["node"]["id"] for edge in connection["edges"]]
            ids = page + ids
            info = connection["pageInfo"]
            assert info["hasNextPage"] is (before is not None)
            # Each cursor of a backward page is the same cursor a forward walk gives.
            if page:
                assert info["startCursor"] == connection["edges"][0]["cursor"]
                assert info["endCursor"] == connection["edges"][-1]["cursor"]
            if not info["hasPreviousPage"]:
                return ids
            before = info["startCursor"]


async def catalogue(factory: Factory) -> None:
    """Products in three currencies, with repeated prices and names, so that ties (broken by
    id) fall on page boundaries."""
    for n in range(23):
        currency = ("EUR", "GBP", "JPY")[n % 3]
        price = f"{(n % 4) * 1000 + 50}.00" if currency == "JPY" else f"{20 + n % 5}.50"
        await factory.product(
            name=f"Room {n % 7}", price=price, currency=currency, kind=ProductKind.HOTEL_ROOM
        )


@pytest.mark.parametrize("order_by", ORDERINGS)
async def test_backward_pages_are_the_reversed_tail_of_a_forward_walk(
    factory: Factory, gql: GraphQL, order_by: str
) -> None:
    await catalogue(factory)
    lister = Lister(gql, PAGE, "products", orderBy=order_by)
    forward, total = await lister.forward(5)
    assert len(forward) == len(set(forward)) == total == 23
    assert await lister.backward(5) == forward
    assert await lister.backward(4) == forward
    last = await lister.page(last=3)
    assert [edge["node"]["id"] for edge in last["edges"]] == forward[-3:]
    assert (last["pageInfo"]["hasNextPage"], last["pageInfo"]["hasPreviousPage"]) == (False, True)


async def test_a_window_between_two_cursors_reads_from_either_end(
    factory: Factory, gql: GraphQL
) -> None:
    await catalogue(factory)
    lister = Lister(gql, PAGE, "products", orderBy="NAME_ASC")
    every = await lister.page(first=23)
    cursors = [edge["cursor"] for edge in every["edges"]]
    ids = [edge["node"]["id"] for edge in every["edges"]]
    head = await lister.page(first=3, after=cursors[4], before=cursors[15])
    tail = await lister.page(last=3, after=cursors[4], before=cursors[15])
    assert [edge["node"]["id"] for edge in head["edges"]] == ids[5:8]
    assert [edge["node"]["id"] for edge in tail["edges"]] == ids[12:15]
    assert head["pageInfo"]["hasNextPage"] and head["pageInfo"]["hasPreviousPage"]
    assert tail["pageInfo"]["hasNextPage"] and tail["pageInfo"]["hasPreviousPage"]


@pytest.mark.parametrize("listing", ["orders", "reservations"])
async def test_own_lists_page_both_ways_and_count(
    factory: Factory, gql: GraphQL, listing: str
) -> None:
    user, token = await factory.user()
    other, _ = await factory.user()
    product = await factory.product(stock=100)
    for _ in range(11):
        if listing == "orders":
            await factory.order(user, [(product, 1)])
        else:
            assert (await reserve(gql, token, product, 1))["__typename"] == "ReserveProductSuccess"
    await factory.order(other, [(product, 1)])  # someone else's: never listed nor counted
    lister = Lister(gql, OWN_PAGE.replace("LIST", listing), listing, token)
    forward, total = await lister.forward(4)
    assert len(forward) == total == 11
    assert await lister.backward(4) == forward
    assert await lister.backward(3) == forward


async def test_first_and_last_together_are_bad_user_input(gql: GraphQL) -> None:
    body = await gql("{ products(first: 2, last: 2) { edges { cursor } } }")
    assert error_codes(body) == ["BAD_USER_INPUT"]
    body = await gql("{ products(last: 101) { edges { cursor } } }")
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "`last` must be at most 100" in body["errors"][0]["message"]


async def test_total_count_is_one_count_only_when_selected(
    factory: Factory, gql: GraphQL, statements: StatementCounter
) -> None:
    user, token = await factory.user()
    product = await factory.product()
    await factory.product()
    await factory.order(user, [(product, 1)])
    await factory.order(user, [(product, 1)])
    without = (
        "{ products(first: 1) { edges { node { id } } }"
        " orders(first: 1) { edges { node { id } } } }"
    )
    counted = (
        "{ products(first: 1) { totalCount edges { node { id } } }"
        " orders(first: 1) { totalCount edges { node { id } } } }"
    )
    await gql(without, token=token)  # warm: the token lookup is cached from here on
    statements.reset()
    assert "errors" not in await gql(without, token=token)
    plain = list(statements.statements)
    statements.reset()
    body = await gql(counted, token=token)
    assert "errors" not in body, body
    assert body["data"]["products"]["totalCount"] == 2
    assert body["data"]["orders"]["totalCount"] == 2
    counts = [s for s in statements.statements if "count(*)" in s.lower()]
    assert len(counts) == 2, statements.statements
    assert not any("count(*)" in s.lower() for s in plain)
    assert statements.count == len(plain) + 2
    # A page that is the whole list is its own count: no statement for it.
    statements.reset()
    whole = await gql(counted.replace("first: 1", "first: 5"), token=token)
    assert whole["data"]["products"]["totalCount"] == 2
    assert whole["data"]["orders"]["totalCount"] == 2
    assert not any("count(*)" in s.lower() for s in statements.statements)


async def test_prices_are_never_compared_across_currencies(factory: Factory, gql: GraphQL) -> None:
    await catalogue(factory)
    for order_by in ("PRICE_ASC", "PRICE_DESC"):
        connection = await Lister(gql, PAGE, "products", orderBy=order_by).page(first=50)
        prices = [edge["node"]["price"] for edge in connection["edges"]]
        currencies = [price["currency"] for price in prices]
        descending = order_by == "PRICE_DESC"
        # Grouped by currency, each group in order of amount.
        assert currencies == sorted(currencies, reverse=descending)
        for currency in set(currencies):
            amounts = [Decimal(p["amount"]) for p in prices if p["currency"] == currency]
            assert amounts == sorted(amounts, reverse=descending)
    in_gbp = await Lister(
        gql, PAGE, "products", orderBy="PRICE_ASC", filter={"currency": "GBP", "maxPrice": "22"}
    ).page(first=50)
    assert in_gbp["edges"] and all(
        edge["node"]["price"]["currency"] == "GBP"
        and Decimal(edge["node"]["price"]["amount"]) <= 22
        for edge in in_gbp["edges"]
    )
    assert in_gbp["totalCount"] == len(in_gbp["edges"])
    body = await gql(PAGE, {"orderBy": "PRICE_ASC", "filter": {"minPrice": "10"}})
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert "currency" in body["errors"][0]["message"]
    body = await gql(PAGE, {"orderBy": "PRICE_ASC", "filter": {"currency": "euro"}})
    assert error_codes(body) == ["BAD_USER_INPUT"]


async def test_last_and_total_count_are_costed_like_first_and_a_page(
    gql: GraphQL, database_url: str
) -> None:
    node = "edges { node { id name sku description price { amount currency } } }"
    backward = " ".join(f"p{n}: products(last: 100) {{ {node} }}" for n in range(6))
    assert error_codes(await gql(f"{{ {backward} }}")) == ["QUERY_TOO_COMPLEX"]
    # A count walks the whole list: it costs what a default page (20) does, once per
    # connection whatever its page size: 1 + first * (its selection) + 20.
    two_counts = "{ a: products(first: 1) { totalCount } b: products(first: 9) { totalCount } }"
    one_count = "{ products(first: 5) { totalCount pageInfo { hasNextPage } } }"
    async with app_client(database_url, max_query_cost=40) as (_, client):
        refused = (await client.post("/graphql", json={"query": two_counts})).json()
        passed = (await client.post("/graphql", json={"query": one_count})).json()
    assert error_codes(refused) == ["QUERY_TOO_COMPLEX"]
    assert "estimated cost of 52;" in refused["errors"][0]["message"]  # 22 + 30
    assert "errors" not in passed, passed  # 1 + 5 * 3 + 20 = 36
