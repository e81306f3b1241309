"""Who is asking: API tokens (stored hashed) resolved to an actor."""

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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


async def user_for_token(session: AsyncSession, token: str) -> User | None:
    """The user owning `token`, or None for an unknown token."""
    result = await session.execute(select(User).where(User.token_hash == hash_token(token)))
    return result.scalar_one_or_none()
