"""The spend log: one record per request, durable in a local spool first, written to the store in batches.

The request path calls `commit(outcome)`: it builds the record (`convert`), appends its JSON line to the
buffer of the current event-loop tick and returns a future. The first commit of a tick schedules one flush
(`loop.call_soon`) that writes the whole tick's buffer to the spool with one `os.write()` and resolves the
tick's futures; the handlers await it before sending a response's last byte, so a completed request's spend is in
the kernel before the client has its answer (see `spool.py`). `submit` is the same without waiting.

A background task drains the records into the store in batches of up to `batch_size` (a write starts once
`write_at` records wait, or `flush_interval_s` passed) and acknowledges them to the spool, which deletes segments once
fully acknowledged; it also fsyncs the spool once per flush interval. On start it replays what a crashed
process left in the spool: the store ignores ids it already has, so a replay never doubles a row.

Two kinds of failure, told apart: an outage (connection refused, a locked database) is retried with
backoff for as long as it lasts, the records staying in the spool; a data error (a row the store refuses)
is bisected down to the bad rows, which are sanitised and retried once, then set aside in the dead-letter
table (`dead_letters` counts them) while the rest of the batch is written. Nothing retries forever on a
bad row. If the in-memory queue is full (`max_queue`), a spooled record is left to the next start's replay
(`deferred`); without a spool it is dropped (`dropped`). `close()` writes everything it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from modelyard.accounting.spool import SEGMENT_BYTES, Segment, Spool
from modelyard.schema.errors import ModelyardError

log = logging.getLogger("modelyard.spend")

#: A write starts once this many records wait, not a whole `batch_size`. The store's CPU work for a batch is
#: one burst on the machine's cores, and a burst of 500 rows (~8 ms in SQLite then) was most of the gateway's
#: c=1 p99 tail (issue #20, docs/benchmarks.md: +0.64-0.75 ms over the pass-through with 500-row writes,
#: +0.41-0.44 with 100-200, measured before the store's insert got cheaper); a loaded gateway finds more
#: than `batch_size` waiting when a write ends and still writes full batches, where a row costs least
#: (SQLite's write_spend: 10.0 µs of CPU a row at 500, 11.1 at 200; bench/spend_write_cost.py).
WRITE_AT = 200

_INT64 = (-(2**63), 2**63 - 1)
#: Characters PostgreSQL's text type cannot hold (NUL) or UTF-8 cannot encode (lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class SpendRecord(msgspec.Struct, kw_only=True):
    """One request as the spend log keeps it (no prompt or completion text unless `content` is set)."""

    id: str
    at: float  # unix time the request ended
    key_id: str | None = None
    key_name: str | None = None
    model: str | None = None  # what the client asked for
    deployment: str | None = None  # what served it
    provider: str | None = None
    endpoint: str = ""
    attempts: int = 0
    attempt_log: str = ""  # the x-modelyard-attempts text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: str = "ok"
    error_kind: str | None = None
    content: str | None = None
    #: What the guardrails ran and found (`x-modelyard-guardrails` text); None when none applied.
    guardrails: str | None = None
    #: The routing decision, compact JSON (routing/trace.py: ranking, skips and their reasons, features;
    #: every strategy note when the plan was explained); None when nothing was planned.
    route: str | None = None
    #: Every attempt, JSON (routing/trace.py): deployment, start and duration, outcome, status, cost, error.
    attempt_detail: str | None = None
    #: What learning from feedback needs (docs/feedback.md), only for requests the routing intelligence
    #: analysed: the task (given or recognised), the learned router's P(good) for the deployment that answered,
    #: and the prompt's embedding (`space|base64 float32`, state/feedback.py), never its text.
    task: str | None = None
    predicted: float | None = None
    embedding: str | None = None


class SpendDataError(ModelyardError):
    """The store refused records for what they hold (bad data), not because it is unreachable."""


class RecentRequests:
    """Request id → key id of the requests this process committed lately: how `POST /v1/feedback` tells, with
    no store read, whose request an id is, even before its row reaches the store (server/feedback.py).
    Bounded: past `max_entries` the oldest go (an OrderedDict: O(1) either end; about 170 bytes an entry)."""

    __slots__ = ("_ids", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max(1, max_entries)
        self._ids: OrderedDict[str, str | None] = OrderedDict()

    def add(self, request_id: str, key_id: str | None) -> None:
        ids = self._ids
        ids[request_id] = key_id
        if len(ids) > self.max_entries:
            ids.popitem(last=False)

    def lookup(self, request_id: str) -> tuple[bool, str | None]:
        """(known, the key id that made it: None in open mode)."""
        try:
            return True, self._ids[request_id]
        except KeyError:
            return False, None

    def __len__(self) -> int:
        return len(self._ids)


class SpendSink(Protocol):
    async def write_spend(self, records: Sequence[SpendRecord]) -> None: ...


def unstorable(text: str) -> bool:
    """Whether `text` holds a character some store cannot (NUL, a lone surrogate): `escape_text` would change it.
    ASCII text (the usual spend row, a flag CPython keeps on every str) needs only the NUL test: the regex
    costs ~300 times more on a batch's text (42 µs vs 0.13 for 18 kB, measured)."""
    if text.isascii():
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None


