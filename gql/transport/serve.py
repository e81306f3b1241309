"""`make run`: bring up the database (embedded unless DATABASE_URL is set), migrate, seed demo
data once into the embedded database, and serve the API with uvicorn."""

import asyncio
import signal
from types import FrameType

import uvicorn
from sqlalchemy import text

from core.logging import configure_logging
from core.settings import get_settings
from db.embedded import resolve_database_url, stop_embedded_postgres
from db.engine import create_db_engine
from db.migrate import upgrade_to_head
from db.seed import demo_users, seed_database
from gql.app import create_app
from gql.transport.access_log import redact_uvicorn_access_log


async def _is_empty(url: str) -> bool:
    engine = create_db_engine(url, get_settings())
    try:
        async with engine.connect() as connection:
            return not (await connection.scalar(text("SELECT EXISTS (SELECT 1 FROM users)")))
    finally:
        await engine.dispose()


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # SIGTERM (`kill`, `docker stop`, make passing its own on) ends the process like Ctrl-C
    # does, through `finally`: uvicorn shuts down gracefully on it and then raises it again,
    # which by default would end the process on the spot, leaving the embedded PostgreSQL up.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _serve()
    finally:
        stop_embedded_postgres()


def _serve() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    url = resolve_database_url(settings.database_url, settings.data_dir)
    upgrade_to_head(url)
    # Demo users have tokens anyone can derive from the seed: only the embedded development
    # database gets them, never a database named by DATABASE_URL (use `make seed` for that).
    demo = settings.database_url is None and not settings.is_production
    if demo and asyncio.run(_is_empty(url)):
        asyncio.run(
            seed_database(
                url,
                users=settings.seed_users,
                products=settings.seed_products,
                orders=settings.seed_orders,
                seed=settings.seed,
            )
        )
        print(f"seeded demo data (seed {settings.seed})")
    print(f"\nGraphiQL: http://{settings.host}:{settings.port}/graphql")
    if demo:
        print(f"Demo tokens (seed {settings.seed}), send as 'Authorization: Bearer <token>':")
        for user in demo_users(min(3, settings.seed_users), settings.seed):
            role = "admin   " if user.is_admin else "customer"
            print(f"  {role} {user.email:<36} {user.token}")
    print(flush=True)
    redact_uvicorn_access_log()  # GET carries GraphQL variables in the query string
    uvicorn.run(
        create_app(settings, database_url=url),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through our JSON handler
        # X-Forwarded-For is believed only from TRUSTED_PROXIES, by the app
        # (gql.transport.ratelimit): uvicorn's own handling would believe it from loopback,
        # whatever that setting says.
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
