"""What the two subscription transports (the WebSocket, multipart HTTP) share: a subscription's
context, built from the app's state and the connection's token, and its stream of results."""

import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from graphql import DocumentNode, ExecutionResult, GraphQLError
from starlette.datastructures import State

from core.correlation import current_correlation_id
from core.settings import Settings
from db.reads import PooledReads
from gql.engine.executor import Executor
from gql.errors import with_codes
from gql.schema.context import Context
from gql.schema.subscriptions import SubscriptionContext
from gql.transport.authentication import authenticate
from gql.transport.metrics import SUBSCRIPTION_DROPS, SUBSCRIPTION_EVENTS, SUBSCRIPTIONS_OPEN
from gql.transport.refusals import Refused
from services.auth import Actor

logger = logging.getLogger(__name__)


class Rejected(Exception):
    """An operation that could not start, or that ended with errors (sent to its client)."""

    def __init__(self, errors: list[GraphQLError]) -> None:
        super().__init__(errors)
        self.errors = errors


def subscription_context(
    state: State,
    settings: Settings,
    *,
    viewer: Actor | None,
    authorization: str | None,
    on_drop: Callable[[], None] | None = None,
) -> SubscriptionContext:
    """The context of one subscription; its viewer is resolved again from `authorization`
    before each event."""

    async def reauthenticate(context: Context) -> None:
        # Through the authenticator's caches: the database (or the JWT's verification) is
        # asked again at most every AUTH_CACHE_SECONDS, however many events arrive.
        try:
            await authenticate(context, authorization, state.authenticator)
        except Refused as refused:
            context.viewer = None
            context.auth_error = refused.message

    return SubscriptionContext(
        events=state.events,
        reauthenticate=reauthenticate,
        on_drop=on_drop,
        sessions=state.session_factory,
        reads=PooledReads(state.engine),
        settings=settings,
        viewer=viewer,
        auth_error=None,
        correlation_id=current_correlation_id(),
    )


async def results(
    executor: Executor,
    document: DocumentNode,
    *,
    operation_name: str | None,
    variables: dict[str, Any] | None,
    context: SubscriptionContext,
) -> AsyncGenerator[ExecutionResult, None]:
    """The subscription's results, one per event, completed by the executor's execution
    context. Rejected when it cannot start or when an error ends it (a slow consumer, a token
    no longer valid, the change feed interrupted)."""
    SUBSCRIPTIONS_OPEN.inc()
    try:
        outcome = await executor.subscribe(
            document, operation_name=operation_name, variables=variables, context=context
        )
        if isinstance(outcome, ExecutionResult):
            raise Rejected(outcome.errors or [])
        stream = outcome
        try:
            async for result in stream:
                SUBSCRIPTION_EVENTS.inc()
                yield result
        except GraphQLError as error:
            code = ((with_codes([error]) or [error])[0].extensions or {}).get("code", "error")
            SUBSCRIPTION_DROPS.labels(str(code).lower()).inc()
            logger.info("subscription ended by the server: %s", code)
            raise Rejected([error]) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        SUBSCRIPTIONS_OPEN.dec()
