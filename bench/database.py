"""The benchmark database: embedded (in .data/bench) or given, migrated, seeded once, and put
back into its seeded state before each write scenario."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from db.embedded import start_embedded_postgres, to_async_url
from db.migrate import upgrade_to_head
from db.seed import seed_database

logger = logging.getLogger(__name__)

FUNCTIONS_SQL = Path(__file__).resolve().parent / "pg_functions.sql"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BenchDatabase:
    url: str  # SQLAlchemy style (postgresql+asyncpg://), what the service's DATABASE_URL takes
    log_path: Path | None  # the server log, when we can read it (embedded): SQL counting
    data_directory: Path | None

    @property
    def dsn(self) -> str:
        """libpq style, for asyncpg and node-postgres."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(False)

    @property
    def node_dsn(self) -> str:
        """For node-postgres, which wants a unix socket directory unescaped in `host`."""
        url = make_url(self.url)
        socket_dir = url.query.get("host")
        if not socket_dir or url.host:
            return self.dsn
        password = f":{url.password}" if url.password else ""
        return f"postgres://{url.username or ''}{password}@/{url.database}?host={socket_dir}"

    @property
    def postmaster_pid(self) -> int | None:
        if self.data_directory is None:
            return None
        try:
            return int((self.data_directory / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` on a fresh connection (the harness itself is synchronous)."""

        async def main() -> T:
            connection = await asyncpg.connect(
                self.dsn, server_settings={"application_name": "bench-harness"}
            )
            try:
                return await work(connection)
            finally:
                await connection.close()

        return asyncio.run(main())

    def fetchval(self, query: str, *args: Any) -> Any:
        return self.run(lambda connection: connection.fetchval(query, *args))

    def execute(self, query: str, *args: Any) -> None:
        self.run(lambda connection: connection.execute(query, *args))


def statements_executed(db: BenchDatabase) -> int | None:
    """Statements run so far in this database per pg_stat_statements, when it is installed
    (a non-embedded database; the embedded one has no such extension: the harness counts its
    log instead). This query itself is counted by the next call."""

    async def total(connection: asyncpg.Connection) -> int | None:
        try:
            value = await connection.fetchval(
                "SELECT sum(calls) FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        except asyncpg.PostgresError:
            return None
        return int(value or 0)

    return db.run(total)


def open_database(database_url: str | None, data_dir: Path) -> BenchDatabase:
    """The given database, else the embedded one in `data_dir` (started, kept for this run)."""
    if database_url:
        return BenchDatabase(to_async_url(database_url), log_path=None, data_directory=None)
    url = start_embedded_postgres(data_dir, database="bench")
    pgdata = (data_dir / "pg").resolve()
    return BenchDatabase(url, log_path=pgdata / "log", data_directory=pgdata)


def prepare(db: BenchDatabase, *, users: int, products: int, orders: int, seed: int) -> None:
    """Migrate, install the bench functions, and seed unless already seeded with these sizes."""
    upgrade_to_head(db.url)
    db.execute(FUNCTIONS_SQL.read_text())
    wanted = (users, products, orders, seed)
    seeded = db.run(
        lambda c: c.fetchrow("SELECT users, products, orders, seed FROM bench_pg.seeded")
    )
    if seeded is not None and tuple(seeded) == wanted:
        logger.info("bench database already seeded %s", wanted)
        reset_writes(db)
        return
    logger.info("seeding %d users, %d products, %d orders (seed %d)", *wanted)
    asyncio.run(
        seed_database(db.url, users=users, products=products, orders=orders, seed=seed, reset=True)
    )

    async def remember(connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            await connection.execute("TRUNCATE bench_pg.seeded, bench_pg.initial_stock")
            await connection.execute(
                "INSERT INTO bench_pg.initial_stock SELECT id, stock FROM products"
            )
            await connection.execute(
                "INSERT INTO bench_pg.seeded (users, products, orders, seed, max_order_id) "
                "SELECT $1, $2, $3, $4, coalesce(max(id), 0) FROM orders",
                *wanted,
            )

    db.run(remember)


def reset_writes(db: BenchDatabase) -> None:
    """Undo what write scenarios did: their orders, holds and outbox rows go, stock comes back."""

    async def reset(connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            max_order_id = await connection.fetchval("SELECT max_order_id FROM bench_pg.seeded")
            await connection.execute("DELETE FROM reservations")
            await connection.execute("DELETE FROM notifications")
            await connection.execute("DELETE FROM order_items WHERE order_id > $1; ", max_order_id)
            await connection.execute("DELETE FROM orders WHERE id > $1", max_order_id)
            await connection.execute(
                "UPDATE products p SET stock = s.stock FROM bench_pg.initial_stock s "
                "WHERE s.product_id = p.id AND p.stock <> s.stock"
            )

    db.run(reset)


def products_in_stock(db: BenchDatabase, *, at_least: int) -> list[int]:
    rows = db.run(
        lambda c: c.fetch(
            "SELECT product_id FROM bench_pg.initial_stock WHERE stock >= $1 ORDER BY product_id",
            at_least,
        )
    )
    return [row[0] for row in rows]


def set_stock(db: BenchDatabase, product_id: int, stock: int) -> None:
    db.execute("UPDATE products SET stock = $2 WHERE id = $1", product_id, stock)


@dataclass(frozen=True, slots=True)
class StockCheck:
    stock: int
    held: int
    holds: int
    initial: int

    @property
    def oversold(self) -> bool:
        return self.stock < 0 or self.stock + self.held != self.initial


def check_stock(db: BenchDatabase, product_id: int, initial: int) -> StockCheck:
    """Stock and live holds of a product: together they must still equal what it started with."""
    row = db.run(
        lambda c: c.fetchrow(
            "SELECT p.stock, coalesce(sum(r.quantity), 0) AS held, count(r.id) AS holds "
            "FROM products p LEFT JOIN reservations r ON r.product_id = p.id "
            "AND r.status IN ('HELD', 'CONFIRMED') WHERE p.id = $1 GROUP BY p.stock",
            product_id,
        )
    )
    return StockCheck(int(row["stock"]), int(row["held"]), int(row["holds"]), initial)
