"""Who is asking: API tokens (stored hashed) resolved to an actor."""

import enum
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.bounded import BoundedCache
from db.compiled import compile_query, fetch
from db.models import User

TOKEN_PREFIX = "bk_"
# What `new_token` makes (and the seed's and tests' tokens): the prefix and URL-safe base64.
# Anything else cannot be a token of ours, so it is refused without a database round trip.
_WELL_FORMED_TOKEN = re.compile(r"bk_[A-Za-z0-9_-]{8,128}")


@dataclass(frozen=True, slots=True)
class Actor:
    """The authenticated caller of a use case."""

    user_id: int
    is_admin: bool


def hash_token(token: str) -> str:
    # API tokens are long random strings, so a fast unsalted hash is enough to make a leaked
    # table useless while keeping the lookup an indexed equality.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(30)


def is_well_formed_token(token: str) -> bool:
    return _WELL_FORMED_TOKEN.fullmatch(token) is not None


_actor_by_token_hash_query = compile_query(
    select(User.id, User.is_admin).where(User.token_hash == bindparam("token_hash"))
)


class NotCached(enum.Enum):
    NOT_CACHED = "not cached"


NOT_CACHED = NotCached.NOT_CACHED


class ActorCache:
    """Tokens recently resolved, each answer trusted for `ttl` seconds: a client sending many
    requests costs one lookup per interval instead of one round trip per request. The price is
    that a token or admin flag changed in the database takes up to `ttl` to apply. Unknown
    tokens are remembered too, apart, so a client repeating a bad token costs no more than one
    with a good one, and a flood of made-up tokens cannot push the real ones out (a token is
    random: none is refused for having been guessed before it was issued). Each part is a
    `BoundedCache` (`core.bounded`): when full it starts over."""

    def __init__(
        self,
        ttl: float,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        # token hash -> (actor, expiry)
        self._actors: BoundedCache[str, tuple[Actor, float]] = BoundedCache(max_size)
        self._unknown: BoundedCache[str, float] = BoundedCache(max_size)  # token hash -> expiry

    def get(self, token_hash: str) -> Actor | NotCached | None:
        """The actor, None for a token known to be no one's, or NOT_CACHED: look it up."""
        now = self._clock()
        cached = self._actors.get(token_hash)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            self._actors.discard(token_hash)
        expires_at = self._unknown.get(token_hash)
        if expires_at is not None:
            if now < expires_at:
                return None
            self._unknown.discard(token_hash)
        return NOT_CACHED

    def remember(self, token_hash: str, actor: Actor | None) -> None:
        if self.ttl <= 0:
            return
        expires_at = self._clock() + self.ttl
        if actor is None:
            self._unknown.put(token_hash, expires_at)
        else:
            self._actors.put(token_hash, (actor, expires_at))


async def actor_for_token(
    session: AsyncSession, token: str, cache: ActorCache | None = None
) -> Actor | None:
    """The actor owning `token`, or None for an unknown token. On every authenticated request,
    hence a precompiled statement, and the `cache` when given."""
    token_hash = hash_token(token)
    if cache is not None:
        cached = cache.get(token_hash)
        if not isinstance(cached, NotCached):
            return cached
    rows = await fetch(session, _actor_by_token_hash_query, token_hash=token_hash)
    actor = Actor(user_id=rows[0]["id"], is_admin=rows[0]["is_admin"]) if rows else None
    if cache is not None:
        cache.remember(token_hash, actor)
    return actor
