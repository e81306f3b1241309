"""Committed changes, pushed to the process's subscribers: one LISTEN connection per process
(PostgreSQL's own NOTIFY, sent by the triggers of migration 0005), fanned out in memory.

Why PostgreSQL and not Redis pub/sub (docs/decisions.md): a NOTIFY is delivered only once its
transaction commits, in commit order, never for rolled-back work, and every write path (orders,
cancels, holds, releases, the worker's expiries) sends it without a line in the services.
Payloads only say what changed; subscribers read the current state themselves."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

CHANNEL = "booking_changes"
# A listener that cannot tell its connection is gone (no RST from a dead peer) finds out by
# asking: a round trip this often.
PROBE_SECONDS = 30.0
CONNECT_TIMEOUT = 5.0
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class StockChanged:
    product_id: int
    correlation_id: str | None = None  # the writer's, when it set `booking.correlation_id`
    # The one event object every subscription of this process receives: where they share
    # work (the first reads the product, the others take its row).
    shared: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class OrderChanged:
    order_id: int
    user_id: int
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventsInterrupted:
    """The listener lost its connection and has it back: changes committed in between were
    not seen (NOTIFY is not stored for a listener that is away)."""


Event = StockChanged | OrderChanged | EventsInterrupted


def parse_payload(payload: str) -> StockChanged | OrderChanged | None:
    """`p:<product id>:<correlation id>` or `o:<order id>:<user id>:<correlation id>` (the
    triggers'); anything else is None."""
    kind, _, rest = payload.partition(":")
    try:
        if kind == "p":
            product_id, _, correlation_id = rest.partition(":")
            return StockChanged(int(product_id), correlation_id or None)
        if kind == "o":
            order_id, user_id, correlation_id = rest.split(":", 2)
            return OrderChanged(int(order_id), int(user_id), correlation_id or None)
    except ValueError:
        pass
    return None


class SubscriptionLimitReached(Exception):
    """The process holds SUBSCRIPTIONS_PER_PROCESS subscriptions already."""


class SlowConsumer(Exception):
    """A subscription fell further behind than its queue holds: it is ended, not buffered."""


class EventStream:
    """One subscription's events, in arrival (commit) order, in a bounded queue. When the queue
    overflows the stream is dropped: `next` raises SlowConsumer and `on_drop` is called at
    once, so a consumer stuck elsewhere (a blocked send) can be cancelled."""

    __slots__ = ("_hub", "_on_drop", "_queue", "dropped", "products", "user_id")

    def __init__(
        self,
        hub: "EventHub",
        *,
        products: frozenset[int],
        user_id: int | None,
        size: int,
        on_drop: Callable[[], None] | None,
    ) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self._on_drop = on_drop
        self.products = products
        self.user_id = user_id
        self.dropped = False

    def offer(self, event: Event) -> None:
        if self.dropped:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self._hub.close(self)
            if self._on_drop is not None:
                self._on_drop()

    async def next(self) -> Event:
        if self.dropped:
            raise SlowConsumer
        return await self._queue.get()

    def close(self) -> None:
        self._hub.close(self)


class EventHub:
    """The process's listener and its subscribers, indexed by product and by user, so an event
    costs a dict lookup and one queue put per interested subscription."""

    def __init__(self, dsn: str, *, queue_size: int, max_subscriptions: int) -> None:
        self._dsn = dsn
        self._queue_size = queue_size
        self._max_subscriptions = max_subscriptions
        self._streams: set[EventStream] = set()
        self._by_product: dict[int, set[EventStream]] = {}
        self._by_user: dict[int, set[EventStream]] = {}
        # Set while LISTEN is in place (tests wait for it; /readyz could).
        self.listening = asyncio.Event()
        self.events_received = 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def open(
        self,
        *,
        products: frozenset[int] = frozenset(),
        user_id: int | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> EventStream:
        if len(self._streams) >= self._max_subscriptions:
            raise SubscriptionLimitReached
        stream = EventStream(
            self, products=products, user_id=user_id, size=self._queue_size, on_drop=on_drop
        )
        self._streams.add(stream)
        for product_id in products:
            self._by_product.setdefault(product_id, set()).add(stream)
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(stream)
        return stream

    def close(self, stream: EventStream) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        for product_id in stream.products:
            _discard(self._by_product, product_id, stream)
        if stream.user_id is not None:
            _discard(self._by_user, stream.user_id, stream)

    def publish(self, event: Event) -> None:
        """Hand `event` to every stream that wants it (called on the loop, never blocks)."""
        if isinstance(event, StockChanged):
            targets = self._by_product.get(event.product_id, ())
        elif isinstance(event, OrderChanged):
            targets = self._by_user.get(event.user_id, ())
        else:
            targets = self._streams
        for stream in tuple(targets):  # offer() may drop, and so unregister, a stream
            stream.offer(event)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.events_received += 1
        if not self._streams:
            return  # every write notifies every process: most have no subscriber to tell
        event = parse_payload(payload)
        if event is None:
            logger.warning("unknown change notification %r", payload[:100])
            return
        self.publish(event)

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN until `stop`, reconnecting with backoff; after a reconnect every stream gets
        EventsInterrupted (what was committed in the gap was not seen)."""
        delay = RETRY_FIRST_SECONDS
        connected_before = False
        while not stop.is_set():
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._notified)
                self.listening.set()
                if connected_before:
                    logger.warning("change listener reconnected: subscribers told of the gap")
                    self.publish(EventsInterrupted())
                connected_before = True
                delay = RETRY_FIRST_SECONDS
                await self._hold(connection, lost, stop)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("change listener: %s (retrying in %.1fs)", error, delay)
            finally:
                self.listening.clear()
                if connection is not None:
                    await _close(connection)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _hold(
        self, connection: asyncpg.Connection, lost: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Wait for `stop` or the connection's loss, probing it every PROBE_SECONDS."""
        while not stop.is_set() and not lost.is_set():
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
            done, pending = await asyncio.wait(
                waiters, timeout=PROBE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if not done:
                await connection.execute("SELECT 1", timeout=CONNECT_TIMEOUT)
        if lost.is_set() and not stop.is_set():
            raise ConnectionError("the LISTEN connection was closed")


def _discard(index: dict[int, set[EventStream]], key: int, stream: EventStream) -> None:
    streams = index.get(key)
    if streams is not None:
        streams.discard(stream)
        if not streams:
            del index[key]


async def _close(connection: asyncpg.Connection) -> None:
    if connection.is_closed():
        return
    try:
        await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        connection.terminate()


def listen_dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy-style URL (`postgresql+asyncpg://…`)."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest
