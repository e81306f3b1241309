"""The FastAPI application: `create_app()` builds one; `app` is the default instance."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from core.logging import configure_logging
from core.redis import RedisCircuit, create_redis
from core.settings import Settings, get_settings
from core.tracing import start_tracing, stop_tracing, tracing_enabled, tracing_requested
from db.embedded import resolve_database_url
from db.engine import create_db_engine, create_session_factory
from db.migrate import require_head
from gql.engine.documents import DocumentCache
from gql.engine.executor import Executor
from gql.engine.internals import graphql_schema_of
from gql.schema.build import schema
from gql.schema.queries import POINT_READS
from gql.transport.apq import PersistedQueries, load_manifest
from gql.transport.authentication import Authenticator
from gql.transport.endpoint import GRAPHQL_PATH, GraphQLEndpoint
from gql.transport.graphiql import assets_router
from gql.transport.health import router as health_router
from gql.transport.metrics import OPERATION_NAMES
from gql.transport.middleware import (
    BodyLimitMiddleware,
    CorrelationIdMiddleware,
    ErrorShieldMiddleware,
)
from gql.transport.ratelimit import RateLimiter
from gql.transport.tracing import traced
from gql.transport.websocket import GraphQLWebSocket
from services.events import EventHub, listen_dsn

logger = logging.getLogger(__name__)

__all__ = ["app", "create_app"]


class AppState(State):
    """Starlette's `State`, whose values it keeps in a dict that `__getattr__` reads: every
    read first fails the normal attribute lookup, and Python makes an AttributeError for it.
    The endpoint reads the engine, session factory and authenticator on every request (2% of
    a point read's instructions went to those errors), so values are also set as plain
    attributes, found by the normal lookup; the dict stays whole for Starlette's own reads."""

    def __setattr__(self, key: str, value: object) -> None:
        super().__setattr__(key, value)
        object.__setattr__(self, key, value)

    def __setitem__(self, key: str, value: object) -> None:
        self.__setattr__(key, value)

    def __delattr__(self, key: str) -> None:
        super().__delattr__(key)
        object.__delattr__(self, key)


class EdgeApp(FastAPI):
    """FastAPI behind our edge: `build_middleware_stack` puts the edge's layers (`edge`, set by
    `create_app`) outside FastAPI's own stack, so a GraphQL request meets only ours: FastAPI's
    error, telemetry and body-limit layers and its routing serve the other paths."""

    edge: Callable[[ASGIApp], ASGIApp] = staticmethod(lambda routes: routes)

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.state: AppState = AppState()

    def build_middleware_stack(self) -> ASGIApp:
        return self.edge(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`/graphql` goes straight into the edge, as Starlette's own `__call__` sends every
        request; FastAPI's `__call__` first asks its request telemetry whether OpenTelemetry
        is configured (environment lookups on every request, 4% of a point read's
        instructions) and is none of the GraphQL path's business: its spans are the edge's
        (gql/transport/tracing.py). Other paths and the lifespan go through FastAPI's."""
        if scope["type"] == "lifespan" or scope["path"] != GRAPHQL_PATH or self.root_path:
            await super().__call__(scope, receive, send)
            return
        await Starlette.__call__(self, scope, receive, send)


@asynccontextmanager
async def change_feed(app: FastAPI, settings: Settings, url: str) -> AsyncIterator[None]:
    """The committed changes that subscriptions push (services/events.py): one LISTEN
    connection for the whole process, on the server itself (LISTEN does not pass a
    transaction-mode pooler: EVENTS_DATABASE_URL)."""
    if settings.db_pgbouncer and not settings.events_database_url:
        logger.warning("DB_PGBOUNCER without EVENTS_DATABASE_URL: LISTEN through the pooler")
    events = EventHub(
        listen_dsn(settings.events_database_url or url),
        queue_size=settings.subscription_queue_size,
        max_subscriptions=settings.subscriptions_per_process,
    )
    app.state.events = events
    stop = asyncio.Event()
    listener = asyncio.create_task(events.run(stop))
    try:
        yield
    finally:
        stop.set()
        await listener


@asynccontextmanager
async def token_usage(
    authenticator: Authenticator, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[None]:
    """API tokens' last-used dates, written once a minute rather than on every request; the
    last ones when the app stops, then the JWT verifier's HTTP client closed."""
    stop = asyncio.Event()
    usage = asyncio.create_task(authenticator.usage.run(sessions, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await usage  # its last flush included
        await authenticator.aclose()


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    configure_logs: bool = False,
) -> FastAPI:
    """An app bound to `database_url`, else to the settings' database, else the embedded one.
    `configure_logs` makes its startup install the JSON log handler (for a served app, not for
    one inside a test run)."""
    settings = settings or get_settings()
    problems = settings.production_problems()
    if problems:
        raise RuntimeError("ENVIRONMENT=production refuses to start: " + "; ".join(problems))
    redis = create_redis(settings)
    circuit = RedisCircuit(settings.redis_retry_interval)
    traces = tracing_requested() or tracing_enabled()  # OTEL_* variables (core/tracing.py)
    manifest = (
        load_manifest(settings.persisted_queries_manifest)
        if settings.persisted_queries_manifest
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level, json=settings.log_json, force=False)
        # In the serving process: under gunicorn, each worker after the fork.
        own_tracing = traces and not tracing_enabled() and start_tracing("booking-gateway")
        if redis is None and settings.rate_limit_enabled and settings.is_production:
            logger.warning("no REDIS_URL: rate limits and persisted queries are per process")
        url = database_url or resolve_database_url(settings.database_url, settings.data_dir)
        engine = create_db_engine(url, settings)
        # A database behind the code's migrations is refused, saying what to run (db/migrate.py).
        await require_head(engine, wait=settings.db_pool_timeout)
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        try:
            async with (
                token_usage(app.state.authenticator, app.state.session_factory),
                change_feed(app, settings, url),
            ):
                yield
        finally:
            await engine.dispose()
            if redis is not None:
                await redis.aclose()
            if own_tracing:
                stop_tracing()

    app = EdgeApp(
        title="Booking GraphQL gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No redirect from `/graphql/` to `/graphql`: Starlette builds its URL from the scheme
        # and Host the server saw, `http` behind a TLS proxy (proxy headers are off, see
        # gql/transport/gunicorn_worker.py); the app builds no URL from them anywhere else.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.redis = redis
    # Tokens recently resolved, the JWT verifier (the endpoint reads it from here).
    app.state.authenticator = Authenticator.from_settings(settings)
    OPERATION_NAMES.limit = settings.metrics_max_operation_names
    graphql_schema = graphql_schema_of(schema)
    # Production: no GraphiQL and no introspection (gateways read `_service { sdl }`).
    documents = DocumentCache(graphql_schema, settings, introspection=not settings.is_production)
    app.state.documents = documents
    app.include_router(health_router)
    if not settings.is_production:
        app.include_router(assets_router())
    endpoint = partial(
        GraphQLEndpoint,
        settings=settings,
        documents=documents,
        # EXECUTOR is read here only.
        executor=Executor.chosen(graphql_schema, settings.executor, POINT_READS),
        rate_limiter=RateLimiter(settings, redis, circuit),
        persisted_queries=PersistedQueries(settings, redis, circuit, manifest=manifest),
        state=app.state,
        graphiql=not settings.is_production,
    )

    def edge(routes: ASGIApp) -> ASGIApp:
        """The layers every request meets, outermost last: the correlation ID is set before
        anything else runs; CORS sits outside the shield, so a browser can read even a
        shielded 500; the GraphQL endpoint is innermost and answers /graphql itself, other
        paths go on to FastAPI's routes (and FastAPI's own middleware)."""
        # WebSocket connections to /graphql (subscriptions) share the endpoint's documents,
        # executor, limits and authentication.
        layered: ASGIApp = GraphQLWebSocket.beside(endpoint(routes))
        layered = BodyLimitMiddleware(layered, max_bytes=settings.max_request_bytes)
        layered = ErrorShieldMiddleware(layered)
        if settings.cors_origins:
            layered = CORSMiddleware(
                layered,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Correlation-ID"],
                expose_headers=["X-Correlation-ID", "Retry-After"],  # readable on a 429
                max_age=600,
            )
        return CorrelationIdMiddleware(traced(layered) if traces else layered)

    app.edge = edge
    return app


app = create_app(configure_logs=True)
