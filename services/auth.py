"""Who is asking: API tokens (stored hashed) resolved to an actor."""

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.compiled import compile_query, fetch
from db.models import User

TOKEN_PREFIX = "bk_"


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


_actor_by_token_hash_query = compile_query(
    select(User.id, User.is_admin).where(User.token_hash == bindparam("token_hash"))
)


class ActorCache:
    """Tokens recently resolved to an actor, each trusted for `ttl` seconds: a client sending
    many requests costs one lookup per interval instead of one round trip per request. The
    price is that a token or admin flag changed in the database takes up to `ttl` to apply.
    Unknown tokens are never kept, so a new token works at once and guesses cost a lookup
    each. Bounded: when full it starts over."""

    def __init__(
        self,
        ttl: float,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._max_size = max_size
        self._clock = clock
        self._actors: dict[str, tuple[Actor, float]] = {}  # token hash -> (actor, expiry)

    def get(self, token_hash: str) -> Actor | None:
        cached = self._actors.get(token_hash)
        if cached is None:
            return None
        actor, expires_at = cached
        if self._clock() >= expires_at:
            del self._actors[token_hash]
            return None
        return actor

    def remember(self, token_hash: str, actor: Actor) -> None:
        if self.ttl <= 0:
            return
        if len(self._actors) >= self._max_size:
            self._actors.clear()
        self._actors[token_hash] = (actor, self._clock() + self.ttl)


async def actor_for_token(
    session: AsyncSession, token: str, cache: ActorCache | None = None
) -> Actor | None:
    """The actor owning `token`, or None for an unknown token. On every authenticated request,
    hence a precompiled statement, and the `cache` when given."""
    token_hash = hash_token(token)
    if cache is not None and (actor := cache.get(token_hash)) is not None:
        return actor
    rows = await fetch(session, _actor_by_token_hash_query, token_hash=token_hash)
    if not rows:
        return None
    actor = Actor(user_id=rows[0]["id"], is_admin=rows[0]["is_admin"])
    if cache is not None:
        cache.remember(token_hash, actor)
    return actor
