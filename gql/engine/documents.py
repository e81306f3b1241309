"""The document cache: each query text parsed once (within the token limit) and validated once
(the schema's rules, our query limits first, no introspection in production), whatever request
brings it, and the root fields of each of its operations counted once for the rate limits.

Nothing in an entry depends on the request: the rules are the app's, fixed when it starts, so
one entry serves every viewer. Variables, the viewer and everything else of a request are
applied at execution."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    parse,
    specified_rules,
    validate,
)
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from core.bounded import BoundedCache
from core.settings import Settings
from gql.engine.query_limits import query_limits_rule_for
from gql.engine.walk import fragment_definitions, walk

MAX_DOCUMENTS = 1000


T = TypeVar("T")


@dataclass(slots=True)
class Document:
    """One query text, parsed (or the parser's error), validated on first need."""

    ast: DocumentNode | None
    parse_errors: tuple[GraphQLError, ...] = ()
    validation_errors: tuple[GraphQLError, ...] | None = None  # None: not validated yet
    # What was worked out of each operation, by (how, operation name): see `per_operation`.
    _facts: dict[tuple[Callable[..., Any], str | None], Any] = field(default_factory=dict)

    def operation(self, name: str | None) -> OperationDefinitionNode | None:
        """The operation a request names (or the only one), as graphql-core chooses it."""
        assert self.ast is not None
        found = None
        for definition in self.ast.definitions:
            if not isinstance(definition, OperationDefinitionNode):
                continue
            if name is None:
                if found is not None:
                    return None  # several operations and no name
                found = definition
            elif definition.name is not None and definition.name.value == name:
                return definition
        return found

    def per_operation(
        self,
        operation: OperationDefinitionNode,
        work_out: Callable[[DocumentNode, OperationDefinitionNode], T],
    ) -> T:
        """`work_out(ast, operation)`, once per operation of this document: a fact of the text
        alone (the root fields for the rate limits, the readership for HTTP caching) costs
        nothing on the requests that repeat it."""
        key = (work_out, operation.name.value if operation.name else None)
        if key not in self._facts:
            assert self.ast is not None
            self._facts[key] = work_out(self.ast, operation)
        fact: T = self._facts[key]
        return fact

    def root_fields(self, operation: OperationDefinitionNode) -> Counter[str]:
        """How many times each root field occurs in `operation` (through fragments too), for
        the per-field rate limits."""
        return self.per_operation(operation, _count_root_fields)


class DocumentCache:
    """Bounded (see BoundedCache): a client cycling through distinct texts costs parsing and
    validation again now and then, never unbounded memory."""

    def __init__(self, schema: GraphQLSchema, settings: Settings, *, introspection: bool) -> None:
        self.schema = schema
        self.max_tokens = settings.max_query_tokens
        self.rules: tuple[type[ASTValidationRule], ...] = (
            # First: it bounds the work of the others, and aborts validation when it refuses.
            query_limits_rule_for(settings),
            *specified_rules,
            # What Strawberry adds to graphql-core's rules for its own input types.
            MaybeNullValidationRule,
            OneOfInputValidationRule,
            # Gateways still read the SDL through `_service { sdl }`.
            *(() if introspection else (NoSchemaIntrospectionCustomRule,)),
        )
        self._documents: BoundedCache[str, Document] = BoundedCache(MAX_DOCUMENTS)

    def parsed(self, query: str) -> Document:
        document = self._documents.get(query)
        if document is None:
            try:
                document = Document(parse(query, no_location=False, max_tokens=self.max_tokens))
            except GraphQLError as error:
                document = Document(None, parse_errors=(error,))
            self._documents.put(query, document)
        return document

    def validate(self, document: Document) -> tuple[GraphQLError, ...]:
        if document.validation_errors is None:
            assert document.ast is not None
            document.validation_errors = tuple(validate(self.schema, document.ast, self.rules))
        return document.validation_errors


def _count_root_fields(document: DocumentNode, operation: OperationDefinitionNode) -> Counter[str]:
    counts: Counter[str] = Counter()
    for reached in walk(operation.selection_set, fragment_definitions(document)):
        if isinstance(reached.node, FieldNode):
            counts[reached.node.name.value] += 1
    return counts
