"""Where the exact-match response cache keeps its answers (docs/caching.md): bytes under hashed keys.

Two backends with one small interface: `MemoryCacheStore` (per process, least recently used first out, bounded by
entries and bytes, expiry checked on read) and `RedisCacheStore` (shared by every replica: one `GET` per lookup,
one `SET .. PX` per store, nothing else on the request path). A Redis outage is a miss and no store, counted,
logged once per outage (`RedisLink`), and never an error to the client; while it lasts no call is made at all,
so a dead Redis costs a lookup nothing but a flag check.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from modelyard.state.redis_link import RedisLink, make_client


@dataclass(slots=True)
class CacheStats:
    """Counters for `/metrics` (the server's metrics module reads them; nothing here resets them)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    #: Bytes the memory backend holds now (keys and values); Redis keeps its own count.
    bytes: int = 0
    #: Bytes handed to the backend since start (both backends).
    bytes_written: int = 0
    #: Entries the memory backend dropped to stay within its bounds (expired ones are not counted).
    evictions: int = 0
    #: Answers not stored because they were over `max_entry_bytes`.
    too_large: int = 0
    #: Redis calls that failed (each one a miss or a skipped store).
    redis_errors: int = 0


class CacheStore(Protocol):
    """Bytes by key, each with its own time to live."""

    stats: CacheStats

    async def get(self, key: str) -> bytes | None:
        """The value, or None (absent, expired, or the backend unreachable)."""
        ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Keep `value` for `ttl_s`; False when it was not kept (the backend unreachable)."""
        ...

    async def close(self) -> None:
        """Release connections and background tasks."""
        ...


class MemoryCacheStore:
    """Per process: an LRU over (expiry, value), bounded by `max_entries` and `max_bytes` (keys counted too).
    Expired entries go when read or when the LRU end reaches them; no timer, no task."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        stats: CacheStats | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = stats or CacheStats()
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        size = len(key) + len(value)
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        stats = self.stats
        stats.bytes += size
        stats.bytes_written += len(value)
        while len(self._entries) > self.max_entries or stats.bytes > self.max_bytes:
            oldest, (expires, _) = next(iter(self._entries.items()))
            self._drop(oldest)
            if expires > self._clock():
                stats.evictions += 1
        return True

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.stats.bytes -= len(key) + len(value)

    async def close(self) -> None:
        self._entries.clear()
        self.stats.bytes = 0


class RedisCacheStore:
    """Shared by every replica. A lookup is one `GET`; a store one `SET key value PX ttl`. Keys are
    `<prefix>:rc:<hex digest>` (the caller hashes: no client text in a key)."""

    def __init__(
        self, url: str, *, prefix: str, timeout_s: float, client: Any = None, stats: CacheStats | None = None
    ) -> None:
        self.prefix = f"{prefix}:rc:"
        self.stats = stats or CacheStats()
        self.client = client if client is not None else make_client(url, timeout_s)
        self.link = RedisLink(lambda: self.client, what="response cache", timeout_s=timeout_s)
        self._errors = self.link.errors

    async def get(self, key: str) -> bytes | None:
        if not self.link.available:
            return None
        try:
            value = await self.client.get(self.prefix + key)
        except self._errors as exc:
            self._failed(exc)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        if not self.link.available:
            return False
        try:
            await self.client.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except self._errors as exc:
            self._failed(exc)
            return False
        self.stats.bytes_written += len(value)
        return True

    def _failed(self, exc: BaseException) -> None:
        self.stats.redis_errors += 1
        self.link.went_down(exc, "every response-cache lookup is a miss and nothing is stored")

    async def close(self) -> None:
        await self.link.close()
        try:
            await asyncio.wait_for(self.client.aclose(), self.link.timeout_s)
        except self._errors:
            pass
