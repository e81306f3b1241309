"""Deterministic demo data: a believable travel catalogue, users with API tokens, and orders.

    python -m db.seed --users 1000 --products 10000 --orders 50000 --seed 42 [--reset]

The same arguments always give the same rows and the same tokens. Rows go in with COPY, so
100,000 orders take seconds, not minutes.
"""

import argparse
import asyncio
import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from core.settings import get_settings
from db.embedded import resolve_database_url
from db.migrate import upgrade_to_head
from db.models import API_TOKEN_PREFIX_LENGTH

logger = logging.getLogger(__name__)

CITIES = [
    "Lisbon",
    "Porto",
    "Madrid",
    "Barcelona",
    "Paris",
    "Lyon",
    "Rome",
    "Florence",
    "Venice",
    "Berlin",
    "Munich",
    "Vienna",
    "Prague",
    "Budapest",
    "Amsterdam",
    "Copenhagen",
    "Oslo",
    "Stockholm",
    "Reykjavik",
    "Dublin",
    "Edinburgh",
    "London",
    "Athens",
    "Istanbul",
    "Tokyo",
    "Kyoto",
    "Osaka",
    "New York",
    "Boston",
    "Chicago",
    "San Francisco",
    "Vancouver",
    "Lima",
]
HOTEL_BRANDS = ["Grand", "Harbour", "Old Town", "Riverside", "Skyline", "Garden", "Palace"]
ROOM_TYPES = ["Single Room", "Double Room", "Twin Room", "Junior Suite", "Family Room", "Loft"]
CABINS = ["Economy", "Premium Economy", "Business", "First"]
TOURS = [
    "Walking Tour",
    "Food Tour",
    "Museum Pass",
    "Boat Trip",
    "Day Trip",
    "Bike Tour",
    "Night Tour",
    "Cooking Class",
    "Wine Tasting",
]
CARS = ["Compact Car", "Estate Car", "SUV", "Convertible", "Minivan"]
EVENTS = ["Concert", "Opera", "Football Match", "Theatre Play", "Jazz Night", "Ballet"]
FIRST_NAMES = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Frances",
    "Linus",
    "Radia",
    "Dennis",
    "Katherine",
    "Guido",
    "Sophie",
    "Niklaus",
    "Hedy",
    "Tim",
    "Anita",
    "John",
]
LAST_NAMES = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Allen",
    "Torvalds",
    "Perlman",
    "Ritchie",
    "Johnson",
    "van Rossum",
    "Wilson",
    "Wirth",
]
# Currency and a price scale that looks right for it (JPY has no minor unit).
CURRENCIES = [("EUR", 1, 2), ("USD", 1, 2), ("GBP", 1, 2), ("JPY", 150, 0)]
ORDER_STATUSES = ["CONFIRMED"] * 7 + ["PENDING"] * 2 + ["CANCELLED"]


def demo_token(seed: int, user_index: int) -> str:
    """The API token of seeded user number `user_index` (1-based): derived, so it is stable."""
    digest = hashlib.sha256(f"booking-demo:{seed}:{user_index}".encode()).hexdigest()
    return f"bk_demo_{digest[:32]}"


@dataclass(frozen=True, slots=True)
class DemoUser:
    id: int
    email: str
    name: str
    is_admin: bool
    token: str


def demo_users(count: int, seed: int) -> list[DemoUser]:
    """User 1 is an administrator; the rest are customers."""
    rng = random.Random(seed)
    users = []
    for index in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        is_admin = index == 1
        name = "Ada Admin" if is_admin else f"{first} {last}"
        local = "admin" if is_admin else f"{first}.{last}.{index}".lower().replace(" ", "")
        users.append(
            DemoUser(index, f"{local}@example.com", name, is_admin, demo_token(seed, index))
        )
    return users


def _product_name(rng: random.Random, kind: str) -> str:
    city = rng.choice(CITIES)
    if kind == "HOTEL_ROOM":
        return f"{rng.choice(HOTEL_BRANDS)} Hotel {city}: {rng.choice(ROOM_TYPES)}"
    if kind == "FLIGHT_SEAT":
        destination = rng.choice([c for c in CITIES if c != city])
        return f"Flight {city} to {destination}: {rng.choice(CABINS)}"
    if kind == "TOUR":
        return f"{city} {rng.choice(TOURS)}"
    if kind == "CAR_RENTAL":
        return f"{rng.choice(CARS)} rental in {city}"
    return f"{rng.choice(EVENTS)} in {city}"


def _products(count: int, rng: random.Random, now: datetime) -> list[tuple[Any, ...]]:
    kinds = ["HOTEL_ROOM", "FLIGHT_SEAT", "TOUR", "CAR_RENTAL", "EVENT_TICKET"]
    rows = []
    for product_id in range(1, count + 1):
        kind = rng.choice(kinds)
        currency, scale, digits = rng.choice(CURRENCIES)
        price = Decimal(rng.randint(1500, 250000) * scale) / 100
        price = price.quantize(Decimal(1)) if digits == 0 else price
        name = _product_name(rng, kind)
        created = now - timedelta(minutes=rng.randint(0, 60 * 24 * 365))
        rows.append(
            (
                product_id,
                f"{kind[:3]}-{product_id:07d}",
                name,
                f"{name}. Free cancellation up to 24 hours before.",
                kind,
                price.quantize(Decimal("0.01")),
                currency,
                rng.randint(0, 250),
                created,
                created,
            )
        )
    return rows


