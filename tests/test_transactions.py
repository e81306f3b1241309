"""The backstop of `run_in_transaction`: a real deadlock between two connections is retried,
not reported; other errors are not retried."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import Product
from db.transactions import run_in_transaction
from tests.factories import Factory


async def test_a_deadlocked_transaction_is_retried_and_both_complete(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    first, second = await factory.products(2, stock=10)
    locked = {"a": asyncio.Event(), "b": asyncio.Event()}
    attempts = {"a": 0, "b": 0}
    lock = text("SELECT stock FROM products WHERE id = :id FOR UPDATE")
    take = text("UPDATE products SET stock = stock - 1 WHERE id = :id")

    def work(
        name: str, mine: int, theirs: int, other: str
    ) -> Callable[[AsyncSession], Awaitable[None]]:
        async def run(session: AsyncSession) -> None:
            attempts[name] += 1
            await session.execute(lock, {"id": mine})
            if attempts[name] == 1:
                # Both hold one lock and want the other's: a cycle PostgreSQL must break.
                locked[name].set()
                await locked[other].wait()
            await session.execute(lock, {"id": theirs})
            await session.execute(take, {"id": mine})
            await session.execute(take, {"id": theirs})

        return run

    async def transaction(name: str, mine: int, theirs: int, other: str) -> None:
        async with session_factory() as session:
            await run_in_transaction(session, work(name, mine, theirs, other), attempts=3)

    await asyncio.gather(
        transaction("a", first.id, second.id, "b"),
        transaction("b", second.id, first.id, "a"),
    )

    assert sorted(attempts.values()) == [1, 2]
    async with session_factory() as session:
        stocks = (await session.execute(select(Product.stock).order_by(Product.id))).scalars()
        assert list(stocks) == [8, 8]


async def test_other_database_errors_are_not_retried(
    factory: Factory, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    product = await factory.product(stock=1)
    calls = 0

    async def oversell(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await session.execute(
            text("UPDATE products SET stock = stock - 5 WHERE id = :id"), {"id": product.id}
        )

    async with session_factory() as session:
        with pytest.raises(IntegrityError):
            await run_in_transaction(session, oversell, attempts=3)
        # The session is usable again after the rollback.
        assert await session.scalar(select(Product.stock).where(Product.id == product.id)) == 1
    assert calls == 1
