"""Operations known to be valid: documents that parsed, validated and ran on the full path,
kept by (query text, operation name) so the fast lane (`gql.fastlane`) can run them again
without parsing or validating. Validity does not depend on the request: the rules (schema,
query limits, introspection switch) are the app's, fixed when it starts."""

from dataclasses import dataclass

from graphql import DocumentNode, OperationType, get_operation_ast, parse

MAX_PREPARED = 1000


@dataclass(frozen=True, slots=True)
class PreparedOperation:
    document: DocumentNode
    operation_type: OperationType


class PreparedOperations:
    """Bounded: when full it starts over, so a client cycling through distinct texts costs a
    re-parse of the common operations now and then, never unbounded memory."""

    def __init__(self, max_tokens: int, max_size: int = MAX_PREPARED) -> None:
        self._max_tokens = max_tokens
        self._max_size = max_size
        self._operations: dict[tuple[str, str | None], PreparedOperation] = {}

    def get(self, query: str, operation_name: str | None) -> PreparedOperation | None:
        return self._operations.get((query, operation_name))

    def remember(self, query: str, operation_name: str | None) -> None:
        """Called once the full path has run the operation (so it parses and validates)."""
        key = (query, operation_name)
        if key in self._operations:
            return
        document = parse(query, max_tokens=self._max_tokens)
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return
        if len(self._operations) >= self._max_size:
            self._operations.clear()
        self._operations[key] = PreparedOperation(document, operation.operation)
