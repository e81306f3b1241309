"""Factories for test data, written through the ORM in one committed transaction each."""

import itertools
import secrets
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import ApiToken, Order, OrderItem, OrderStatus, Product, ProductKind, User
from services.auth import hash_token, token_prefix

_sequence = itertools.count(1)


class Factory:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self.session_factory = session_factory

    async def user(
        self, *, is_admin: bool = False, name: str | None = None, subject: str | None = None
    ) -> tuple[User, str]:
        """A user and their API token (`subject`: their identity provider's `sub` too)."""
        n = next(_sequence)
        user = User(
            email=f"user{n}@example.test",
            name=name or f"User {n}",
            is_admin=is_admin,
            external_subject=subject,
        )
        async with self.session_factory() as session, session.begin():
            session.add(user)
            await session.flush()
            token = await self.api_token(user, session=session)
        return user, token

    async def api_token(
        self,
        user: User,
        *,
        expires_at: datetime | None = None,
        revoked_at: datetime | None = None,
        session: AsyncSession | None = None,
    ) -> str:
        """Another API token of `user`, stored as the service stores them (hashed)."""
        token = f"bk_test_{secrets.token_urlsafe(24)}"
        row = ApiToken(
            user_id=user.id,
            token_hash=hash_token(token),
            prefix=token_prefix(token),
            expires_at=expires_at,
            revoked_at=revoked_at,
        )
        if session is not None:
            session.add(row)
            return token
        async with self.session_factory() as own, own.begin():
            own.add(row)
        return token

    async def product(
        self,
        *,
        name: str | None = None,
        price: str = "100.00",
        currency: str = "EUR",
        stock: int = 10,
        kind: ProductKind = ProductKind.HOTEL_ROOM,
        description: str = "",
    ) -> Product:
        n = next(_sequence)
        product = Product(
            sku=f"SKU-{n:06d}",
            name=name or f"Product {n}",
            description=description,
            kind=kind,
            price=Decimal(price),
            currency=currency,
            stock=stock,
        )
        async with self.session_factory() as session, session.begin():
            session.add(product)
        return product

    async def products(self, count: int, **fields: object) -> list[Product]:
        return [await self.product(**fields) for _ in range(count)]  # type: ignore[arg-type]

    async def order(
        self,
        user: User,
        items: list[tuple[Product, int]],
        *,
        status: OrderStatus = OrderStatus.CONFIRMED,
    ) -> Order:
        currency = items[0][0].currency
        total = sum((product.price * quantity for product, quantity in items), Decimal(0))
        order = Order(user_id=user.id, status=status, total_amount=total, currency=currency)
        async with self.session_factory() as session, session.begin():
            session.add(order)
            await session.flush()
            for product, quantity in items:
                session.add(
                    OrderItem(
                        order_id=order.id,
                        product_id=product.id,
                        quantity=quantity,
                        unit_price=product.price,
                    )
                )
        return order
