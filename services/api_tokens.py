"""API tokens as people manage them: issue one (shown once), list a user's, revoke one."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Interval, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import ApiToken, User
from services.auth import hash_token, new_token, token_prefix
from services.errors import InvalidInput


class UnknownUser(InvalidInput):
    def __init__(self, email: str) -> None:
        super().__init__(f"no user with e-mail {email!r}")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # the only time the token exists outside its holder's hands
    prefix: str
    email: str
    is_admin: bool
    new_user: bool
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class RevokedToken:
    prefix: str
    email: str


async def issue_token(
    session: AsyncSession,
    *,
    email: str,
    name: str | None = None,
    admin: bool = False,
    expires_in: timedelta | None = None,
) -> IssuedToken:
    """A new token for the user with `email`, created (a customer, or an admin with `admin`)
    when there is none. `admin` also makes an existing user an admin; without it an admin
    stays one. The expiry counts from the database's clock, like every deadline."""
    user = (
        await session.execute(select(User).where(User.email == email).with_for_update())
    ).scalar_one_or_none()
    new_user = user is None
    if user is None:
        user = User(email=email, name=name or email.partition("@")[0], is_admin=admin)
        session.add(user)
        await session.flush()
    elif admin and not user.is_admin:
        user.is_admin = True
    token = new_token()
    expires_at = None if expires_in is None else func.now() + bindparam("ttl", expires_in, Interval)
    row = (
        await session.execute(
            insert(ApiToken)
            .values(
                user_id=user.id,
                token_hash=hash_token(token),
                prefix=token_prefix(token),
                expires_at=expires_at,
            )
            .returning(ApiToken.expires_at)
        )
    ).one()
    return IssuedToken(
        token=token,
        prefix=token_prefix(token),
        email=user.email,
        is_admin=user.is_admin,
        new_user=new_user,
        expires_at=row.expires_at,
    )


async def list_tokens(session: AsyncSession, *, email: str) -> list[TokenInfo]:
    """Every token of the user with `email`, revoked and expired ones too, oldest first."""
    user_id = await session.scalar(select(User.id).where(User.email == email))
    if user_id is None:
        raise UnknownUser(email)
    rows = await session.execute(
        select(
            ApiToken.prefix,
            ApiToken.created_at,
            ApiToken.expires_at,
            ApiToken.last_used_at,
            ApiToken.revoked_at,
        )
        .where(ApiToken.user_id == user_id)
        .order_by(ApiToken.created_at, ApiToken.id)
    )
    return [TokenInfo(*row) for row in rows]


async def revoke_token(session: AsyncSession, *, prefix: str) -> RevokedToken | None:
    """End the live token named `prefix`; None when there is none (unknown, or revoked
    already). Processes that resolved it lately trust it for up to AUTH_CACHE_SECONDS more."""
    row = (
        await session.execute(
            update(ApiToken)
            .where(ApiToken.prefix == prefix, ApiToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiToken.user_id)
        )
    ).one_or_none()
    if row is None:
        return None
    email = await session.scalar(select(User.email).where(User.id == row.user_id))
    assert email is not None  # the foreign key
    return RevokedToken(prefix=prefix, email=email)
