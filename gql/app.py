"""The FastAPI application: `create_app()` builds one; `app` is the default instance."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from strawberry.fastapi import GraphQLRouter
from strawberry.http import GraphQLHTTPResponse, process_result
from strawberry.types import ExecutionResult

from core.settings import Settings, get_settings
from db.embedded import resolve_database_url
from db.engine import create_engine, create_session_factory
from gql.deps import get_context
from gql.errors import with_codes
from gql.schema import schema

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
        schema,
        path="/graphql",
        context_getter=get_context,
        graphql_ide=None if settings.is_production else "graphiql",
    )
    app.include_router(router)
    return app


app = create_app()