def escape_text(text: str) -> str:
    """`text` with NUL and lone surrogates written as `\\u0000`-style escapes (storable everywhere)."""
    if not unstorable(text):
        return text
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def sanitise(record: SpendRecord) -> SpendRecord:
    """A copy every store can take: text escaped, integers clamped to 64 bits, non-finite floats as 0."""
    changes: dict[str, Any] = {}
    for name in record.__struct_fields__:
        value = getattr(record, name)
        if isinstance(value, str):
            fixed: Any = escape_text(value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            fixed = min(max(value, _INT64[0]), _INT64[1])
        elif isinstance(value, float):
            fixed = value if math.isfinite(value) else 0.0
        else:
            continue
        if fixed is not value and fixed != value:
            changes[name] = fixed
    return msgspec.structs.replace(record, **changes) if changes else record


def is_data_error(exc: BaseException) -> bool:
    """A failure that retrying the same rows cannot fix (vs. an outage, which waiting can)."""
    return isinstance(exc, SpendDataError | ValueError | TypeError | OverflowError)


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(SpendRecord).decode
_Entry = tuple[SpendRecord, Segment | None]


class SpendWriter:
    """Spend records from the request path: into the spool at once, into the store in the background."""

    def __init__(
        self,
        sink: SpendSink,
        *,
        convert: Callable[[Any], SpendRecord] | None = None,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        retry_base_s: float = 0.2,
        retry_max_s: float = 5.0,
        spool_dir: str | Path | None = None,
        segment_bytes: int = SEGMENT_BYTES,
        recent_max: int = 100_000,
    ) -> None:
        self.sink = sink
        self.convert = convert
        self.batch_size = max(1, batch_size)
        #: A write starts once this many records wait (or the flush interval passed); it takes up to
        #: `batch_size`, so a loaded gateway still writes full batches (see WRITE_AT).
        self.write_at = min(self.batch_size, WRITE_AT)
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.spool_dir = None if spool_dir is None else Path(spool_dir)
        self.segment_bytes = segment_bytes
        self.written = 0  # records the store acknowledged
        self.dropped = 0  # records lost (no spool and a full queue, a bug in `convert`, closed writer)
        self.deferred = 0  # spooled records not queued (full queue): the next start replays them
        self.failures = 0  # failed store writes (outages and data errors)
        self.dead_letters = 0  # records the store refused even sanitised: set aside, not written
        self.replayed = 0  # records found in the spool at start
        self.spool_errors = 0  # failed spool writes (disk full...): those records are only in memory
        self.spool: Spool | None = None
        #: The requests committed lately, whose ids feedback may name (see RecentRequests).
        self.recent = RecentRequests(recent_max)
        self._queue: deque[_Entry] = deque()
        self._inflight: list[_Entry] = []
        self._tick_scheduled = False
        self._tick_waiters: list[asyncio.Future[None]] = []
        self._tick_records: list[SpendRecord] = []
        self._tick_lines: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._urgent = False
        self._synced_at = 0.0
        #: When a reader last forced a flush (`flush_for_read`), and the one such flush in progress.
        self._read_flushed_at = -math.inf
        self._read_flush: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the spool (adopting what a crashed process left: replayed first), start the writer task."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._full = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        if self.spool_dir is not None:
            self._open_spool(self.spool_dir)
        self._task = asyncio.create_task(self._run(), name="modelyard-spend-writer")
        if self._queue:
            self._idle.clear()
            self._wake.set()

    def _open_spool(self, directory: Path) -> None:
        """Open the spool and queue what it holds; a directory we cannot use is loud but not fatal (the gateway
        serves on, with the durability of the in-memory queue only: `modelyard_spend_spool_errors`)."""
        spool = Spool(directory, segment_bytes=self.segment_bytes)
        try:
            adopted = spool.open()
        except OSError as exc:
            self.spool_errors += 1
            log.error(
                "spend spool disabled: cannot use %s (%s); set spend.spool_dir to a writable directory", directory, exc
            )
            return
        self.spool = spool
        for segment, lines in adopted:
            self._replay(segment, lines)

    async def close(self) -> None:
        """Write everything queued, then stop (what the store refuses to take stays in the spool)."""
        if self._task is None:
            return
        self._closing = True
        self._flush_tick()
        assert self._full is not None and self._wake is not None
        self._full.set()
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            if self.spool is not None:
                self.spool.close()
                self.spool = None

    # ------------------------------------------------------------------ hot path

    def commit(self, item: Any) -> asyncio.Future[None] | None:
        """Take one record (or what `convert` makes one of); the future resolves once it is in the spool.

        None when there is nothing to wait for (no spool, or the record was dropped). Never raises. Each
        caller gets its own future: a committer cancelled while waiting cancels nobody else's.
        """
        if not self._take(item):
            return None
        waiter = self._loop.create_future()  # type: ignore[union-attr]
        self._tick_waiters.append(waiter)
        return waiter

    def submit(self, item: Any) -> None:
        """`commit` without waiting for the spool (the record still reaches it at the end of this tick)."""
        self._take(item)

    def _take(self, item: Any) -> bool:
        """Queue the record, or buffer its line for this tick's write; True when that write is to be waited for."""
        if self._loop is None or self._closing:
            self.dropped += 1
            return False
        record = self._record(item)
        if record is None:
            return False
        self.recent.add(record.id, record.key_id)
        if self.spool is None:
            self._enqueue(record, None)
            return False
        try:
            line = _encode(record)
        except UnicodeEncodeError:  # a lone surrogate in client text: escaped, the rest kept
            record = sanitise(record)
            line = _encode(record)
        self._tick_records.append(record)
        self._tick_lines.append(line)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self._loop.call_soon(self._flush_tick)
        return True

    def _record(self, item: Any) -> SpendRecord | None:
        convert = self.convert
        if convert is None:
            return item  # type: ignore[no-any-return]
        try:
            return convert(item)
        except Exception:  # a bug, not an outage: say so loudly, keep serving
            self.dropped += 1
            log.exception("spend log: could not build a record; dropped")
            return None

    def _flush_tick(self) -> None:
        """One write() for every record committed in this tick, then wake their committers."""
        self._tick_scheduled = False
        records, self._tick_records = self._tick_records, []
        lines, self._tick_lines = self._tick_lines, []
        waiters, self._tick_waiters = self._tick_waiters, []
        segment: Segment | None = None
        if records and self.spool is not None:
            try:
                segment = self.spool.append(b"\n".join(lines) + b"\n", len(records))
            except OSError as exc:
                self.spool_errors += 1
                if self.spool_errors & (self.spool_errors - 1) == 0:
                    log.error(
                        "spend spool write failed (%s): %d records only in memory (%d failures so far)",
                        exc,
                        len(records),
                        self.spool_errors,
                    )
        for record in records:
            self._enqueue(record, segment)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _enqueue(self, record: SpendRecord, segment: Segment | None) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue:
            if segment is not None:
                self.deferred += 1  # stays in the spool, unacknowledged: the next start writes it
                return
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # log at 1, 2, 4, 8, ... drops
                log.warning("spend log queue full (%d records): %d dropped so far", self.max_queue, self.dropped)
            return
        queue.append((record, segment))
        size = len(queue)
        if size == 1:  # the queue was empty: wake the writer (and say a write is pending)
            self._idle.clear()  # type: ignore[union-attr]
            self._wake.set()  # type: ignore[union-attr]
        elif size >= self.write_at:
            self._full.set()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ queries

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the store (in this tick's buffer, queued, or being written)."""
        return len(self._tick_records) + len(self._queue) + len(self._inflight)

    def pending_cost(self, key_id: str, since: float) -> float:
        """USD of `key_id`'s records at or after `since` that the store has not acknowledged yet (re-seeding a
        budget must count them: they are spent, only not yet in the store)."""
        total = 0.0
        for record in self._unacknowledged():
            if record.key_id == key_id and record.at >= since:
                total += record.cost_usd
        return total

    def _unacknowledged(self) -> Iterator[SpendRecord]:
        yield from self._tick_records
        for record, _ in self._inflight:
            yield record
        for record, _ in self._queue:
            yield record

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record committed so far is written; False if `timeout_s` passed first."""
        if self._task is None or self._idle is None or self._full is None:
            return True
        self._flush_tick()
        if self._idle.is_set():
            return True
        self._urgent = True
        self._full.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def flush_for_read(self, min_interval_s: float, timeout_s: float) -> None:
        """Let a reader (the dashboard) see the newest requests: flush, but at most once per `min_interval_s`
        (readers that come meanwhile wait for the one flush in progress, not one each; a dashboard refreshing
        every few seconds must not force a store write per view)."""
        if self._read_flush is None:
            self._read_flush = asyncio.Lock()
        if time.monotonic() - self._read_flushed_at < min_interval_s:
            return
        async with self._read_flush:
            if time.monotonic() - self._read_flushed_at < min_interval_s:
                return
            self._read_flushed_at = time.monotonic()
            await self.flush(timeout_s=timeout_s)

    # ------------------------------------------------------------------ background

    def _replay(self, segment: Segment, lines: list[bytes]) -> None:
        bad = 0
        for line in lines:
            try:
                record = _decode_record(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                bad += 1  # a line torn by a power loss: nothing to replay
                continue
            self._queue.append((record, segment))
            self.recent.add(record.id, record.key_id)
            self.replayed += 1
        if bad and self.spool is not None:
            log.warning("spend spool: %d unreadable lines in %s skipped", bad, segment.path.name)
            self.spool.ack(segment, bad)
        if lines:
            log.info("spend spool: replaying %d records from %s", len(lines) - bad, segment.path.name)

    async def _run(self) -> None:
        queue, full, wake, idle = self._queue, self._full, self._wake, self._idle
        assert full is not None and wake is not None and idle is not None
        while True:
            await self._maybe_sync()
            if not queue:
                self._urgent = False
                idle.set()
                if self._closing:
                    return
                wake.clear()
                await self._wait(wake, self.flush_interval_s if self._spool_dirty() else None)
                continue
            if len(queue) < self.write_at and not (self._closing or self._urgent):
                full.clear()
                await self._wait(full, self.flush_interval_s)
            count = min(self.batch_size, len(queue))
            self._inflight = [queue.popleft() for _ in range(count)]
            try:
                await self._write(self._inflight)
            finally:
                self._inflight = []

    def _spool_dirty(self) -> bool:
        spool = self.spool
        return spool is not None and any(s.dirty or (s.sealed and s.fd is not None) for s in spool.segments)

    async def _maybe_sync(self) -> None:
        spool = self.spool
        if spool is None:
            return
        now = time.monotonic()
        if self._closing or now - self._synced_at >= self.flush_interval_s:
            self._synced_at = now
            await spool.sync()

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def _write(self, batch: list[_Entry]) -> None:
        """Write `batch`: outages retried with backoff, data errors bisected down to the rows at fault."""
        parts: list[list[_Entry]] = [batch]
        delay = self.retry_base_s
        outages = 0
        while parts:
            part = parts.pop()
            try:
                await self.sink.write_spend([record for record, _ in part])
            except Exception as exc:
                self.failures += 1
                if is_data_error(exc):
                    parts.extend(await self._split(part, exc))
                    continue
                outages += 1
                if self._closing and outages >= 3:
                    self._give_up(part, parts, exc)
                    return
                log.warning("spend log write of %d records failed (%s); retrying in %.1fs", len(part), exc, delay)
                parts.append(part)
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            self._ack(part)

    async def _split(self, part: list[_Entry], exc: BaseException) -> list[list[_Entry]]:
        """Halves of a refused batch to try again; a refused single row is sanitised once, then set aside."""
        if len(part) > 1:
            middle = len(part) // 2
            return [part[middle:], part[:middle]]  # popped from the end: the first half goes first
        record, segment = part[0]
        clean = sanitise(record)
        if clean is not record:
            log.warning("spend record %s refused (%s): retrying it sanitised", record.id[:64], exc)
            return [[(clean, segment)]]
        await self._dead_letter(record, exc)
        self._ack(part, written=False)
        return []

    async def _dead_letter(self, record: SpendRecord, exc: BaseException) -> None:
        self.dead_letters += 1
        reason = f"{type(exc).__name__}: {exc}"[:1000]
        writer = getattr(self.sink, "write_dead_spend", None)
        if writer is not None:
            try:
                await writer([(record, reason)])
                log.error("spend record %s set aside in the dead-letter table: %s", record.id[:64], reason)
                return
            except Exception as dead_exc:  # the dead-letter table failed too: the log keeps it
                reason = f"{reason}; dead-letter table: {dead_exc}"
        log.error("spend record set aside (%s): %s", reason, escape_text(_encode(sanitise(record)).decode()))

    def _give_up(self, part: list[_Entry], rest: list[list[_Entry]], exc: BaseException) -> None:
        """At shutdown with the store down: spooled records wait for the next start, the others are lost."""
        entries = [entry for chunk in (part, *rest) for entry in chunk]
        entries.extend(self._queue)
        self._queue.clear()
        lost = sum(1 for _, segment in entries if segment is None)
        self.dropped += lost
        log.error(
            "spend log: store unreachable at shutdown (%s): %d records left in the spool for the next "
            "start, %d dropped",
            exc,
            len(entries) - lost,
            lost,
        )

    def _ack(self, part: Iterable[_Entry], *, written: bool = True) -> None:
        counts: dict[Segment, int] = {}
        total = 0
        for _, segment in part:
            total += 1
            if segment is not None:
                counts[segment] = counts.get(segment, 0) + 1
        if written:
            self.written += total
        spool = self.spool
        if spool is not None:
            for segment, count in counts.items():
                spool.ack(segment, count)
