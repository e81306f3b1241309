"""Issue 13: stock is conserved under abuse. Two hundred concurrent clients drive the real HTTP
app (orders with and without holds, same-key retries at once and one after another, releases
racing checkouts of the same hold, owner and admin cancelling one order at once, holds forced to
lapse, cross-user, malformed and unauthenticated writes) while two sweepers expire lapsed holds
and a saboteur moves deadlines into the past (of live holds, and of used ones, as time does).
Afterwards, for every product: stock + units HELD + units sold == initial stock, stock >= 0;
every answer a typed payload member or an error with extensions.code, no 5xx; and each order,
cancel, hold and release happened exactly as often as the clients were told it did.

The accounting, from services/: reserving moves units from `stock` to a HELD reservation;
releasing, expiring (sweeper, or reclaimed by an order or hold short of stock) move them back;
checking a hold out marks it CONFIRMED and its units become (part of) an order item, taking
nothing from stock again; cancelling an order gives all of its items' units back (its
CONFIRMED holds included, which then count nowhere). So a unit is in exactly one place:
`products.stock`, a reservation whose stored status is HELD (a lapsed one not yet swept
included: its units are still out of stock), or an item of an order that is not CANCELLED.

The mix is seeded (each client draws from its own `random.Random`, so the plan does not depend
on how tasks interleave); the interleaving is not, and the invariant holds for every one."""

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from db.models import (
    Notification,
    Order,
    OrderItem,
    OrderStatus,
    Product,
    Reservation,
    ReservationStatus,
)
from gql.schema.ids import row_id_of, to_global_id
from services.worker import sweep_once
from tests.documents import CANCEL_ORDER, RELEASE
from tests.factories import Factory

SEED = 13
INITIAL_STOCK = 15
PRODUCT_COUNT = 3
USER_COUNT = 5  # plus one admin, who buys and holds too
# Kinds of client and how many of each: 200 in all, shuffled by the seed.
MIX = {
    "plain_order": 40,
    "hold_checkout": 30,
    "same_key_concurrent": 20,
    "same_key_sequential": 20,
    "release_vs_checkout": 30,
    "double_cancel": 25,
    "lapse": 25,
    "abuse": 10,
}
CLIENTS = sum(MIX.values())
SHORT_TTL = 2  # seconds

CREATE_ORDER = """
mutation Create($input: CreateOrderInput!) {
  createOrder(input: $input) {
    __typename
    ... on UserError { message }
    ... on CreateOrderSuccess {
      created
      order { id status items { quantity product { id } } }
    }
    ... on InsufficientStock { productId requested available }
  }
}
"""


RESERVE = """
mutation Reserve($input: ReserveProductInput!) {
  reserveProduct(input: $input) {
    __typename
    ... on UserError { message }
    ... on ReserveProductSuccess { reservation { id quantity status product { id } } }
    ... on InsufficientStock { productId requested available }
  }
}
"""


# The typed members each mutation may answer with in this run (from the payload unions; no
# unknown product and one currency, so ProductNotFound and CurrencyMismatch would be bugs).
ALLOWED = {
    "createOrder": {
        "CreateOrderSuccess",
        "InsufficientStock",
        "IdempotencyKeyReused",
        "ReservationNotFound",
        "ReservationExpired",
        "ReservationNotHeld",
    },
    "cancelOrder": {"CancelOrderSuccess", "OrderNotFound", "OrderNotCancellable"},
    "reserveProduct": {"ReserveProductSuccess", "InsufficientStock"},
    "releaseReservation": {
        "ReleaseReservationSuccess",
        "ReservationNotFound",
        "ReservationExpired",
        "ReservationNotHeld",
    },
}
DOCUMENTS = {
    "createOrder": CREATE_ORDER,
    "cancelOrder": CANCEL_ORDER,
    "reserveProduct": RESERVE,
    "releaseReservation": RELEASE,
}
WINS = {"CreateOrderSuccess", "ReleaseReservationSuccess"}
# What may befall a hold only its own client uses: the saboteur or a short TTL lapses it.
HOLD_LOST = {"ReservationExpired"}

Payload = dict[str, Any]


