"""The FastAPI application: `create_app()` builds one; `app` is the default instance."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from core.logging import configure_logging
from core.redis import RedisCircuit, create_redis
from core.settings import Settings, get_settings
from db.embedded import resolve_database_url
from db.engine import create_db_engine, create_session_factory
from gql.apq import PersistedQueries, load_manifest
from gql.deps import get_context
from gql.fastlane import FastLane
from gql.graphiql import assets_router
from gql.health import router as health_router
from gql.metrics import OPERATION_NAMES
from gql.middleware import BodyLimitMiddleware, CorrelationIdMiddleware, ErrorShieldMiddleware
from gql.ratelimit import RateLimiter
from gql.router import GRAPHQL_PATH, Edge, FastJSONGraphQLRouter
from gql.schema import build_schema, schema

logger = logging.getLogger(__name__)

__all__ = ["FastJSONGraphQLRouter", "app", "create_app"]


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
    manifest = (
        load_manifest(settings.persisted_queries_manifest)
        if settings.persisted_queries_manifest
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level, json=settings.log_json, force=False)
        if redis is None and settings.rate_limit_enabled and settings.is_production:
            logger.warning("no REDIS_URL: rate limits and persisted queries are per process")
        url = database_url or resolve_database_url(settings.database_url, settings.data_dir)
        engine = create_db_engine(url, settings)
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        try:
            yield
        finally:
            await engine.dispose()
            if redis is not None:
                await redis.aclose()

    app = FastAPI(
        title="Booking GraphQL gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No redirect from `/graphql/` to `/graphql`: Starlette builds its URL from the scheme
        # and Host the server saw, `http` behind a TLS proxy (proxy headers are off, see
        # gql/worker.py); the app builds no URL from them anywhere else.
        redirect_slashes=False,
    )
    edge = Edge(
        settings=settings,
        rate_limiter=RateLimiter(settings, redis, circuit),
        persisted_queries=PersistedQueries(settings, redis, circuit, manifest=manifest),
    )
    app.state.settings = settings
    app.state.redis = redis
    app.state.edge = edge
    OPERATION_NAMES.limit = settings.metrics_max_operation_names
    # Production: no GraphiQL and no introspection (gateways read `_service { sdl }`). The
    # EXECUTOR setting is read here only; the fast lane runs the served schema's executor.
    if settings.is_production or settings.executor != "compiled":
        served_schema = build_schema(
            introspection=not settings.is_production, executor=settings.executor
        )
    else:
        served_schema = schema
    router = FastJSONGraphQLRouter(
        served_schema,
        path=GRAPHQL_PATH,
        context_getter=get_context,
        graphql_ide=None if settings.is_production else "graphiql",
        edge=edge,
    )
    app.include_router(router)
    app.include_router(health_router)
    if not settings.is_production:
        app.include_router(assets_router())
    # The last added is the outermost. The correlation ID is set before anything else runs;
    # CORS sits outside the shield, so a browser can read even a shielded 500. The fast lane
    # is innermost: all of these apply to it too.
    app.add_middleware(FastLane, schema=served_schema, edge=edge, state=app.state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(ErrorShieldMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Correlation-ID"],
            expose_headers=["X-Correlation-ID", "Retry-After"],  # readable on a 429
            max_age=600,
        )
    app.add_middleware(CorrelationIdMiddleware)
    return app


app = create_app(configure_logs=True)
