"""Automatic persisted queries (Apollo APQ, version 1): a client sends the SHA-256 of a query
instead of its text; an unknown hash is answered PERSISTED_QUERY_NOT_FOUND and the client
retries once with both. Stored in Redis with a TTL (shared by every process), fronted by a small
in-process LRU, which is all there is without Redis."""

import hashlib
import logging
import re
from collections import OrderedDict
from pathlib import Path

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

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
        self._local: OrderedDict[str, str] = OrderedDict()
        self._local_size = settings.apq_cache_size
        # Allow-list mode: only these queries run, nothing is registered at runtime.
        self.allow_list = manifest

    async def get(self, sha: str) -> str | None:
        if self.allow_list is not None:
            return self.allow_list.get(sha)
        query = self._local.get(sha)
        if query is not None:
            self._local.move_to_end(sha)
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
        self._remember(sha, query)
        return query

    async def put(self, sha: str, query: str) -> None:
        self._remember(sha, query)
        if self._redis is None or self._circuit.is_open:
            return
        try:
            await self._redis.set(self._prefix + sha, query, ex=self._ttl)
        except (RedisError, OSError) as error:
            self._failed(error)

    def _remember(self, sha: str, query: str) -> None:
        self._local[sha] = query
        self._local.move_to_end(sha)
        while len(self._local) > self._local_size:
            self._local.popitem(last=False)

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
