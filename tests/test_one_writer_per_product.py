"""One one-statement write at a time per product within a process (`one_writer_per_product`,
services/stock.py): the others wait in line in the event loop instead of in PostgreSQL's lock
queue. The row locks still decide (tests/test_checkout.py and tests/test_reservations.py race
many clients); here, the line itself, and that both one-statement writes stand in it."""

import asyncio

import pytest

from services import stock
from tests.conftest import GraphQL
from tests.factories import Factory
from tests.test_checkout import CREATE_ORDER, pid
from tests.test_reservations import reserve


async def _entered(product_ids: list[int], log: list[str], name: str, hold: asyncio.Event) -> None:
    async with stock.one_writer_per_product(product_ids):
        log.append(name)
        await hold.wait()


async def test_writes_sharing_a_product_take_turns_first_come_first_served() -> None:
    log: list[str] = []
    holds = {name: asyncio.Event() for name in "abcd"}
    a = asyncio.create_task(_entered([1, 2], log, "a", holds["a"]))
    await asyncio.sleep(0)
    b = asyncio.create_task(_entered([2, 3], log, "b", holds["b"]))
    c = asyncio.create_task(_entered([2], log, "c", holds["c"]))
    # Waiting for product 2, b has not taken 3: a write on 3 alone goes ahead.
    d = asyncio.create_task(_entered([3], log, "d", holds["d"]))
    await asyncio.sleep(0.01)
    assert log == ["a", "d"]
    holds["d"].set()
    holds["a"].set()
    await asyncio.sleep(0.01)
    assert log == ["a", "d", "b"]
    holds["b"].set()
    await asyncio.sleep(0.01)
    assert log == ["a", "d", "b", "c"]
    holds["c"].set()
    await asyncio.gather(a, b, c, d)
    assert not stock._WRITERS  # nobody waits: no lock kept


async def test_writes_naming_products_in_any_order_never_wait_on_each_other() -> None:
    done: list[str] = []

    async def write(product_ids: list[int], name: str) -> None:
        async with stock.one_writer_per_product(product_ids):
            await asyncio.sleep(0.001)
            done.append(name)

    await asyncio.wait_for(
        asyncio.gather(*(write([1, 2, 3][:: (-1) ** n], str(n)) for n in range(20))), timeout=5
    )
    assert len(done) == 20


@pytest.mark.parametrize("write", ["reserveProduct", "createOrder"])
async def test_a_one_statement_write_waits_for_the_product_it_writes(
    write: str, factory: Factory, gql: GraphQL
) -> None:
    _, token = await factory.user()
    product = await factory.product(stock=5)
    if write == "reserveProduct":
        started = reserve(gql, token, product, 1, ttlSeconds=600)
    else:
        items = [{"productId": pid(product), "quantity": 1}]
        order_input = {"items": items, "idempotencyKey": "one-writer-per-product"}
        started = gql(CREATE_ORDER, {"input": order_input}, token=token)
    async with stock.one_writer_per_product([product.id]):
        task = asyncio.ensure_future(started)
        await asyncio.sleep(0.2)
        assert not task.done()
    answer = await asyncio.wait_for(task, timeout=10)
    assert "Success" in str(answer), answer
