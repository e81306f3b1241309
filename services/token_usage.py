"""When each API token was last used: noted in memory, written in one statement per interval."""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import ApiToken

logger = logging.getLogger(__name__)

# How often a process writes what it noted: `last_used_at` is about this late, and a busy
# process costs the database one statement per interval whatever its request rate.
FLUSH_INTERVAL_SECONDS = 60.0

_used = select(
    func.unnest(bindparam("ids", type_=ARRAY(BigInteger))).label("id"),
    func.unnest(bindparam("used_at", type_=ARRAY(DateTime(timezone=True)))).label("used_at"),
).subquery("used")
# SKIP LOCKED: a row another process is stamping right now gets nearly the same time from it,
# so no flush ever waits on another, or deadlocks with one.
_newer = (
    select(ApiToken.id, _used.c.used_at)
    .join(_used, _used.c.id == ApiToken.id)
    .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < _used.c.used_at))
    .with_for_update(of=ApiToken, skip_locked=True)
    .subquery("newer")
)
_stamp = (
    update(ApiToken)
    .where(ApiToken.id == _newer.c.id)
    .values(last_used_at=_newer.c.used_at)
    .execution_options(synchronize_session=False)
)


class TokenUsage:
    """Uses noted per token id (the latest wins), until `flush` writes them all at once."""

    def __init__(self) -> None:
        self._pending: dict[int, datetime] = {}

    def record(self, token_id: int) -> None:
        self._pending[token_id] = datetime.now(UTC)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, session_factory: async_sessionmaker[AsyncSession]) -> int:
        """Write the noted uses in one statement; how many tokens were noted. On failure the
        uses are kept for the next flush."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        ids = sorted(pending)
        try:
            async with session_factory() as session, session.begin():
                await session.execute(
                    _stamp, {"ids": ids, "used_at": [pending[token_id] for token_id in ids]}
                )
        except BaseException:
            for token_id, used_at in pending.items():
                if self._pending.get(token_id, used_at) <= used_at:
                    self._pending[token_id] = used_at
            raise
        return len(ids)

    async def run(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        stop: asyncio.Event,
        interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        """Flush every `interval` until `stop` is set, then once more. A database outage costs
        a warning per interval; the uses wait in memory."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            try:
                await self.flush(session_factory)
            except (SQLAlchemyError, OSError) as error:
                logger.warning("token last-used dates not written (%s); retrying", error)
