"""HTTP caching of GET results: `Cache-Control` (public only for an anonymous operation that
reads nothing but public root fields, see gql.schema.visibility), an `ETag`, and 304 for an
`If-None-Match` that names it. Only GET requests pay for any of it."""

import hashlib
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    ValueNode,
    VariableNode,
)

from gql.engine.documents import Document
from gql.engine.walk import fragment_definitions, walk
from gql.schema.ids import from_global_id
from gql.schema.visibility import PUBLIC_NODE_TYPES, PUBLIC_ROOT_FIELDS
from services.errors import InvalidInput

PRIVATE = "private, no-store"
# What a public answer may differ by: the media type (Accept); and a shared cache that would
# store one must not hand it to a viewer whose token could change a field's answer.
PUBLIC_VARY = "Accept, Authorization"


@dataclass(frozen=True, slots=True)
class Readership:
    """Of one operation of a document: whether only public root fields are read, and the `id`
    arguments of its `node` fields, which must name public types (known per request)."""

    public: bool
    node_ids: tuple[ValueNode, ...] = ()


def readership_of(document: DocumentNode, operation: OperationDefinitionNode) -> Readership:
    if operation.operation is not OperationType.QUERY:
        return Readership(public=False)
    node_ids: list[ValueNode] = []
    for reached in walk(operation.selection_set, fragment_definitions(document)):
        field = reached.node
        if not isinstance(field, FieldNode) or field.name.value in PUBLIC_ROOT_FIELDS:
            continue
        if field.name.value != "node":
            return Readership(public=False)
        ids = [argument.value for argument in field.arguments or () if argument.name.value == "id"]
        if not ids:
            return Readership(public=False)
        node_ids.extend(ids)
    return Readership(public=True, node_ids=tuple(node_ids))


class CachePolicy:
    """The `Cache-Control` of GET results; each operation's readership worked out once, with
    the document (`Document.per_operation`)."""

    def __init__(self, max_age: int) -> None:
        self.public = f"public, max-age={max_age}" if max_age > 0 else PRIVATE

    def cache_control(
        self,
        document: Document,
        operation: OperationDefinitionNode,
        variables: dict[str, Any] | None,
    ) -> str:
        """For an anonymous result without errors (the caller checks both)."""
        readership = document.per_operation(operation, readership_of)
        if not readership.public:
            return PRIVATE
        for value in readership.node_ids:
            if not _names_public_type(value, variables):
                return PRIVATE
        return self.public


def _names_public_type(value: ValueNode, variables: dict[str, Any] | None) -> bool:
    if isinstance(value, StringValueNode):
        global_id: object = value.value
    elif isinstance(value, VariableNode):
        global_id = (variables or {}).get(value.name.value)
    else:
        return False
    if not isinstance(global_id, str):
        return False
    try:
        type_name, _ = from_global_id(global_id)
    except InvalidInput:
        return False
    return type_name in PUBLIC_NODE_TYPES


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def is_fresh(if_none_match: str | None, etag: str) -> bool:
    """Whether the client's `If-None-Match` names `etag` (weak comparison, as RFC 9110 says
    for this header), or is `*`."""
    if not if_none_match:
        return False
    for listed in if_none_match.split(","):
        candidate = listed.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
