"""Who is asking: API tokens (stored hashed) resolved to an actor."""

import hashlib
import secrets
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


async def actor_for_token(session: AsyncSession, token: str) -> Actor | None:
    """The actor owning `token`, or None for an unknown token. On every authenticated request,
    hence a precompiled statement."""
    rows = await fetch(session, _actor_by_token_hash_query, token_hash=hash_token(token))
    return Actor(user_id=rows[0]["id"], is_admin=rows[0]["is_admin"]) if rows else None
