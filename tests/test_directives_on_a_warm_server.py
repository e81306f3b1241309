"""@include and @skip answer by each request's variables, however warm the server: the same
document run with other values, by the same viewer or another, selects what they say."""

from typing import Any

import httpx
import pytest

from tests.conftest import EXECUTORS
from tests.factories import Factory

# Every test here runs against an app with each EXECUTOR (the `app` fixture reads `executor`):
# the reference executor's answers are what the compiled one must give.
pytestmark = pytest.mark.parametrize("executor", EXECUTORS)

# (document, how to read whether the directed selection is in a response's data)
DOCUMENTS = {
    "a field": (
        "query Inc($x: Boolean!) { orders(first: 2) { edges { node { id status @include(if: $x)"
        " } } } }",
        True,
    ),
    "a field in a named fragment": (
        "fragment F on Order { id status @skip(if: $x) }"
        " query Skip($x: Boolean!) { orders(first: 2) { edges { node { ...F } } } }",
        False,
    ),
    "a field in an inline fragment": (
        "query Inl($x: Boolean!) { orders(first: 2) { edges { node { id ... on Order {"
        " status @include(if: $x) } } } } }",
        True,
    ),
    "a nested field": (
        "query Nest($x: Boolean!) { orders(first: 2) { edges { node { id items { quantity"
        " product { name @include(if: $x) } } } } } }",
        True,
    ),
}


def _selected(data: dict[str, Any]) -> set[bool]:
    """For each order in the page: whether the directed field came back."""
    nodes = [edge["node"] for edge in data["orders"]["edges"]]
    assert nodes
    answers = set()
    for node in nodes:
        if "items" in node:
            answers |= {"name" in item["product"] for item in node["items"]}
        else:
            answers.add("status" in node)
    return answers


@pytest.mark.parametrize("case", sorted(DOCUMENTS))
async def test_include_and_skip_follow_each_requests_variables(
    client: httpx.AsyncClient, factory: Factory, case: str
) -> None:
    """Before: a completion plan compiled for the first request's values was reused for every
    later one (x false twice, then true: `status` stayed missing, for every user)."""
    query, include_when_true = DOCUMENTS[case]
    product = await factory.product()
    viewers = []
    for _ in range(2):
        user, token = await factory.user()
        await factory.order(user, [(product, 1)])
        await factory.order(user, [(product, 2)])
        viewers.append(token)
    for token, x in [
        (viewers[0], False),
        (viewers[0], False),
        (viewers[0], True),
        (viewers[1], True),
        (viewers[1], False),
        (viewers[0], True),
    ]:
        response = await client.post(
            "/graphql",
            json={"query": query, "variables": {"x": x}},
            headers={"Authorization": f"Bearer {token}"},
        )
        body = response.json()
        assert "errors" not in body, body
        assert _selected(body["data"]) == {x == include_when_true}, (x, body)


async def test_include_on_a_root_field_follows_each_requests_variables(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, token = await factory.user()
    await factory.order(user, [(await factory.product(), 1)])
    query = (
        "query Root($x: Boolean!) { me { id } orders(first: 1) @include(if: $x) { edges {"
        " node { id status } } } }"
    )
    for x in [False, False, True, False, True]:
        response = await client.post(
            "/graphql",
            json={"query": query, "variables": {"x": x}},
            headers={"Authorization": f"Bearer {token}"},
        )
        data = response.json()["data"]
        assert ("orders" in data) is x, (x, data)
        if x:
            assert data["orders"]["edges"][0]["node"]["status"]