@pytest.fixture
def settings() -> Settings:
    return Settings(
        environment="test",
        redis_url=None,
        # Hundreds of requests in flight queue for connections rather than fail; 40 at most
        # for the app, a few more for the sweepers, well under the server's 100.
        db_pool_size=20,
        db_max_overflow=20,
        db_pool_timeout=60,
        rate_limit_enabled=False,  # one user's hundred orders a second: not a limit test
        hold_ttl_min_seconds=1,  # holds of one second, which lapse during the run
        hold_sweep_batch_size=4,  # small batches: sweepers overlap on more rounds
    )


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The app's own failures come back as responses (a 500 is counted, not raised).
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


class Run:
    """The clients' shared view of the run: who they are, what they saw, what went wrong."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        tokens: list[str],
        admin: str,
        products: list[str],
    ) -> None:
        self.http = http
        self.session_factory = session_factory
        self.tokens = tokens  # the admin's last
        self.users = tokens[:-1]
        self.admin = admin
        self.products = products
        self.tally: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.violations: list[str] = []
        self.created: dict[str, dict[str, int]] = {}  # order id -> its items, per product
        self.replays: list[tuple[str, dict[str, int]]] = []  # order id, its items as replayed
        self.cancelled: list[str] = []
        self.reserved: list[str] = []
        self.released: list[str] = []
        self.forced_lapses = 0
        self.duration = 0.0

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.violations.append(message)

    # -- HTTP ---------------------------------------------------------------------------------

    async def post(self, query: str, variables: dict[str, Any], token: str | None) -> Payload:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
        self.statuses[response.status_code] += 1
        self.expect(response.status_code < 500, f"HTTP {response.status_code}: {response.text}")
        try:
            body: Payload = response.json()
        except ValueError:
            self.violations.append(f"not JSON (HTTP {response.status_code}): {response.text}")
            return {}
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            self.expect(bool(code), f"an error without extensions.code: {error}")
            self.tally[f"error:{code}"] += 1
        return body

    async def mutate(self, field: str, variables: dict[str, Any], token: str) -> Payload | None:
        """A well-formed mutation: it must answer with a typed payload member, never an error."""
        body = await self.post(DOCUMENTS[field], variables, token)
        self.expect(not body.get("errors"), f"{field}{variables}: errors {body.get('errors')}")
        payload: Payload | None = (body.get("data") or {}).get(field)
        if payload is None:
            self.violations.append(f"{field}{variables}: no payload in {body}")
            return None
        kind = payload["__typename"]
        self.tally[f"{field}:{kind}"] += 1
        self.expect(kind in ALLOWED[field], f"{field}{variables}: unexpected {payload}")
        if kind == "InsufficientStock":
            self.expect(
                0 <= payload["available"] < payload["requested"],
                f"{field}: InsufficientStock that is not short: {payload}",
            )
        return payload

    async def refused(
        self, code: str, query: str, variables: dict[str, Any], token: str | None
    ) -> None:
        """A malformed or unauthenticated request: refused with `code`, nothing else."""
        body = await self.post(query, variables, token)
        codes = [(e.get("extensions") or {}).get("code") for e in body.get("errors") or []]
        self.expect(codes == [code], f"expected [{code}], got {body}")

    # -- operations -----------------------------------------------------------------------------

    def lines(self, rng: random.Random) -> list[tuple[str, int]]:
        chosen = rng.sample(self.products, rng.choice((1, 1, 2)))
        return [(product, rng.choice((1, 1, 2))) for product in chosen]

    async def order_persistently(
        self, token: str, key: str, lines: list[tuple[str, int]], rng: random.Random
    ) -> Payload | None:
        """Likewise for an order to abuse: a new key each try, so each try is a new order."""
        payload = None
        for attempt in range(4):
            payload = await self.create(token, f"{key}-{attempt}", lines, expected=dict(lines))
            if kind(payload) != "InsufficientStock":
                break
            await asyncio.sleep(rng.uniform(0.1, 0.4))
        return payload

    async def reserve_persistently(
        self, token: str, product: str, quantity: int, rng: random.Random, ttl: int | None = None
    ) -> str | None:
        """A client that wants a hold to race with: tries again, a while later, when the stock
        is short (cancels and lapses keep giving units back)."""
        for _ in range(4):
            held = await self.reserve(token, product, quantity, ttl)
            if held is not None:
                return held
            await asyncio.sleep(rng.uniform(0.1, 0.4))
        return None

    async def create(
        self,
        token: str,
        key: str,
        lines: Sequence[tuple[str, int]] = (),
        holds: Sequence[str] = (),
        *,
        expected: dict[str, int] | None = None,
    ) -> Payload | None:
        """createOrder; a new order must hold exactly `expected` units per product (the lines
        plus the holds), and one order may be reported created only once."""
        variables: dict[str, Any] = {
            "input": {
                "idempotencyKey": key,
                "items": [{"productId": product, "quantity": qty} for product, qty in lines],
            }
        }
        if holds:
            variables["input"]["reservationIds"] = list(holds)
        payload = await self.mutate("createOrder", variables, token)
        if payload is None or payload["__typename"] != "CreateOrderSuccess":
            return payload
        order = payload["order"]
        items = {item["product"]["id"]: item["quantity"] for item in order["items"]}
        self.expect(order["status"] == "CONFIRMED", f"a new order not CONFIRMED: {order}")
        if payload["created"]:
            self.expect(order["id"] not in self.created, f"order created twice: {order}")
            self.created[order["id"]] = items
            if expected is not None:
                self.expect(items == expected, f"order {order} for {expected}")
        else:
            self.replays.append((order["id"], items))
        return payload

    async def cancel(self, token: str, order_id: str) -> Payload | None:
        payload = await self.mutate("cancelOrder", {"id": order_id}, token)
        if payload is not None and payload["__typename"] == "CancelOrderSuccess":
            self.cancelled.append(order_id)
        return payload

    async def reserve(
        self, token: str, product: str, quantity: int, ttl: int | None = None
    ) -> str | None:
        variables = {"input": {"productId": product, "quantity": quantity, "ttlSeconds": ttl}}
        payload = await self.mutate("reserveProduct", variables, token)
        if payload is None or payload["__typename"] != "ReserveProductSuccess":
            return None
        reservation = payload["reservation"]
        # A one-second hold may have lapsed already when its answer is written (the status is
        # the effective one, by the clock, and a loaded server takes its time).
        statuses = {"HELD", "EXPIRED"} if ttl is not None and ttl <= SHORT_TTL else {"HELD"}
        self.expect(
            reservation["status"] in statuses and reservation["quantity"] == quantity,
            f"a new hold: {reservation} (ttlSeconds {ttl})",
        )
        self.reserved.append(reservation["id"])
        return str(reservation["id"])

    async def release(self, token: str, reservation_id: str) -> Payload | None:
        payload = await self.mutate("releaseReservation", {"id": reservation_id}, token)
        if payload is not None and payload["__typename"] == "ReleaseReservationSuccess":
            self.released.append(reservation_id)
        return payload

    async def force_lapse(self, reservation_id: str) -> None:
        """Move a hold's deadline into the past behind the API's back, as time would."""
        async with self.session_factory() as session, session.begin():
            await session.execute(
                update(Reservation)
                .where(Reservation.id == row_id_of(reservation_id, "Reservation"))
                .values(expires_at=text("now() - interval '1 second'"))
            )
        self.forced_lapses += 1

    # -- the clients ------------------------------------------------------------------------------

    def change_of_mind(self, rng: random.Random, token: str) -> str | None:
        """Who cancels the order the client is about to place (the owner or the admin), if
        anyone: half the orders are cancelled, so stock keeps coming back during the run."""
        return rng.choice((token, self.admin)) if rng.random() < 0.5 else None

    async def maybe_cancel(self, n: int, canceller: str | None, payload: Payload | None) -> None:
        if canceller is None or payload is None or kind(payload) != "CreateOrderSuccess":
            return
        done = await self.cancel(canceller, payload["order"]["id"])
        self.expect(kind(done) == "CancelOrderSuccess", f"client {n}: cancel: {done}")

    async def plain_order(self, n: int, rng: random.Random) -> None:
        token = rng.choice(self.tokens)
        lines = self.lines(rng)
        canceller = self.change_of_mind(rng, token)
        payload = await self.create(token, f"c{n}", lines, expected=dict(lines))
        await self.maybe_cancel(n, canceller, payload)

    async def hold_checkout(self, n: int, rng: random.Random) -> None:
        token = rng.choice(self.tokens)
        product, quantity = rng.choice(self.products), rng.randint(1, 2)
        extra = self.lines(rng) if rng.random() < 0.5 else []
        canceller = self.change_of_mind(rng, token)
        held = await self.reserve(token, product, quantity, short_or_default(rng))
        if held is None:
            return
        expected = Counter(dict(extra)) + Counter({product: quantity})
        payload = await self.create(token, f"c{n}", extra, [held], expected=dict(expected))
        allowed = {"CreateOrderSuccess", "InsufficientStock", *HOLD_LOST}
        self.expect(kind(payload) in allowed, f"client {n}: checkout of its hold: {payload}")
        await self.maybe_cancel(n, canceller, payload)

    async def same_key(self, n: int, rng: random.Random, *, concurrent: bool) -> None:
        """One idempotency key sent several times: one order at most, created once, replayed
        to every later request; a retry never races the first to the hold (no NotHeld)."""
        token = rng.choice(self.tokens)
        lines = self.lines(rng)
        holds: list[str] = []
        expected = Counter(dict(lines))
        if rng.random() < 0.5:
            product, quantity = rng.choice(self.products), rng.randint(1, 2)
            held = await self.reserve(token, product, quantity, short_or_default(rng))
            if held is not None:
                holds = [held]
                expected[product] += quantity
        canceller = self.change_of_mind(rng, token)
        key = f"c{n}"

        def send() -> Awaitable[Payload | None]:
            return self.create(token, key, lines, holds, expected=dict(expected))

        if concurrent:
            outcomes = list(await asyncio.gather(*(send() for _ in range(4))))
            outcomes.append(await send())  # and once more after them
        else:
            outcomes = [await send() for _ in range(3)]
        allowed = {"CreateOrderSuccess", "InsufficientStock", *HOLD_LOST}
        self.expect(all(kind(o) in allowed for o in outcomes), f"client {n}: same key: {outcomes}")
        successes = [o for o in outcomes if kind(o) == "CreateOrderSuccess"]
        orders = {o["order"]["id"] for o in successes if o is not None}
        self.expect(len(orders) <= 1, f"client {n}: one key, several orders: {outcomes}")
        if successes:
            created = sum(o["created"] for o in successes if o is not None)
            self.expect(created == 1, f"client {n}: one key created {created} orders")
            if not concurrent:
                # Sequential: once it succeeded, every later request replays it.
                first = next(i for i, o in enumerate(outcomes) if kind(o) == "CreateOrderSuccess")
                self.expect(
                    all(kind(o) == "CreateOrderSuccess" for o in outcomes[first:]),
                    f"client {n}: a retry after the order did not replay it: {outcomes}",
                )
            # The same key with another payload is refused, and takes nothing.
            product, quantity = lines[0]
            other = [(product, quantity + 1), *lines[1:]]
            reused = await self.create(token, key, other, holds)
            self.expect(
                kind(reused) == "IdempotencyKeyReused", f"client {n}: other payload: {reused}"
            )
            await self.maybe_cancel(n, canceller, successes[0])

    async def release_vs_checkout(self, n: int, rng: random.Random) -> None:
        """Two releases and a checkout of one hold at once: one wins, at most."""
        token = rng.choice(self.tokens)
        product, quantity = rng.choice(self.products), rng.randint(1, 2)
        held = await self.reserve_persistently(token, product, quantity, rng, short_or_default(rng))
        if held is None:
            return
        outcomes = await asyncio.gather(
            self.release(token, held),
            self.create(token, f"c{n}", [], [held], expected={product: quantity}),
            self.release(token, held),
        )
        kinds = [kind(o) for o in outcomes]
        winners = [k for k in kinds if k in WINS]
        self.expect(len(winners) <= 1, f"client {n}: a hold used twice: {outcomes}")
        losers = {"ReservationNotHeld", *HOLD_LOST} if winners else HOLD_LOST
        self.expect(
            all(k in WINS or k in losers for k in kinds), f"client {n}: the race: {outcomes}"
        )

    async def double_cancel(self, n: int, rng: random.Random) -> None:
        """The owner and an admin cancel one order, twice each, at once: one cancel acts."""
        token = rng.choice(self.tokens)
        lines = self.lines(rng)
        holds: list[str] = []
        expected = Counter(dict(lines))
        if rng.random() < 0.4:
            product, quantity = rng.choice(self.products), 1
            held = await self.reserve(token, product, quantity, short_or_default(rng))
            if held is not None:
                holds = [held]
                expected[product] += quantity
        payload = await self.create(token, f"c{n}", lines, holds, expected=dict(expected))
        if kind(payload) == "InsufficientStock":
            payload = await self.order_persistently(token, f"c{n}", lines, rng)
        if kind(payload) != "CreateOrderSuccess" or payload is None:
            return
        order_id = payload["order"]["id"]
        outcomes = await asyncio.gather(
            *(self.cancel(who, order_id) for who in (token, self.admin, token, self.admin))
        )
        kinds = sorted(str(kind(o)) for o in outcomes)
        self.expect(
            kinds == ["CancelOrderSuccess"] + ["OrderNotCancellable"] * 3,
            f"client {n}: double cancel: {outcomes}",
        )

    async def lapse(self, n: int, rng: random.Random) -> None:
        """A hold that lapsed (a one-second TTL, or its deadline moved into the past) can be
        neither checked out nor released; meanwhile an order on the same product may reclaim
        its units, the sweepers may expire it: its units come back once."""
        token = rng.choice(self.tokens)
        product, quantity = rng.choice(self.products), rng.randint(1, 3)
        short_ttl = rng.random() < 0.5
        buyer = rng.choice(self.tokens)
        wanted = rng.randint(1, 3)
        canceller = self.change_of_mind(rng, buyer)
        held = await self.reserve(token, product, quantity, ttl=1 if short_ttl else None)
        if held is None:
            return
        if short_ttl:
            await asyncio.sleep(1.2)
        else:
            await self.force_lapse(held)
        outcomes = await asyncio.gather(
            self.create(token, f"c{n}", [], [held]),
            self.release(token, held),
            self.create(buyer, f"c{n}-reclaim", [(product, wanted)], expected={product: wanted}),
        )
        self.expect(
            [kind(o) for o in outcomes[:2]] == ["ReservationExpired"] * 2,
            f"client {n}: a lapsed hold used: {outcomes[:2]}",
        )
        self.expect(
            kind(outcomes[2]) in {"CreateOrderSuccess", "InsufficientStock"},
            f"client {n}: order next to a lapsed hold: {outcomes[2]}",
        )
        await self.maybe_cancel(n, canceller, outcomes[2])

    async def abuse(self, n: int, rng: random.Random) -> None:
        """Another user's and an admin's writes on someone's hold and order, malformed and
        unauthenticated requests, all at once: refused with typed members or coded errors."""
        owner, stranger = rng.sample(self.users, 2)
        product = rng.choice(self.products)
        held = await self.reserve_persistently(owner, product, 1, rng)
        order = await self.order_persistently(owner, f"c{n}", [(product, 1)], rng)
        jobs: list[Awaitable[Any]] = [
            self.refused(
                "BAD_USER_INPUT",
                CREATE_ORDER,
                {
                    "input": {
                        "idempotencyKey": f"c{n}-0",
                        "items": [{"productId": product, "quantity": 0}],
                    }
                },
                owner,
            ),
            self.refused(
                "BAD_USER_INPUT",
                RESERVE,
                {"input": {"productId": product, "quantity": 1, "ttlSeconds": 86_400}},
                owner,
            ),
            self.refused("BAD_USER_INPUT", RELEASE, {"id": "not-an-id"}, owner),
            self.refused("BAD_USER_INPUT", RELEASE, {"id": product}, owner),
            self.refused(
                "UNAUTHENTICATED",
                CREATE_ORDER,
                {
                    "input": {
                        "idempotencyKey": f"c{n}-anon",
                        "items": [{"productId": product, "quantity": 1}],
                    }
                },
                None,
            ),
            self.refused("UNAUTHENTICATED", RELEASE, {"id": held or product}, "bk_forged_token"),
        ]
        if held is not None:
            jobs += [
                self.expect_kind(n, "ReservationNotFound", self.release(stranger, held)),
                self.expect_kind(n, "ReservationNotFound", self.release(self.admin, held)),
                self.expect_kind(
                    n, "ReservationNotFound", self.create(self.admin, f"c{n}-steal", [], [held])
                ),
                self.expect_kind(
                    n, "ReservationNotFound", self.create(stranger, f"c{n}-steal", [], [held])
                ),
            ]
        if order is not None and order["__typename"] == "CreateOrderSuccess":
            jobs.append(
                self.expect_kind(n, "OrderNotFound", self.cancel(stranger, order["order"]["id"]))
            )
        await asyncio.gather(*jobs)
        if held is not None:
            mine = await self.release(owner, held)
            self.expect(
                kind(mine) in {"ReleaseReservationSuccess", *HOLD_LOST},
                f"client {n}: the owner's release after the abuse: {mine}",
            )

    async def expect_kind(self, n: int, wanted: str, operation: Awaitable[Payload | None]) -> None:
        payload = await operation
        self.expect(kind(payload) == wanted, f"client {n}: expected {wanted}, got {payload}")

    async def client(self, n: int, name: str) -> None:
        rng = random.Random(f"{SEED}-{n}")
        scenarios: dict[str, Callable[[int, random.Random], Awaitable[None]]] = {
            "plain_order": self.plain_order,
            "hold_checkout": self.hold_checkout,
            "same_key_concurrent": lambda n, rng: self.same_key(n, rng, concurrent=True),
            "same_key_sequential": lambda n, rng: self.same_key(n, rng, concurrent=False),
            "release_vs_checkout": self.release_vs_checkout,
            "double_cancel": self.double_cancel,
            "lapse": self.lapse,
            "abuse": self.abuse,
        }
        try:
            # Arrivals spread over a second and a half: the first burst does not take all
            # the stock before the later clients' races begin.
            await asyncio.sleep(rng.uniform(0, 1.5))
            await scenarios[name](n, rng)
        except Exception as error:  # a client's crash is a finding, not the end of the run
            self.violations.append(f"client {n} ({name}) crashed: {error!r}")


def short_or_default(rng: random.Random) -> int | None:
    """A third of the holds last SHORT_TTL seconds: some lapse while in use, and the ones
    checked out or released in time pass their deadline later in the run, CONFIRMED or
    RELEASED, as every used hold eventually does (sweeps and reclaims must leave them be)."""
    return SHORT_TTL if rng.random() < 1 / 3 else None


def kind(payload: Payload | None) -> str | None:
    return None if payload is None else payload.get("__typename")


async def sweeper(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    stop: asyncio.Event,
    swept: list[int],
    failures: list[str],
) -> None:
    """The worker's hold sweep, in a tight loop for the whole run."""
    while not stop.is_set():
        try:
            swept.append(await sweep_once(session_factory, settings))
        except Exception as error:
            failures.append(f"sweep_once failed: {error!r}")
        await asyncio.sleep(0.005)


