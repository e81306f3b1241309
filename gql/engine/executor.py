"""The executor: runs a validated operation with graphql-core's `execute`, completing objects
with the execution context the EXECUTOR setting chose (docs/execution.md): our compiled plans
(`gql.engine.plans`), or graphql-core's reference behaviour as Strawberry runs it. One interface,
so the pipeline (`gql.transport.endpoint`) does not know which one runs."""

from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLSchema,
    OperationDefinitionNode,
    execute,
    subscribe,
)
from graphql.execution import Executor as ExecutionContext

from gql.engine.documents import Document
from gql.engine.internals import StrawberryExecutionContext, is_awaitable
from gql.engine.plans import CompiledExecutionContext
from gql.engine.point_reads import PointLoad, PointReads
from gql.schema.context import Context

# The execution context of each EXECUTOR setting. The reference is graphql-core's executor as
# Strawberry runs it (its subclass only carries the request's `extensions` to `info`).
EXECUTION_CONTEXTS: dict[str, type[ExecutionContext[Any]]] = {
    "compiled": CompiledExecutionContext,
    "reference": StrawberryExecutionContext,
}


class Executor:
    @classmethod
    def chosen(
        cls,
        schema: GraphQLSchema,
        setting: Literal["compiled", "reference"],
        point_loads: Mapping[str, PointLoad],
    ) -> "Executor":
        """The compiled executor answers point reads itself (`gql.engine.point_reads`, with
        `point_loads`, the root fields' loads by field name); the reference never does."""
        point_reads = PointReads(schema, point_loads) if setting == "compiled" else None
        return cls(schema, EXECUTION_CONTEXTS[setting], point_reads)

    def __init__(
        self,
        schema: GraphQLSchema,
        execution_context_class: type[ExecutionContext[Any]],
        point_reads: PointReads | None = None,
    ) -> None:
        self.schema = schema
        self.execution_context_class = execution_context_class
        self.point_reads = point_reads

    async def execute(
        self,
        document: Document,
        operation: OperationDefinitionNode,
        *,
        variables: dict[str, Any] | None,
        context: Context,
    ) -> ExecutionResult:
        """`operation` of the parsed, validated `document` (`Document.operation` chose it)."""
        if self.point_reads is not None:
            answered = await self.point_reads.execute(document, operation, variables, context)
            if answered is not None:
                return answered
        assert document.ast is not None
        operation_name = operation.name.value if operation.name else None
        outcome = execute(
            self.schema, document.ast, **self._arguments(operation_name, variables, context)
        )
        if is_awaitable(outcome):
            outcome = await outcome
        assert isinstance(outcome, ExecutionResult)
        return outcome

    async def subscribe(
        self,
        document: DocumentNode,
        *,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        context: Context,
    ) -> ExecutionResult | AsyncIterator[ExecutionResult]:
        """A subscription's stream of results, each event completed by the same execution
        context as `execute`'s; an ExecutionResult (its errors) when it cannot start."""
        outcome = subscribe(
            self.schema, document, **self._arguments(operation_name, variables, context)
        )
        if is_awaitable(outcome):
            outcome = await outcome
        return outcome  # type: ignore[return-value]

    def _arguments(
        self, operation_name: str | None, variables: dict[str, Any] | None, context: Context
    ) -> dict[str, Any]:
        """What graphql-core's `execute` and `subscribe` both take from us."""
        return {
            "context_value": context,
            "variable_values": variables,
            "operation_name": operation_name,
            "executor_class": self.execution_context_class,
            "is_awaitable": is_awaitable,
            # Strawberry's execution context takes the request's `extensions` (none here).
            "operation_extensions": None,
        }
