"""The identity provider's signing keys (its JWKS document), fetched over http(s) or read from a
file, cached, and refreshed without letting anyone hammer the provider."""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import orjson
from jwt import PyJWK, PyJWTError

logger = logging.getLogger(__name__)

# A JWKS is a few kilobytes; anything much larger is not one, and is not held in memory.
MAX_JWKS_BYTES = 1_000_000


class KeysUnavailable(Exception):
    """No key was ever loaded and the provider cannot be reached now: nothing can be verified,
    through no fault of the token."""


class UnknownKey(Exception):
    """The token names a key (`kid`) the provider does not publish, even after a refresh."""


class SigningKeys:
    """The keys of one JWKS URL by `kid`. A key stays in use until a newer document drops it:
    while the provider is down, verification goes on with the keys last fetched.

    The document is fetched again when a token names an unknown `kid` (the provider rotated
    its keys) and, in the background, once the keys are older than `max_age` (so a key the
    provider withdrew stops working). Fetches start at most once per `min_interval`, so
    tokens with made-up kids cost the provider one request per interval; callers arriving
    during a fetch wait for that one."""

    def __init__(
        self,
        url: str,
        *,
        max_age: float,
        min_interval: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.max_age = max_age
        self.min_interval = min_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    async def key(self, kid: str) -> PyJWK:
        """The key named `kid`; UnknownKey or KeysUnavailable when there is none to use."""
        keys = self._keys
        if keys is not None:
            key = keys.get(kid)
            if key is not None:
                if self._clock() - self._fetched_at >= self.max_age:
                    self._start_fetch()  # in the background: this key is still good now
                return key
        fetching = self._start_fetch()
        if fetching is not None:
            # Shielded: a caller that gives up (its client hung up) does not cancel the fetch
            # the others wait on.
            await asyncio.shield(fetching)
        if self._keys is None:
            raise KeysUnavailable(f"the signing keys at {self.url} cannot be loaded")
        key = self._keys.get(kid)
        if key is None:
            raise UnknownKey(kid)
        return key

    def _start_fetch(self) -> "asyncio.Task[None] | None":
        """The fetch running now, or a new one if the last began `min_interval` ago; None when
        it is too soon to ask the provider again."""
        if self._fetching is not None and not self._fetching.done():
            return self._fetching
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self.min_interval:
            return None
        self._attempted_at = now
        self._fetching = asyncio.create_task(self._refresh())
        return self._fetching

    async def _refresh(self) -> None:
        """Replace the keys with the document's; on failure keep them, and log why."""
        try:
            keys = parse_jwks(await self._read())
        except (httpx.HTTPError, OSError, ValueError) as error:
            logger.warning("JWKS %s not refreshed (%s); keeping the keys cached", self.url, error)
            return
        self._keys = keys
        self._fetched_at = self._clock()

    async def _read(self) -> bytes:
        parsed = urlparse(self.url)
        if parsed.scheme == "file":
            # Off the event loop: a file on a network mount can stall.
            return await asyncio.to_thread(_read_file, Path(unquote(parsed.path)))
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        async with self._client.stream("GET", self.url) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the document exceeds {MAX_JWKS_BYTES} bytes")
            return bytes(body)

    async def aclose(self) -> None:
        if self._fetching is not None and not self._fetching.done():
            self._fetching.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _read_file(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"the document exceeds {MAX_JWKS_BYTES} bytes")
    return data


def parse_jwks(document: bytes) -> dict[str, PyJWK]:
    """The signature keys of a JWKS document by `kid`. Keys without a kid, for encryption, or
    symmetric (`oct`: a secret has no place in a published document) are left out, as are
    keys of a type PyJWT cannot use; ValueError when no key is left."""
    try:
        data: Any = orjson.loads(document)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    members = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(members, list):
        raise ValueError("not a JWKS document (no `keys` list)")
    keys: dict[str, PyJWK] = {}
    for member in members:
        if not isinstance(member, dict):
            continue
        kid = member.get("kid")
        if not isinstance(kid, str) or member.get("use", "sig") != "sig":
            continue
        if member.get("kty") == "oct":
            continue
        try:
            keys[kid] = PyJWK(member)
        except PyJWTError as error:
            logger.info("JWKS key %r left out: %s", kid, error)
    if not keys:
        raise ValueError("no usable signature key in the document")
    return keys