async def saboteur(
    session_factory: async_sessionmaker[AsyncSession], stop: asyncio.Event, count: list[int]
) -> None:
    """Moves time forward for one reservation at a time, every few hundredths of a second:
    every other tick a live hold (checkouts, releases and sweeps then race a deadline moving
    under them), else any reservation whose deadline is still ahead, whatever its status (as
    time does: a hold checked out or released passes its deadline all the same)."""
    lapse_one = (
        "UPDATE reservations SET expires_at = now() - interval '1 second' "
        "WHERE id = (SELECT id FROM reservations WHERE expires_at > now() {} "
        "ORDER BY random() LIMIT 1)"
    )
    statements = [text(lapse_one.format("AND status = 'HELD'")), text(lapse_one.format(""))]
    tick = 0
    while not stop.is_set():
        async with session_factory() as session, session.begin():
            result = await session.execute(statements[tick % 2])
            count.append(result.rowcount)  # type: ignore[attr-defined]
        tick += 1
        await asyncio.sleep(0.1)


async def ledger(
    session_factory: async_sessionmaker[AsyncSession], product_ids: list[int]
) -> dict[int, tuple[int, int, int]]:
    """Per product: (stock, units in HELD reservations, units in orders not cancelled)."""
    async with session_factory() as session:
        stocks = dict(
            (
                await session.execute(
                    select(Product.id, Product.stock).where(Product.id.in_(product_ids))
                )
            ).all()
        )
        held = dict(
            (
                await session.execute(
                    select(Reservation.product_id, func.sum(Reservation.quantity))
                    .where(Reservation.status == ReservationStatus.HELD)
                    .group_by(Reservation.product_id)
                )
            ).all()
        )
        sold = dict(
            (
                await session.execute(
                    select(OrderItem.product_id, func.sum(OrderItem.quantity))
                    .join(Order, Order.id == OrderItem.order_id)
                    .where(Order.status != OrderStatus.CANCELLED)
                    .group_by(OrderItem.product_id)
                )
            ).all()
        )
    return {pid: (stocks[pid], int(held.get(pid, 0)), int(sold.get(pid, 0))) for pid in product_ids}


