"""FastAPI dependencies of the GraphQL route, declared once as `Annotated` aliases."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from core.correlation import current_correlation_id
from core.settings import Settings
from gql.context import Context
from services.auth import Actor, ActorCache, actor_for_token

MAX_TOKEN_LENGTH = 200


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_settings(request: Request) -> Settings:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread per request.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True, slots=True)
class Viewer:
    actor: Actor | None
    error: str | None = None


async def viewer_for(
    session: AsyncSession, header: str | None, actors: ActorCache | None = None
) -> Viewer:
    """The caller behind `Authorization: Bearer <token>`; anonymous without the header. A bad
    header is remembered, so fields that need a viewer can say what was wrong with it."""
    if not header:
        return Viewer(actor=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return Viewer(actor=None, error="malformed Authorization header: use 'Bearer <token>'")
    actor = await actor_for_token(session, token, actors)
    if actor is None:
        return Viewer(actor=None, error="invalid API token")
    return Viewer(actor=actor)


async def get_viewer(request: Request, session: SessionDep) -> Viewer:
    return await viewer_for(
        session, request.headers.get("authorization"), request.app.state.edge.actors
    )


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


async def get_context(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    background_tasks: BackgroundTasks,
) -> Context:
    return request_context(session, settings, viewer, background_tasks)


def request_context(
    session: AsyncSession, settings: Settings, viewer: Viewer, background_tasks: BackgroundTasks
) -> Context:
    """The GraphQL context of one request (the full route's and the fast lane's)."""
    context = Context(
        session=session,
        settings=settings,
        viewer=viewer.actor,
        auth_error=viewer.error,
        correlation_id=current_correlation_id(),
    )
    context.background_tasks = background_tasks
    return context
