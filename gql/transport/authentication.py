"""Who is asking: the viewer of a request, from its `Authorization` header (an API token of
ours or the identity provider's JWT)."""

from dataclasses import dataclass

from core.settings import Settings
from gql.errors import SERVICE_UNAVAILABLE, UNAUTHENTICATED
from gql.schema.context import Context
from gql.transport.refusals import Refused
from services.auth import Actor, ActorCache, actor_for_token, is_well_formed_token
from services.identity import NoAccount, actor_for_jwt
from services.jwks import KeysUnavailable
from services.jwt_tokens import JwtVerifier, TokenRejected, looks_like_jwt
from services.token_usage import TokenUsage

# A JWT with a few custom claims is 1-2 KB; 8 KiB is what proxies commonly allow a header.
MAX_TOKEN_LENGTH = 8192
# RFC 6750: how a bearer-token API says the token it got is no good.
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


@dataclass(frozen=True, slots=True)
class Viewer:
    actor: Actor | None
    error: str | None = None


INVALID_TOKEN = "invalid API token"


class Authenticator:
    """What authenticating keeps between requests: the actors of API tokens and of JWT
    subjects recently resolved, the JWT verifier (None without JWT_JWKS_URL) and the tokens'
    last uses not yet written."""

    def __init__(self, settings: Settings, *, jwt: JwtVerifier | None = None) -> None:
        self.settings = settings
        self.actors = ActorCache(settings.auth_cache_seconds)
        self.subjects = ActorCache(settings.auth_cache_seconds)
        self.jwt = jwt
        self.usage = TokenUsage()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Authenticator":
        return cls(settings, jwt=JwtVerifier.from_settings(settings))

    async def aclose(self) -> None:
        if self.jwt is not None:
            await self.jwt.keys.aclose()


async def authenticate(context: Context, header: str | None, authenticator: Authenticator) -> None:
    """Set the context's viewer from `Authorization: Bearer <token>`; anonymous without the
    header. Called once the body has been read, so that no pooled connection waits on a slow
    client; a token that cannot be one of ours is refused without a round trip. A bad header
    or API token is remembered, so fields that need a viewer can say what was wrong with it; a
    JWT that fails verification is Refused (401) before any database work."""
    viewer = await _viewer_for(context, header, authenticator)
    context.viewer = viewer.actor
    context.auth_error = viewer.error


async def _viewer_for(context: Context, header: str | None, authenticator: Authenticator) -> Viewer:
    if not header:
        return Viewer(actor=None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return Viewer(actor=None, error="malformed Authorization header: use 'Bearer <token>'")
    if is_well_formed_token(token):
        actor = await actor_for_token(
            token,
            reads=context.read_turn(),
            cache=authenticator.actors,
            usage=authenticator.usage,
        )
        if actor is None:
            return Viewer(actor=None, error=INVALID_TOKEN)
        return Viewer(actor=actor)
    if authenticator.jwt is not None and looks_like_jwt(token):
        return Viewer(actor=await _jwt_actor(context, token, authenticator, authenticator.jwt))
    return Viewer(actor=None, error=INVALID_TOKEN)


async def _jwt_actor(
    context: Context, token: str, authenticator: Authenticator, verifier: JwtVerifier
) -> Actor:
    settings = authenticator.settings
    try:
        verified = await verifier.verify(token)
    except TokenRejected as rejected:
        raise _invalid_token(str(rejected)) from None
    except KeysUnavailable:
        # The token may be fine: a 401 would make a frontend sign its user out.
        raise Refused(
            503,
            SERVICE_UNAVAILABLE,
            "The identity provider's signing keys cannot be loaded; retry later",
            {"Retry-After": str(max(1, round(settings.jwt_jwks_min_refresh_seconds)))},
        ) from None
    try:
        return await actor_for_jwt(
            verified,
            reads=context.read_turn(),
            writes=context.session_turn(),
            cache=authenticator.subjects,
            auto_provision=settings.jwt_auto_provision,
            admin_role=settings.jwt_admin_role,
            attempts=settings.db_transaction_attempts,
        )
    except NoAccount as no_account:
        raise _invalid_token(str(no_account)) from None


def _invalid_token(reason: str) -> Refused:
    return Refused(
        401,
        UNAUTHENTICATED,
        f"invalid token: {reason}",
        {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE},
    )
