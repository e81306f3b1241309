"""Who is asking: API tokens (stored hashed) resolved to an actor, and the cache of actors."""

import enum
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, func, or_, select

from core.bounded import ExpiringCache
from db.compiled import Reader, compile_query, fetch
from db.models import API_TOKEN_PREFIX_LENGTH, ApiToken, User
from services.token_usage import TokenUsage

TOKEN_PREFIX = "bk_"
# Issued tokens start with their kind: `bk_api_` from `python -m services.tokens issue`,
# `bk_demo_` from the demo seed, so a leaked one says where it came from.
API_TOKEN_KIND = "bk_api_"
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
    return API_TOKEN_KIND + secrets.token_urlsafe(30)


def token_prefix(token: str) -> str:
    """What names the token to people (`list`, `revoke`)."""
    return token[:API_TOKEN_PREFIX_LENGTH]


def is_well_formed_token(token: str) -> bool:
    return _WELL_FORMED_TOKEN.fullmatch(token) is not None


_actor_by_token_hash_query = compile_query(
    select(ApiToken.id.label("token_id"), ApiToken.expires_at, User.id, User.is_admin)
    .join(User, User.id == ApiToken.user_id)
    .where(
        ApiToken.token_hash == bindparam("token_hash"),
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
    )
)


class NotCached(enum.Enum):
    NOT_CACHED = "not cached"


NOT_CACHED = NotCached.NOT_CACHED


class ActorCache:
    """Credentials recently resolved (API tokens by hash, JWT subjects), each answer trusted
    for `ttl` seconds: a client sending many requests costs one lookup per interval instead of
    one round trip per request. The price is that a token or admin flag changed in the
    database takes up to `ttl` to apply. Unknown keys are remembered too, apart, so a client
    repeating a bad token costs no more than one with a good one, and a flood of made-up tokens
    cannot push the real ones out (a token is random: none is refused for having been guessed
    before it was issued). Each part is a `BoundedCache` (`core.bounded`): when full it starts
    over."""

    def __init__(
        self,
        ttl: float,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._actors: ExpiringCache[str, Actor] = ExpiringCache(max_size, clock)
        self._unknown: ExpiringCache[str, bool] = ExpiringCache(max_size, clock)

    def get(self, key: str) -> Actor | NotCached | None:
        """The actor, None for a key known to be no one's, or NOT_CACHED: look it up."""
        actor = self._actors.get(key)
        if actor is not None:
            return actor
        if self._unknown.get(key):
            return None
        return NOT_CACHED

    def remember(self, key: str, actor: Actor | None, *, at_most: float | None = None) -> None:
        """Keep the answer for `ttl` seconds, or `at_most` if shorter (a token expiring)."""
        ttl = self.ttl if at_most is None else min(self.ttl, at_most)
        if actor is None:
            self._unknown.put(key, True, ttl)
        else:
            self._actors.put(key, actor, ttl)


async def actor_for_token(
    token: str,
    *,
    reads: AbstractAsyncContextManager[Reader],
    cache: ActorCache | None = None,
    usage: TokenUsage | None = None,
) -> Actor | None:
    """The actor owning `token`, or None for an unknown, expired or revoked token. On every
    authenticated request, hence a precompiled statement in a `reads` turn, entered only when
    the `cache` (when given) does not hold the answer (so a revoked token stops working within
    its ttl). Each lookup that finds the token tells `usage`, which writes last-used dates in
    batches, never one per request."""
    token_hash = hash_token(token)
    if cache is not None:
        cached = cache.get(token_hash)
        if not isinstance(cached, NotCached):
            return cached
    async with reads as reader:
        rows = await fetch(reader, _actor_by_token_hash_query, token_hash=token_hash)
    if not rows:
        if cache is not None:
            cache.remember(token_hash, None)
        return None
    row = rows[0]
    actor = Actor(user_id=row["id"], is_admin=row["is_admin"])
    if usage is not None:
        usage.record(row["token_id"])
    if cache is not None:
        expires_at: datetime | None = row["expires_at"]
        left = None if expires_at is None else (expires_at - datetime.now(UTC)).total_seconds()
        cache.remember(token_hash, actor, at_most=left)
    return actor
