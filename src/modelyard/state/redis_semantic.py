"""Semantic-cache entries shared between replicas through one bounded Redis stream.

Why a stream and not a vector search in Redis: the lookup is the only part on a request's path, and it stays
local (numpy over the replica's own shelf, on the embedding thread, no Redis call); only stores travel. A store
is queued here and appended by a background task (`XADD ... MAXLEN ~ max_len`, the key's expiry pushed to the
entries' TTL); every replica's reader task follows the stream with a blocking `XREAD`, so an entry reaches the
other replicas about one round trip after it is written, and a replica that starts reads the stream from its
beginning (at most `max_len` entries) before it says it is ready. The cost is that every replica holds every
namespace's entries (bounded by its local cache's own rules), which is what makes a hit on one a hit on all.

Bounds: an entry larger than `max_entry_bytes` is not shared; the stream keeps about `max_len` entries (Redis's
`~` trims whole nodes, so up to one node more); at most `max_pending` stores wait for Redis (the oldest go
first); a read takes at most `batch` entries. An entry past its TTL (its writer's wall clock) is skipped.

Outage: any Redis error or no answer within `timeout_s` marks the link down (one warning, `unavailable`,
`outages`); meanwhile stores queue (bounded) and the reader waits; once the probe reaches Redis again, the
queue is written and the reader resumes where it stopped. A request never waits on any of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from modelyard.state.redis_link import RedisLink, cancel_until_done, make_client

log = logging.getLogger("modelyard.state")

#: The stream field that holds an entry.
FIELD = b"e"


class SharedEntry(msgspec.Struct, array_like=True, frozen=True):
    """One stored answer as it travels: who wrote it, where it belongs, its vector and answer, and its age."""

    origin: str  # the writing replica's id: a replica skips its own entries (already in its shelf)
    ns: str
    vector: bytes  # float32, native byte order, unit length
    answer: bytes  # the owner's serialisation (routing/intelligence.py)
    at: float  # wall-clock time of the store (replicas' monotonic clocks are not comparable)
    ttl_s: float | None = None
    #: The prompt's text, for the receiver's precision guard (routing/cache_guard.py). Last and optional so
    #: entries written before it decode (as None: such an entry is never inserted, so never a hit).
    prompt: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SharedEntry).decode

Deliver = Callable[[list[SharedEntry]], Awaitable[None]]


class SemanticStream:
    """Publishes this replica's stores and delivers the other replicas' to `deliver`, in order, in batches."""

    def __init__(
        self,
        url: str,
        *,
        key: str,
        replica_id: str,
        deliver: Deliver,
        timeout_s: float = 0.5,
        max_len: int = 4096,
        max_entry_bytes: int = 64 * 1024,
        max_pending: int = 1024,
        batch: int = 256,
        block_s: float = 2.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_len < 1 or max_entry_bytes < 1 or max_pending < 1 or batch < 1:
            raise ValueError("stream bounds must be positive")
        self.key = key
        self.replica_id = replica_id
        self.max_len = max_len
        self.max_entry_bytes = max_entry_bytes
        self.max_pending = max_pending
        self.batch = batch
        self.block_s = block_s
        self.wall = wall
        self._deliver = deliver
        self._client: Any = make_client(url, timeout_s)
        # The reader's own client: a blocking XREAD holds its connection for up to block_s.
        self._reader: Any = make_client(url, block_s + timeout_s)
        self.link = RedisLink(lambda: self._client, what="semantic cache", timeout_s=timeout_s)
        from redis.exceptions import ResponseError

        self._refused: type[BaseException] = ResponseError
        self._warned = False
        self._closed = False
        self._pending: deque[tuple[bytes, float | None]] = deque()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # the first catch-up is done, or Redis was found down
        self._tasks: list[asyncio.Task[None]] = []
        self.last_id: bytes = b"0-0"
        self.published = 0  # entries written to Redis
        self.received = 0  # other replicas' entries delivered
        self.expired = 0  # entries read past their TTL
        self.oversized = 0  # stores not shared: larger than max_entry_bytes
        self.dropped = 0  # stores not shared: the queue was full (an outage)
        self.malformed = 0  # stream entries that did not decode

    @property
    def unavailable(self) -> bool:
        """Redis is unreachable now: this replica serves from its local cache only."""
        return not self.link.available

    @property
    def outages(self) -> int:
        return self.link.outages

    async def start(self, wait_s: float = 2.0) -> None:
        """Start the writer and the reader; wait up to `wait_s` for the stream's recent entries (not at all
        once Redis is found unreachable: the replica starts with its local cache only)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="modelyard-semantic-write"),
            loop.create_task(self._read_loop(), name="modelyard-semantic-read"),
        ]
        try:
            async with asyncio.timeout(wait_s):
                await self._settled.wait()
        except TimeoutError:
            log.warning("semantic cache: the shared entries were not all loaded within %.1fs", wait_s)

    def publish(self, ns: str, vector: bytes, answer: bytes, ttl_s: float | None, prompt: str | None = None) -> bool:
        """Queue one store for the other replicas (never waits); False when it is not shared (too large)."""
        payload = _encode(SharedEntry(self.replica_id, ns, vector, answer, self.wall(), ttl_s, prompt))
        if len(payload) > self.max_entry_bytes:
            self.oversized += 1
            return False
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((payload, ttl_s))
        self._wake.set()
        return True

    async def _write_loop(self) -> None:
        while not self._closed:
            await self._wake.wait()
            if self._closed:
                return
            if self.unavailable:
                await asyncio.sleep(self.link.probe_min_s)  # the probe brings it back; the queue waits
                continue
            self._wake.clear()
            while self._pending:
                if self.unavailable:  # the reader found Redis gone meanwhile: resume once it is back
                    self._wake.set()
                    break
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), 256))]
                try:
                    await self._append(batch)
                except self._refused as exc:  # Redis is up but refuses (e.g. the key holds another type)
                    self.dropped += len(batch)
                    self._warn_once(f"semantic cache: Redis refused the stream write ({exc}); not shared")
                    continue
                except self.link.errors as exc:
                    self.link.went_down(exc, "semantic-cache stores stay on this replica")
                    self._requeue(batch)
                    self._wake.set()
                    break
                self.published += len(batch)

    def _requeue(self, batch: list[tuple[bytes, float | None]]) -> None:
        """Put a batch that was not written back in front of the queue, keeping the queue's bound (the
        oldest go first)."""
        room = max(self.max_pending - len(self._pending), 0)
        keep = batch[len(batch) - min(room, len(batch)) :]
        self.dropped += len(batch) - len(keep)
        self._pending.extendleft(reversed(keep))

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    async def _append(self, batch: list[tuple[bytes, float | None]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for payload, _ in batch:
            pipe.xadd(self.key, {FIELD: payload}, maxlen=self.max_len, approximate=True)
        ttls = [ttl for _, ttl in batch]
        if None in ttls:
            pipe.persist(self.key)
        else:
            pipe.pexpire(self.key, max(1, int(max(t for t in ttls if t is not None) * 1000)))
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that arrives as the
        # write completes (the task then never ends at close).
        async with asyncio.timeout(self.link.timeout_s):
            await pipe.execute()

    async def _read_loop(self) -> None:
        while not self._closed:
            if self.unavailable:
                await asyncio.sleep(self.link.probe_min_s)
                continue
            # Catching up: no BLOCK (an empty answer means caught up); then a blocking read per new batch.
            block = int(self.block_s * 1000) if self._settled.is_set() else None
            try:
                reply = await self._reader.xread({self.key: self.last_id}, count=self.batch, block=block)
            except self._refused as exc:  # Redis is up but refuses: not an outage; try again later
                self._warn_once(f"semantic cache: Redis refused the stream read ({exc}); not shared")
                self._settled.set()
                await asyncio.sleep(self.block_s)
                continue
            except self.link.errors as exc:
                self.link.went_down(exc, "semantic-cache entries of other replicas are not received")
                self._settled.set()
                continue
            rows = reply[0][1] if reply else []
            if rows:
                self.last_id = rows[-1][0]
                try:
                    await self._deliver(self._entries(rows))
                except Exception:  # the reader must outlive a bad batch; the request path never sees it
                    log.exception("semantic cache: inserting shared entries failed")
            if len(rows) < self.batch:
                self._settled.set()

    def _entries(self, rows: list[tuple[bytes, dict[bytes, bytes]]]) -> list[SharedEntry]:
        now = self.wall()
        out: list[SharedEntry] = []
        for _, fields in rows:
            raw = fields.get(FIELD)
            try:
                if raw is None or len(raw) > self.max_entry_bytes:  # not written by a replica of ours
                    raise msgspec.DecodeError("no entry, or too large")
                entry = _decode(raw)
            except msgspec.DecodeError:
                self.malformed += 1
                continue
            if entry.origin == self.replica_id:
                continue  # already in this replica's shelf
            if entry.ttl_s is not None and now - entry.at >= entry.ttl_s:
                self.expired += 1
                continue
            out.append(entry)
        self.received += len(out)
        return out

    async def close(self) -> None:
        # The flag as well as the cancel: redis-py can swallow a cancellation that lands inside a command
        # (measured: a writer cancelled mid-pipeline went back to waiting), so the loops also stop on it.
        self._closed = True
        self._wake.set()
        await cancel_until_done(self._tasks)
        self._tasks = []
        await self.link.close()
        for client in (self._client, self._reader):
            try:
                await client.aclose()
            except self.link.errors:
                pass
