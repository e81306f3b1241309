"""The edge's one schema extension: each operation gets the query limits of the request's
settings before it is parsed, and its latency recorded after (one extension, not two: every
extension hook costs microseconds on every request)."""

import time
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

from core.settings import get_settings
from gql.metrics import observe_operation
from gql.query_limits import query_limits_rule_for


class EdgeExtension(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        execution_context = self.execution_context
        # Direct `schema.execute` calls (tools, tests) may pass no context: default settings.
        settings = getattr(execution_context.context, "settings", None) or get_settings()
        # The parser's own token limit: a huge document is refused before it is parsed.
        execution_context.parse_options["max_tokens"] = settings.max_query_tokens
        # Depth, aliases, cost and the work of validation itself: a validation rule, so its
        # verdict is cached with validation. First of the rules: it does its work on entering
        # the document and aborts validation when it refuses, before any other rule has
        # visited a selection (OverlappingFieldsCanBeMerged is quadratic in repeated fields).
        execution_context.validation_rules = (
            query_limits_rule_for(settings),
            *execution_context.validation_rules,
        )
        start = time.perf_counter()
        yield
        observe_operation(execution_context, time.perf_counter() - start)
