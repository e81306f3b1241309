"""The FastAPI application: `create_app()` builds one; `app` is the default instance."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.http.base import BaseRequestProtocol
from strawberry.types import ExecutionResult

from core.settings import Settings, get_settings
from db.embedded import resolve_database_url
from db.engine import create_engine, create_session_factory
from gql.deps import get_context
from gql.errors import with_codes
from gql.graphiql import assets_router, graphiql_html
from gql.schema import build_schema, schema

logger = logging.getLogger(__name__)


class FastJSONGraphQLRouter(GraphQLRouter[object, None]):
    """Strawberry's router with orjson on the hot paths of every request, and every error
    given its stable code."""

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        result.errors = with_codes(result.errors)
        return process_result(result)

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        # A browser opening a shared link (`/graphql?query=…`) gets GraphiQL with the query in
        # its editor; API clients (no text/html in Accept) still get the result of a GET.
        return super().should_render_graphql_ide(request) or (
            self.graphql_ide is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
        )

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # Strawberry's page loads GraphiQL from a CDN; ours from this server (gql.graphiql).
        return HTMLResponse(graphiql_html())


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> FastAPI:
    """An app bound to `database_url`, else to the settings' database, else the embedded one."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = database_url or resolve_database_url(settings.database_url, settings.data_dir)
        engine = create_engine(url, settings)
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Booking GraphQL gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    router = FastJSONGraphQLRouter(
        # Production: no GraphiQL and no introspection (gateways read `_service { sdl }`).
        build_schema(introspection=False) if settings.is_production else schema,
        path="/graphql",
        context_getter=get_context,
        graphql_ide=None if settings.is_production else "graphiql",
    )
    app.include_router(router)
    if not settings.is_production:
        app.include_router(assets_router())
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Correlation-ID"],
            expose_headers=["X-Correlation-ID"],
            max_age=600,
        )
    return app


app = create_app()
