"""Automatic persisted queries (Apollo APQ, version 1): a client sends the SHA-256 of a query
instead of its text; an unknown hash is answered PERSISTED_QUERY_NOT_FOUND and the client
retries once with both. Stored in Redis with a TTL (shared by every process), fronted by a small
in-process cache, which is all there is without Redis.

The in-process cache is the one bounded cache (`core.bounded.BoundedCache`, keyed by client
input like the others): when full it starts over rather than evicting the least recently used
hash. A hit costs one dict lookup and no reordering; the price is that, under a client sending
more distinct queries than it holds, the common ones are fetched from Redis again (or, without
Redis, registered again by the client's retry with the text) now and then."""

import hashlib
import logging
import re
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


def sha256_of(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.match(value) is not None


class PersistedQueries:
    def __init__(
        self,
        settings: Settings,
        redis: Redis | None,
        circuit: RedisCircuit,
        *,
        manifest: dict[str, str] | None = None,
    ) -> None:
        self._redis = redis
        self._circuit = circuit
        self._ttl = settings.apq_ttl
        self._prefix = f"{settings.redis_key_prefix}:apq:"
        self._local: BoundedCache[str, str] = BoundedCache(settings.apq_cache_size)
        # Allow-list mode: only these queries run, nothing is registered at runtime.
        self.allow_list = manifest

    async def get(self, sha: str) -> str | None:
        if self.allow_list is not None:
            return self.allow_list.get(sha)
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


def load_manifest(path: Path) -> dict[str, str]:
    """A JSON object of query hash → query text (e.g. written by a client's build); every
    hash is checked against its text, so a wrong entry fails at startup."""
    manifest = orjson.loads(path.read_bytes())
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object of sha256 → query")
    for sha, query in manifest.items():
        if not isinstance(query, str) or sha256_of(query) != sha:
            raise ValueError(f"{path}: the hash {sha!r} does not match its query")
    return manifest
