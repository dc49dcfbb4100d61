"""Where the exact-match response cache keeps its answers (docs/caching.md): bytes under hashed keys.

Two backends with one small interface:

- `MemoryCacheStore`: per process, least recently used first out, bounded by entries and bytes, expiry checked
  on read.
- `RedisCacheStore`: two levels, so that the request path almost never waits on Redis. **L1** is a
  `MemoryCacheStore` of this replica (every own store and every answer read from Redis lands there). **L2** is
  Redis, shared by every replica, with a local **key index**: the digests known to be in Redis and their expiry,
  learned from the other replicas' announcements (pub/sub) and, at start and after an outage, from an index
  sorted set. A lookup L1 lacks costs one `GET` only when the index has the key; otherwise it is a miss with no
  Redis call at all. A store is an L1 put plus a place in a bounded queue; a background writer sends the queue
  as one `EVALSHA` (`WRITE_LUA`: `SET .. PX` per answer, one `ZADD` to the index, one `PUBLISH` of the
  digests) at most once per `batch_s`, so a miss's only cost on the request path is local. One script call
  per batch, not a pipeline: redis-py spends about 18 µs of CPU per pipelined command even in batches of 32,
  and about 5 µs per answer packed into one call (measured; the CPU per request is what caps a replica).

Redis down (`RedisLink`: logged once per outage, probed until it answers, `unavailable` for the gauge): L1 keeps
serving and storing (the local fallback), nothing is queued, the index learns nothing, and no Redis call is made
on the request path. When Redis answers again the listener resubscribes and reloads the index.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from modelyard.state.redis_link import RedisLink, make_client

log = logging.getLogger("modelyard.state")

#: An announcement is records of a 32-byte key digest and the entry's time to live in ms (8 bytes, big-endian).
DIGEST_BYTES = 32
_TTL_BYTES = 8
_RECORD = DIGEST_BYTES + _TTL_BYTES

#: One batch of stores. KEYS: the answers' keys, then the index. ARGV: channel, announcement (the records the
#: channel gets: digest and TTL in ms per answer, in KEYS order), now (epoch ms), trim ("1": drop expired index
#: members and all but the `max_entries` that expire last), max_entries, the values (each a 4-byte big-endian
#: length and the bytes). One argument per answer besides its key: redis-py's packing costs about 2 µs an
#: argument. Index commands may fail (something else under its key): counted, returned, and the answers are
#: still stored and announced.
WRITE_LUA = """
local n = #KEYS - 1
local index = KEYS[n + 1]
local records = ARGV[2]
local now = tonumber(ARGV[3])
local values = ARGV[6]
local at = 1
local zargs = {}
for i = 1, n do
  local rec = (i - 1) * 40 + 1
  local ttl = 0
  for b = rec + 32, rec + 39 do ttl = ttl * 256 + string.byte(records, b) end
  local b1, b2, b3, b4 = string.byte(values, at, at + 3)
  local size = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  redis.call('SET', KEYS[i], string.sub(values, at + 4, at + 3 + size), 'PX', ttl)
  at = at + 4 + size
  zargs[#zargs + 1] = now + ttl
  zargs[#zargs + 1] = string.sub(records, rec, rec + 31)
end
local failed = 0
local r = redis.pcall('ZADD', index, unpack(zargs))
if type(r) == 'table' and r.err then failed = failed + 1 end
if ARGV[4] == '1' then
  r = redis.pcall('ZREMRANGEBYSCORE', index, '-inf', now)
  if type(r) == 'table' and r.err then failed = failed + 1 end
  r = redis.pcall('ZREMRANGEBYRANK', index, 0, -(tonumber(ARGV[5]) + 1))
  if type(r) == 'table' and r.err then failed = failed + 1 end
end
redis.call('PUBLISH', ARGV[1], records)
return failed
"""


@dataclass(slots=True)
class CacheStats:
    """Counters for `/metrics` (the server's metrics module reads them; nothing here resets them)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    #: Bytes the in-memory level holds now (keys and values); Redis keeps its own count.
    bytes: int = 0
    #: Bytes handed to the backend since start (both backends).
    bytes_written: int = 0
    #: Entries the in-memory level dropped to stay within its bounds (expired ones are not counted).
    evictions: int = 0
    #: Answers not stored because they were over `max_entry_bytes`.
    too_large: int = 0
    #: Redis calls that failed (a lookup then a miss, a batch of writes lost, the listener cut off).
    redis_errors: int = 0
    #: Answers kept locally but not written to Redis because the write queue was full.
    dropped: int = 0
    #: Lookups served from Redis (the other replicas' answers; also counted in `hits` by the cache).
    shared_hits: int = 0


class CacheStore(Protocol):
    """Bytes by key, each with its own time to live."""

    stats: CacheStats

    async def start(self) -> None:
        """Start background work (the Redis store's writer and listener); stores start on first use too."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value, or None (absent, expired, or the backend unreachable)."""
        ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Keep `value` for `ttl_s`; False when it was not kept at all."""
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

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def get(self, key: str) -> bytes | None:
        return self.lookup_now(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        kept = self.keep_now(key, value, ttl_s)
        if kept:
            self.stats.bytes_written += len(value)
        return kept

    def lookup_now(self, key: str) -> bytes | None:
        """`get` without the coroutine (the two-level store calls it on every lookup)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def keep_now(self, key: str, value: bytes, ttl_s: float) -> bool:
        """`put` without the coroutine and without counting `bytes_written` (a value read from Redis is not
        a new answer)."""
        size = len(key) + len(value)
        if size > self.max_bytes or ttl_s <= 0:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        stats = self.stats
        stats.bytes += size
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


class KeyIndex:
    """The digests known to be in Redis, with their local expiry; at most `max_entries` (the oldest learned go
    first, an expired one when it is read). Digests only: never client text."""

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, digest: bytes) -> bool:
        return self.expiry(digest) is not None

    def add(self, digest: bytes, ttl_s: float) -> None:
        if ttl_s <= 0 or len(digest) != DIGEST_BYTES:
            return
        expiry = self._expiry
        expiry.pop(digest, None)
        expiry[digest] = self._clock() + ttl_s
        while len(expiry) > self.max_entries:
            expiry.popitem(last=False)

    def expiry(self, digest: bytes) -> float | None:
        """When the entry expires (this process's monotonic clock), or None: unknown or expired."""
        expires = self._expiry.get(digest)
        if expires is None:
            return None
        if expires <= self._clock():
            del self._expiry[digest]
            return None
        return expires

    def discard(self, digest: bytes) -> None:
        self._expiry.pop(digest, None)

    def clear(self) -> None:
        self._expiry.clear()


def key_digest(key: str) -> bytes:
    """The 32 bytes a key stands for: the caller's hex SHA-256 itself, any other string hashed (tests)."""
    if len(key) == 2 * DIGEST_BYTES:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    return hashlib.sha256(key.encode()).digest()


def announcement(records: list[tuple[bytes, int]]) -> bytes:
    """The pub/sub message for (digest, ttl_ms) records."""
    return b"".join(digest + ttl_ms.to_bytes(_TTL_BYTES, "big") for digest, ttl_ms in records)


def read_announcement(data: object) -> list[tuple[bytes, int]]:
    """(digest, ttl_ms) records of a message; [] for anything that is not one (garbage in a shared Redis)."""
    if not isinstance(data, bytes) or not data or len(data) % _RECORD:
        return []
    return [
        (data[i : i + DIGEST_BYTES], int.from_bytes(data[i + DIGEST_BYTES : i + _RECORD], "big"))
        for i in range(0, len(data), _RECORD)
    ]


class RedisCacheStore:
    """Two levels (module docstring): L1 in this process, Redis shared, a key index so that a miss costs no
    Redis call, and stores written in the background. Keys in Redis are `<prefix>:rc:<hex digest>`; the index
    is the sorted set `<prefix>:rc-index` (scored by expiry, epoch ms) and the channel `<prefix>:rc-keys`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        client: Any = None,
        stats: CacheStats | None = None,
        batch_s: float = 0.005,
        batch_max: int = 256,
        queue_max: int = 4096,
        queue_max_bytes: int | None = None,
        trim_every_s: float = 1.0,
    ) -> None:
        self.prefix = f"{prefix}:rc:"
        self.index_key = f"{prefix}:rc-index"
        self.channel = f"{prefix}:rc-keys"
        self.stats = stats or CacheStats()
        self.max_entries = max_entries
        self.local = MemoryCacheStore(max_entries, max_bytes, stats=self.stats)
        self.index = KeyIndex(max_entries)
        self.client = client if client is not None else make_client(url, timeout_s)
        self.link = RedisLink(lambda: self.client, what="response cache", timeout_s=timeout_s, on_return=self._back)
        self._script = self.client.register_script(WRITE_LUA)
        self._errors = self.link.errors
        self.batch_s = batch_s
        self.batch_max = batch_max
        self.queue_max = queue_max
        #: The queue holds values until they are written: bounded in bytes too (by default L1's `max_bytes`).
        self.queue_max_bytes = queue_max_bytes if queue_max_bytes is not None else max_bytes
        self.trim_every_s = trim_every_s
        self._queue: list[tuple[bytes, bytes, int]] = []
        self._queue_bytes = 0
        self._queued = asyncio.Event()
        self._up = asyncio.Event()
        self._up.set()
        #: Set while the listener is subscribed (its index loaded): other replicas' answers reach this one.
        self.listening = asyncio.Event()
        self._writing = False
        self._last_write = 0.0
        self._last_trim = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def unavailable(self) -> bool:
        """True while Redis is known to be unreachable (the `/metrics` gauge): L1 alone serves meanwhile."""
        return not self.link.available

    async def start(self) -> None:
        self._start()

    def _start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="modelyard-response-cache-writer"),
            loop.create_task(self._listen_loop(), name="modelyard-response-cache-listener"),
        ]

    # ------------------------------------------------------------------ the request path

    async def get(self, key: str) -> bytes | None:
        if not self._tasks:
            self._start()
        value = self.local.lookup_now(key)
        if value is not None or not self.link.available:
            return value
        digest = key_digest(key)
        expires = self.index.expiry(digest)
        if expires is None:
            return None  # not known to be in Redis: a miss without a call
        try:
            value = await self.client.get(self.prefix + digest.hex())
        except self._errors as exc:
            self._failed(exc)
            return None
        if not isinstance(value, bytes):
            self.index.discard(digest)
            return None
        self.stats.shared_hits += 1
        self.local.keep_now(key, value, expires - time.monotonic())
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        if not self._tasks:
            self._start()
        kept = self.local.keep_now(key, value, ttl_s)
        queued = False
        if self.link.available:
            if len(self._queue) >= self.queue_max or self._queue_bytes + len(value) > self.queue_max_bytes:
                self.stats.dropped += 1
            else:
                self._queue.append((key_digest(key), value, max(1, int(ttl_s * 1000))))
                self._queue_bytes += len(value)
                self._queued.set()
                queued = True
        if kept or queued:
            self.stats.bytes_written += len(value)
        return kept or queued

    # ------------------------------------------------------------------ background

    async def _write_loop(self) -> None:
        """At most one write per `batch_s`: a quiet replica's answer goes out at once, a busy one's in batches
        (fewer round trips and far less client CPU per answer)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._queued.wait()
            wait = self._last_write + self.batch_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            batch = self._queue[: self.batch_max]
            del self._queue[: self.batch_max]
            self._queue_bytes -= sum(len(value) for _, value, _ in batch)
            if not self._queue:
                self._queued.clear()
            self._last_write = loop.time()
            if not batch or not self.link.available:
                continue  # kept in L1 only: Redis went away after they were queued
            self._writing = True
            try:
                await self._write(batch)
            except self._errors as exc:
                self._failed(exc)
            except Exception as exc:  # the writer must outlive anything one batch can raise
                log.warning("response cache: a batch of writes to Redis failed unexpectedly: %r", exc)
            finally:
                self._writing = False

    async def _write(self, batch: list[tuple[bytes, bytes, int]]) -> None:
        now = time.time()
        trim = now - self._last_trim >= self.trim_every_s
        if trim:
            self._last_trim = now
        keys = [self.prefix + digest.hex() for digest, _, _ in batch]
        keys.append(self.index_key)
        records = [(digest, ttl_ms) for digest, _, ttl_ms in batch]
        values = b"".join(len(value).to_bytes(4, "big") + value for _, value, _ in batch)
        args = [self.channel, announcement(records), int(now * 1000), b"1" if trim else b"0", self.max_entries, values]
        failed = await self._script(keys=keys, args=args)
        if failed:  # an index command Redis refused (e.g. garbage under its key): counted, not an outage
            self.stats.redis_errors += int(failed)
            log.warning("response cache: Redis refused %s index command(s) under %s", failed, self.index_key)
        for digest, ttl_ms in records:
            self.index.add(digest, ttl_ms / 1000)

    async def _listen_loop(self) -> None:
        """Subscribe, then load the recent index (nothing announced in between is lost), then learn every
        announcement; after an outage, the same again once the probe finds Redis back."""
        while True:
            await self._up.wait()
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._load_index()
                self.listening.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._learn(message.get("data"))
            except self._errors as exc:
                self._failed(exc)
            except Exception as exc:  # the listener must outlive anything a message can raise
                log.warning("response cache: the key listener failed unexpectedly: %r", exc)
                await asyncio.sleep(self.link.probe_max_s)
            finally:
                self.listening.clear()
                await asyncio.gather(pubsub.aclose(), return_exceptions=True)

    def _learn(self, data: object) -> None:
        for digest, ttl_ms in read_announcement(data):
            self.index.add(digest, ttl_ms / 1000)

    async def _load_index(self) -> None:
        """The recent index from Redis: the `max_entries` entries that expire last."""
        now_ms = int(time.time() * 1000)
        rows = await self.client.zrevrangebyscore(
            self.index_key, "+inf", now_ms, start=0, num=self.max_entries, withscores=True
        )
        for member, score in reversed(rows):  # the latest last: the index drops its oldest first
            if isinstance(member, bytes):
                self.index.add(member, (float(score) - now_ms) / 1000)

    async def _back(self) -> str:
        """The probe found Redis again: the listener resubscribes and reloads the index from Redis, which is
        the truth now (a restarted Redis has lost what this index knew)."""
        self.index.clear()
        self._up.set()
        return "the response cache is shared again"

    def _failed(self, exc: BaseException) -> None:
        self.stats.redis_errors += 1
        if self.link.went_down(exc, "the response cache serves and stores on this replica only"):
            self._up.clear()
            self._queue.clear()
            self._queue_bytes = 0
            self._queued.clear()

    # ------------------------------------------------------------------ tests and shutdown

    async def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every queued store has been sent (or dropped); False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._writing:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    async def close(self) -> None:
        if self._tasks and self.link.available:
            await self.flush(self.link.timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.link.close()
        try:
            await asyncio.wait_for(self.client.aclose(), self.link.timeout_s)
        except self._errors:
            pass
        await self.local.close()