async def drive(
    run: Run, session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> str:
    """All clients at once, with two sweepers and the saboteur running until they are done;
    returns what happened, in a line."""
    plan = [name for name, count in MIX.items() for _ in range(count)]
    random.Random(SEED).shuffle(plan)
    stop = asyncio.Event()
    swept: list[int] = []
    lapsed: list[int] = []
    background = [
        asyncio.create_task(sweeper(session_factory, settings, stop, swept, run.violations))
        for _ in range(2)
    ]
    background.append(asyncio.create_task(saboteur(session_factory, stop, lapsed)))
    started = time.perf_counter()
    try:
        await asyncio.gather(*(run.client(n, name) for n, name in enumerate(plan)))
    finally:
        stop.set()
        await asyncio.gather(*background)
    run.duration = time.perf_counter() - started
    return (
        f"{CLIENTS} clients ({MIX}), {sum(run.statuses.values())} HTTP requests "
        f"{dict(run.statuses)} in {run.duration:.2f}s; {sum(swept)} holds swept in "
        f"{len(swept)} sweeps; deadlines moved: {sum(lapsed)} by the saboteur, "
        f"{run.forced_lapses} by clients\noutcomes: {dict(sorted(run.tally.items()))}"
    )


async def exactly_once_problems(
    run: Run, session_factory: async_sessionmaker[AsyncSession]
) -> tuple[list[str], str]:
    """Exactly once, seen from both sides: every order in the database was reported created
    to one request (replays report created: false, with the same items); every cancel acted
    once, and only those the clients were told about; every hold and release likewise.
    Returns what disagrees, and the counts."""
    async with session_factory() as session:
        orders = dict((await session.execute(select(Order.id, Order.status))).all())
        reservations = (
            await session.execute(select(Reservation.id, Reservation.status, Reservation.order_id))
        ).all()
        notifications = Counter((await session.execute(select(Notification.kind))).scalars().all())
        # A CONFIRMED hold's units are inside its order's item for that product.
        unbacked = (
            await session.execute(
                text(
                    "SELECT r.order_id, r.product_id, sum(r.quantity) AS held, "
                    "coalesce(max(i.quantity), 0) AS item "
                    "FROM reservations r LEFT JOIN order_items i "
                    "ON i.order_id = r.order_id AND i.product_id = r.product_id "
                    "WHERE r.status = 'CONFIRMED' GROUP BY r.order_id, r.product_id "
                    "HAVING sum(r.quantity) > coalesce(max(i.quantity), 0)"
                )
            )
        ).all()
    cancelled = {oid for oid, status in orders.items() if status is OrderStatus.CANCELLED}
    released = {rid for rid, status, _ in reservations if status is ReservationStatus.RELEASED}
    checks = {
        "orders in the database are the ones reported created": set(orders)
        == {row_id_of(oid, "Order") for oid in run.created},
        "replays return the created order's items": all(
            run.created.get(oid) == items for oid, items in run.replays
        ),
        "cancelled orders are the ones reported cancelled, once each": sorted(cancelled)
        == sorted(row_id_of(oid, "Order") for oid in run.cancelled),
        "reservations are the ones reported reserved": len(reservations) == len(run.reserved),
        "released holds are the ones reported released, once each": sorted(released)
        == sorted(row_id_of(rid, "Reservation") for rid in run.released),
        "a hold has an order exactly when CONFIRMED": all(
            (order_id is not None) == (status is ReservationStatus.CONFIRMED)
            for _, status, order_id in reservations
        ),
        f"CONFIRMED holds within their order's items (not: {unbacked})": not unbacked,
        f"one notification per order created and cancelled (got {notifications})": notifications
        == Counter({"order.created": len(orders), "order.cancelled": len(cancelled)}),
    }
    by_status = Counter(str(status) for _, status, _ in reservations)
    counts = f"orders: {Counter(str(s) for s in orders.values())}, reservations: {by_status}"
    return [check for check, ok in checks.items() if not ok], counts


# Every kind of outcome the run is about must have happened, or the mix tested less than it says.
OUTCOMES_SEEN = (
    "createOrder:CreateOrderSuccess",
    "createOrder:InsufficientStock",
    "createOrder:IdempotencyKeyReused",
    "createOrder:ReservationExpired",
    "createOrder:ReservationNotFound",
    "cancelOrder:CancelOrderSuccess",
    "cancelOrder:OrderNotCancellable",
    "cancelOrder:OrderNotFound",
    "reserveProduct:ReserveProductSuccess",
    "releaseReservation:ReleaseReservationSuccess",
    "releaseReservation:ReservationExpired",
    "error:BAD_USER_INPUT",
    "error:UNAUTHENTICATED",
)


async def test_stock_is_conserved_under_200_abusive_concurrent_clients(
    factory: Factory,
    http: httpx.AsyncClient,
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    products = await factory.products(PRODUCT_COUNT, stock=INITIAL_STOCK)
    product_ids = [product.id for product in products]
    tokens = [(await factory.user())[1] for _ in range(USER_COUNT)]
    _, admin = await factory.user(is_admin=True)
    run = Run(
        http,
        session_factory,
        tokens=[*tokens, admin],
        admin=admin,
        products=[to_global_id("Product", pid) for pid in product_ids],
    )

    summary = await drive(run, session_factory, settings)
    books = await ledger(session_factory, product_ids)
    problems, counts = await exactly_once_problems(run, session_factory)
    # Drain: every hold still HELD lapses and is swept; then only sales are out of stock.
    async with session_factory() as session, session.begin():
        await session.execute(
            update(Reservation)
            .where(Reservation.status == ReservationStatus.HELD)
            .values(expires_at=text("now() - interval '1 second'"))
        )
    while await sweep_once(session_factory, settings):
        pass
    drained = await ledger(session_factory, product_ids)
    print(
        f"\nconservation under abuse: {summary}\n{counts}\n"
        f"per product (stock, held, sold): {books}, after draining the holds: {drained}"
    )

    # The invariant first: per product, stock + held + sold == initial, stock never negative;
    # after the drain, nothing held.
    assert {pid: sum(books[pid]) for pid in product_ids} == dict.fromkeys(
        product_ids, INITIAL_STOCK
    ), books
    assert all(books[pid][0] >= 0 for pid in product_ids), books
    assert {pid: drained[pid][1:] for pid in product_ids} == {
        pid: (0, books[pid][2]) for pid in product_ids
    }, drained
    assert {pid: sum(drained[pid]) for pid in product_ids} == dict.fromkeys(
        product_ids, INITIAL_STOCK
    ), drained
    # Then every answer: no 5xx, no error without a code, typed members where expected.
    assert all(status < 500 for status in run.statuses), run.statuses
    assert run.violations == [], "\n".join(run.violations[:20])
    assert problems == []
    assert [o for o in OUTCOMES_SEEN if not run.tally[o]] == [], run.tally
    assert run.duration < 30
