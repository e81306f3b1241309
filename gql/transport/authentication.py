"""Who is asking: the viewer of a request, from its `Authorization` header."""

from dataclasses import dataclass

from gql.schema.context import Context
from services.auth import Actor, ActorCache, actor_for_token, is_well_formed_token

MAX_TOKEN_LENGTH = 200


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