def _orders(
    count: int,
    users: Sequence[DemoUser],
    products: Sequence[tuple[Any, ...]],
    rng: random.Random,
    now: datetime,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    by_currency: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for product in products:
        by_currency[product[6]].append(product)
    currencies = sorted(by_currency)
    orders, items = [], []
    item_id = 0
    for order_id in range(1, count + 1):
        currency = rng.choice(currencies)
        candidates = by_currency[currency]
        chosen = rng.sample(candidates, k=min(len(candidates), rng.randint(1, 5)))
        total = Decimal(0)
        for product in chosen:
            item_id += 1
            quantity = rng.randint(1, 4)
            total += product[5] * quantity
            items.append((item_id, order_id, product[0], quantity, product[5]))
        created = now - timedelta(minutes=(count - order_id) * 3 + rng.randint(0, 2))
        user_id = rng.choice(users).id
        status = rng.choice(ORDER_STATUSES)
        orders.append((order_id, user_id, status, total, currency, None, created, created))
    return orders, items


async def seed_database(
    url: str, *, users: int, products: int, orders: int, seed: int, reset: bool = False
) -> list[DemoUser]:
    """Fill an empty (or, with `reset`, emptied) migrated database; return the demo users."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        if reset:
            await connection.execute(
                "TRUNCATE notifications, reservations, order_items, orders, products, "
                "api_tokens, users RESTART IDENTITY CASCADE"
            )
        elif await connection.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            raise RuntimeError("database already has data; pass --reset to replace it")
        rng = random.Random(seed)
        now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        people = demo_users(users, seed)
        product_rows = _products(products, rng, now)
        order_rows, item_rows = _orders(orders, people, product_rows, rng, now)
        async with connection.transaction():
            await connection.copy_records_to_table(
                "users",
                records=[(u.id, u.email, u.name, u.is_admin, now) for u in people],
                columns=["id", "email", "name", "is_admin", "created_at"],
            )
            await connection.copy_records_to_table(
                "api_tokens",
                records=[
                    (
                        u.id,
                        hashlib.sha256(u.token.encode()).hexdigest(),
                        u.token[:API_TOKEN_PREFIX_LENGTH],
                        now,
                    )
                    for u in people
                ],
                columns=["user_id", "token_hash", "prefix", "created_at"],
            )
            await connection.copy_records_to_table(
                "products",
                records=product_rows,
                columns=[
                    "id",
                    "sku",
                    "name",
                    "description",
                    "kind",
                    "price",
                    "currency",
                    "stock",
                    "created_at",
                    "updated_at",
                ],
            )
            await connection.copy_records_to_table(
                "orders",
                records=order_rows,
                columns=[
                    "id",
                    "user_id",
                    "status",
                    "total_amount",
                    "currency",
                    "idempotency_key",
                    "created_at",
                    "updated_at",
                ],
            )
            await connection.copy_records_to_table(
                "order_items",
                records=item_rows,
                columns=["id", "order_id", "product_id", "quantity", "unit_price"],
            )
            for table in ("users", "products", "orders", "order_items"):
                await connection.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)"
                )
        await connection.execute("ANALYZE")
        return people
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = get_settings()
    parser.add_argument("--users", type=int, default=settings.seed_users)
    parser.add_argument("--products", type=int, default=settings.seed_products)
    parser.add_argument("--orders", type=int, default=settings.seed_orders)
    parser.add_argument("--seed", type=int, default=settings.seed)
    parser.add_argument("--reset", action="store_true", help="empty the tables first")
    args = parser.parse_args()
    if settings.is_production:
        # Demo users get tokens derived from the seed (the README prints the admin's): seeded
        # into production, they would be an admin account anyone can use.
        raise SystemExit(
            "db.seed: refusing to seed demo data with ENVIRONMENT=production: its users' API "
            "tokens (an admin's among them) are derivable from the seed and published"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = resolve_database_url(settings.database_url, settings.data_dir)
    upgrade_to_head(url)
    started = time.perf_counter()
    people = asyncio.run(
        seed_database(
            url,
            users=args.users,
            products=args.products,
            orders=args.orders,
            seed=args.seed,
            reset=args.reset,
        )
    )
    elapsed = time.perf_counter() - started
    print(
        f"seeded {args.users} users, {args.products} products, {args.orders} orders "
        f"in {elapsed:.1f}s"
    )
    for user in people[:3]:
        role = "admin" if user.is_admin else "customer"
        print(f"  {user.email:<40} {role:<8} token {user.token}")


if __name__ == "__main__":
    main()
