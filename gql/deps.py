"""FastAPI dependencies of the GraphQL route, declared once as `Annotated` aliases."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.correlation import current_correlation_id
from core.settings import Settings
from gql.context import Context
from services.auth import Actor, ActorCache, actor_for_token, is_well_formed_token

MAX_TOKEN_LENGTH = 200


async def get_settings(request: Request) -> Settings:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread per request.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True, slots=True)
class Viewer:
    actor: Actor | None
    error: str | None = None


INVALID_TOKEN = "invalid API token"


async def authenticate(context: Context, header: str | None, actors: ActorCache | None) -> None:
    """Set the context's viewer from `Authorization: Bearer <token>`; anonymous without the
    header. Called once the body has been read, so that no pooled connection waits on a slow
    client; a token that cannot be one of ours is refused without a round trip. A bad header
    is remembered, so fields that need a viewer can say what was wrong with it."""
    viewer = await _viewer_for(context, header, actors)
    context.viewer = viewer.actor
    context.auth_error = viewer.error


async def _viewer_for(context: Context, header: str | None, actors: ActorCache | None) -> Viewer:
    if not header:
        return Viewer(actor=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return Viewer(actor=None, error="malformed Authorization header: use 'Bearer <token>'")
    if not is_well_formed_token(token):
        return Viewer(actor=None, error=INVALID_TOKEN)
    async with context.session_turn() as session:
        actor = await actor_for_token(session, token, actors)
    if actor is None:
        return Viewer(actor=None, error=INVALID_TOKEN)
    return Viewer(actor=actor)


async def get_context(
    request: Request, settings: SettingsDep, background_tasks: BackgroundTasks
) -> Context:
    return request_context(request.app.state.session_factory, settings, background_tasks)


def request_context(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    background_tasks: BackgroundTasks,
) -> Context:
    """The GraphQL context of one request (the full route's and the fast lane's), anonymous
    until `authenticate`. Its session takes a pooled connection only at its first statement,
    and gives it back at `Context.close`, which the route awaits."""
    context = Context(
        session=session_factory(),
        settings=settings,
        viewer=None,
        auth_error=None,
        correlation_id=current_correlation_id(),
    )
    context.background_tasks = background_tasks
    return context
