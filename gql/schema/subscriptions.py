"""The Subscription root: committed changes of products' stock and of the viewer's orders.

Each field is an async generator over the process's `EventHub` (services/events.py). An event
says only what changed; the generator reads it now, through the request loaders (forgotten
between events, so the stock is the committed one), and graphql-core completes it through the
usual types. Between events the subscription holds no database connection."""

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Final

import strawberry

from gql.engine.selection import selection_tree
from gql.errors import ApiError, BadUserInput, Unauthenticated
from gql.schema.context import Context, Info
from gql.schema.ids import row_id_of
from gql.schema.loaders import OrderByIdLoader, ProductByIdLoader
from gql.schema.types.orders import Order, prefetch_orders
from gql.schema.types.products import Product
from services.events import (
    Event,
    EventHub,
    EventsInterrupted,
    EventStream,
    OrderChanged,
    SlowConsumer,
    StockChanged,
    SubscriptionLimitReached,
)

MAX_SUBSCRIBED_PRODUCTS: Final = 100

logger = logging.getLogger(__name__)


class SlowConsumerError(ApiError):
    code = "SLOW_CONSUMER"


class EventsInterruptedError(ApiError):
    code = "EVENTS_INTERRUPTED"


class SubscriptionLimitError(ApiError):
    code = "SUBSCRIPTION_LIMIT"


class SubscriptionContext(Context):
    """The context of one subscription, as long-lived as it: the process's event hub, the
    viewer re-checked before each event (`reauthenticate`, given by the transport, resolves
    the connection's token again through the authentication caches), and `on_drop`, called
    when the subscription's queue overflows."""

    def __init__(
        self,
        *,
        events: EventHub,
        reauthenticate: Callable[[Context], Awaitable[None]],
        on_drop: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.events = events
        self._reauthenticate = reauthenticate
        self.on_drop = on_drop

    def open_stream(
        self, *, products: frozenset[int] = frozenset(), user_id: int | None = None
    ) -> EventStream:
        try:
            return self.events.open(products=products, user_id=user_id, on_drop=self.on_drop)
        except SubscriptionLimitReached:
            raise SubscriptionLimitError(
                "This server holds as many subscriptions as it may; retry later"
            ) from None

    async def next_event(self, stream: EventStream) -> Event:
        """The next event, once the connection is back in the pool; then the viewer is
        checked again: a token revoked or expired since ends the subscription."""
        await self.release()
        try:
            event = await stream.next()
        except SlowConsumer:
            raise SlowConsumerError(
                "Events came faster than this subscription took them: subscribe again"
            ) from None
        # The connection's correlation ID is on the line; the write's, when it set one, too.
        logger.debug("change event %r", event)
        before = self.viewer
        if before is not None:
            await self._reauthenticate(self)
            if self.viewer is None or self.viewer.user_id != before.user_id:
                raise Unauthenticated(self.auth_error or "the token is no longer valid")
        return event


async def _shared_product_row(context: Context, event: StockChanged) -> Any:
    """The product's row read once per event and process, not once per subscription: the
    first subscription the event reaches reads it (the stock committed by then), the others
    take that row. A product reads the same for every viewer, so sharing shows nobody more.
    If the first one fails or is cancelled, the others read for themselves."""
    pending: asyncio.Future[Any] | None = event.shared.get("row")
    if pending is None:
        pending = event.shared["row"] = asyncio.get_running_loop().create_future()
        try:
            row = await context.loader(ProductByIdLoader).load(event.product_id)
        except BaseException:
            pending.cancel()
            raise
        pending.set_result(row)
        return row
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not pending.cancelled() or (task is not None and task.cancelling()):
            raise
    return await context.loader(ProductByIdLoader).load(event.product_id)


def _subscription_context(info: Info) -> SubscriptionContext:
    context = info.context
    if not isinstance(context, SubscriptionContext):
        raise ApiError("Subscriptions are served over WebSocket (graphql-transport-ws)")
    return context


@strawberry.type
class Subscription:
    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description=(
            "The products named by `ids` (at most 100), each time a committed write changes "
            "its stock (orders, cancellations, holds, releases, expiries), with the stock as "
            "committed. Nothing is sent for a write that failed. Anonymous clients may "
            "subscribe. After an interruption of the server's change feed, every named "
            "product is sent again."
        )
    )
    async def product_stock_changed(
        self, info: Info, ids: list[strawberry.ID]
    ) -> AsyncGenerator[Product, None]:
        context = _subscription_context(info)
        if not ids or len(ids) > MAX_SUBSCRIBED_PRODUCTS:
            raise BadUserInput(f"`ids` names 1 to {MAX_SUBSCRIBED_PRODUCTS} products")
        product_ids = frozenset(row_id_of(global_id, "Product") for global_id in ids)
        stream = context.open_stream(products=product_ids)
        try:
            while True:
                event = await context.next_event(stream)
                if isinstance(event, StockChanged):
                    row = await _shared_product_row(context, event)
                    if row is not None:
                        yield Product.from_row(row)
                    continue
                # EventsInterrupted: what changed in the gap is unknown, so all of them.
                for product_id in sorted(product_ids):
                    row = await context.loader(ProductByIdLoader).load(product_id)
                    if row is not None:
                        yield Product.from_row(row)
                        await context.release()
        finally:
            stream.close()

    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description=(
            "The viewer's own orders (an admin's too: only their own), each time one is "
            "created or its status changes, after the change is committed. Needs a token. "
            "Ends with EVENTS_INTERRUPTED when the server's change feed was interrupted: "
            "read `orders` again and subscribe again."
        )
    )
    async def order_updated(self, info: Info) -> AsyncGenerator[Order, None]:
        context = _subscription_context(info)
        viewer = context.require_viewer()
        wanted = selection_tree(info)
        stream = context.open_stream(user_id=viewer.user_id)
        try:
            while True:
                event = await context.next_event(stream)
                if isinstance(event, EventsInterrupted):
                    raise EventsInterruptedError(
                        "Order changes may have been missed: read `orders` and subscribe again"
                    )
                if not isinstance(event, OrderChanged):
                    continue
                row = await context.loader(OrderByIdLoader).load(event.order_id)
                if row is None:
                    continue
                order = Order.from_row(row)
                await prefetch_orders(context, [order], wanted, alone=False)
                yield order
        finally:
            stream.close()
