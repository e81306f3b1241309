"""The per-request GraphQL context: session, viewer, loaders, background tasks."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiodataloader import DataLoader
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.fastapi import BaseContext
from strawberry.types import Info as StrawberryInfo

from core.settings import Settings
from gql.errors import Unauthenticated
from services.auth import Actor

LoaderT = TypeVar("LoaderT", bound=DataLoader)
T = TypeVar("T")


class Context(BaseContext):
    """Nothing in here outlives the request."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: Settings,
        viewer: Actor | None,
        auth_error: str | None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        self.settings = settings
        self.viewer = viewer
        self.auth_error = auth_error
        self.correlation_id = correlation_id
        # One AsyncSession cannot run two statements at once, but loaders of different types
        # dispatch their batches as concurrent tasks: they take turns through this lock.
        self.db_lock = asyncio.Lock()
        self._loaders: dict[type[DataLoader], DataLoader] = {}

    def loader(self, loader_class: type[LoaderT]) -> LoaderT:
        """The request's instance of `loader_class`, made on first use."""
        loader = self._loaders.get(loader_class)
        if loader is None:
            loader = self._loaders[loader_class] = loader_class(self)
        return loader  # type: ignore[return-value]

    async def query(self, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`operation(session, ...)` with the session to itself: root fields of one document run
        concurrently, and one connection cannot run two statements at once."""
        async with self.db_lock:
            return await operation(self.session, *args, **kwargs)

    def forget_loaded(self) -> None:
        """Drop every loader (and its cache): after a write, loaded rows may be stale."""
        self._loaders.clear()

    def require_viewer(self) -> Actor:
        if self.viewer is None:
            raise Unauthenticated(self.auth_error or "authentication required")
        return self.viewer


Info = StrawberryInfo[Context, None]
