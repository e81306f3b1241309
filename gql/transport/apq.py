"""Persisted documents. Automatic persisted queries (Apollo APQ, version 1): a client sends the
SHA-256 of a query instead of its text; an unknown hash is answered PERSISTED_QUERY_NOT_FOUND
and the client retries once with both. GraphQL over HTTP's `documentId` names a document the
same way (`sha256:<hex>`). With a manifest (`load_manifest`), only its documents run.
Registered queries are stored in Redis with a TTL (shared by every process), fronted by a
small in-process cache, which is all there is without Redis.

The in-process cache is the one bounded cache (`core.bounded.BoundedCache`, keyed by client
input like the others): when full it starts over rather than evicting the least recently used
hash. A hit costs one dict lookup and no reordering; the price is that, under a client sending
more distinct queries than it holds, the common ones are fetched from Redis again (or, without
Redis, registered again by the client's retry with the text) now and then."""

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.bounded import BoundedCache
from core.redis import RedisCircuit
from core.settings import Settings
from gql.transport.metrics import REDIS_FAILURES

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A key that looks like a hash of some kind (sha1, sha256…): it must be the document's SHA-256.
_ANY_HEX = re.compile(r"^[0-9a-fA-F]{32,128}$")
SHA256_PREFIX = "sha256:"


def sha256_of(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.match(value) is not None


@dataclass(frozen=True, slots=True)
class Manifest:
    """The allow-list: every document of the deployed clients, by the ids they may send.

    `by_sha` holds each text under the SHA-256 hex of its text (what the APQ extension
    sends); `by_id` under every id a `documentId` request may name it by: `sha256:<hex>`,
    the bare hex, and an Apollo manifest's own `id` when it is not the hash."""

    by_sha: dict[str, str]
    by_id: dict[str, str]


class PersistedQueries:
    def __init__(
        self,
        settings: Settings,
        redis: Redis | None,
        circuit: RedisCircuit,
        *,
        manifest: Manifest | None = None,
    ) -> None:
        self._redis = redis
        self._circuit = circuit
        self._ttl = settings.apq_ttl
        self._prefix = f"{settings.redis_key_prefix}:apq:"
        self._local: BoundedCache[str, str] = BoundedCache(settings.apq_cache_size)
        # Allow-list mode: only these queries run, nothing is registered at runtime.
        self.allow_list = manifest

    async def get(self, sha: str) -> str | None:
        """The text of a SHA-256 hex: the manifest's in allow-list mode, else a registered one."""
        if self.allow_list is not None:
            return self.allow_list.by_sha.get(sha)
        query = self._local.get(sha)
        if query is not None:
            return query
        if self._redis is None or self._circuit.is_open:
            return None
        try:
            stored = await self._redis.get(self._prefix + sha)
        except (RedisError, OSError) as error:
            self._failed(error)
            return None
        if stored is None:
            return None
        query = stored.decode() if isinstance(stored, bytes) else str(stored)
        self._local.put(sha, query)
        return query

    async def put(self, sha: str, query: str) -> None:
        if self._local.get(sha) == query:
            return  # a client that sends hash and text every time: registered already
        self._local.put(sha, query)
        if self._redis is None or self._circuit.is_open:
            return
        try:
            await self._redis.set(self._prefix + sha, query, ex=self._ttl)
        except (RedisError, OSError) as error:
            self._failed(error)

    def _failed(self, error: Exception) -> None:
        REDIS_FAILURES.labels("persisted_queries").inc()
        self._circuit.record_failure("persisted queries", error)


APOLLO_MANIFEST_FORMAT = "apollo-persisted-query-manifest"


def load_manifest(path: Path) -> Manifest:
    """A manifest of the documents clients may run, in any of the formats client builds write:

    - graphql-codegen's client preset (`persisted-documents.json`): an object of hash →
      document, the hash `sha256:<hex>` or a bare SHA-256 hex (also our own earlier format);
    - Apollo's persisted query manifest (`generate-persisted-query-manifest`):
      `{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id",
      "body", "name", "type"}]}`.

    A hash is checked against its text, so a wrong entry fails at startup; an Apollo `id` that
    is not a SHA-256 hex is an id of the client's choosing and is taken as given."""
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a persisted documents manifest)")
    entries: list[tuple[str, str]]
    if data.get("format") == APOLLO_MANIFEST_FORMAT:
        if data.get("version") != 1 or not isinstance(data.get("operations"), list):
            raise ValueError(f"{path}: only version 1 of Apollo's manifest, with `operations`")
        entries = []
        for operation in data["operations"]:
            if not isinstance(operation, dict):
                raise ValueError(f"{path}: an operation must be an object")
            document_id, body = operation.get("id"), operation.get("body")
            if not isinstance(document_id, str) or not isinstance(body, str):
                raise ValueError(f"{path}: an operation needs a string `id` and `body`")
            entries.append((document_id, body))
    else:
        entries = list(data.items())
    manifest = Manifest(by_sha={}, by_id={})
    for document_id, query in entries:
        if not isinstance(query, str):
            raise ValueError(f"{path}: the document of {document_id!r} is not a string")
        sha = sha256_of(query)
        hex_id = document_id.removeprefix(SHA256_PREFIX)
        if hex_id != document_id or _ANY_HEX.match(document_id):
            if hex_id != sha:
                raise ValueError(
                    f"{path}: {document_id!r} is not the SHA-256 of its document (hash with sha256)"
                )
        elif not document_id:
            raise ValueError(f"{path}: an empty document id")
        manifest.by_sha[sha] = query
        manifest.by_id.update({document_id: query, sha: query, SHA256_PREFIX + sha: query})
    return manifest
