"""What an access log keeps of a request's query string. GraphQL over GET carries the
operation's variables (e-mails, notes, idempotency keys) and its text (literals written
inline) there, and access logs are kept longer and read by more people than the data itself.

The rule: of the GraphQL-over-HTTP parameters (`query`, `variables`, `operationName`,
`extensions`, `documentId`) the names are kept, with only `operationName`'s value, when it is a
GraphQL name (an identifier in the client's code, not a person's data), and `documentId`'s, when
it looks like a document id (a hash or a manifest's key); every other value becomes
`redacted`, and a parameter of any other name is `redacted` whole (its name may be data too).
"""

import logging
import re
from urllib.parse import unquote_plus

GRAPHQL_PARAMETERS = frozenset({"query", "variables", "operationName", "extensions", "documentId"})
REDACTED = "redacted"
_GRAPHQL_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
# A persisted document's id: a hash (`sha256:<hex>`, bare hex) or a manifest's own key.
_DOCUMENT_ID = re.compile(r"[A-Za-z0-9:._-]{1,128}")


def redact_query_string(query: str) -> str:
    """The query string as an access log may show it (see the module's rule)."""
    if not query:
        return query
    return "&".join(_redact_parameter(part) for part in query.split("&"))


def _redact_parameter(part: str) -> str:
    raw_name, has_value, raw_value = part.partition("=")
    name = unquote_plus(raw_name)
    if name not in GRAPHQL_PARAMETERS:
        return REDACTED if part else part
    if not has_value:
        return name
    if name == "operationName" and _GRAPHQL_NAME.fullmatch(unquote_plus(raw_value)):
        return f"{name}={raw_value}"
    if name == "documentId" and _DOCUMENT_ID.fullmatch(unquote_plus(raw_value)):
        return f"{name}={raw_value}"
    return f"{name}={REDACTED}"


def redact_target(target: str) -> str:
    """A request target (`/path?query`) with its query string redacted."""
    path, has_query, query = target.partition("?")
    return f"{path}?{redact_query_string(query)}" if has_query else path


class RedactedQueryFilter(logging.Filter):
    """uvicorn's own access lines (`make run`) print the request target, query string
    included, as their third argument (`%s - "%s %s HTTP/%s" %d`): redacted here, on the
    `uvicorn.access` logger, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        return True


def redact_uvicorn_access_log() -> None:
    """Install the filter on uvicorn's access logger, once."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, RedactedQueryFilter) for existing in access.filters):
        access.addFilter(RedactedQueryFilter())
