"""The SQLite store: one file (WAL mode), one connection, used from one dedicated thread.

Every call runs on a single-worker thread pool, so the event loop never blocks on disk and the
connection is only ever touched by the thread that made it. A spend batch is a few multi-row VALUES
statements in one transaction (see INSERT_ROWS for why not `executemany`, nor JSON), made by that thread or,
for a file under load, by a helper process on its own connection (`inserts`, sqlite_insert_process.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from modelyard.accounting.spend import WRITE_AT, SpendDataError, SpendRecord, unstorable
from modelyard.config.model import MEMORY_SPEND_ROWS
from modelyard.state.conversations import (
    COUNT_SQL,
    DELETE_SQL,
    PURGE_SQL,
    StoredResponse,
    chain_sql,
    insert_sql,
    response_from_row,
    response_row,
    select_sql,
)
from modelyard.state.feedback import FeedbackRecord, FeedbackSample
from modelyard.state.keys import KeyRecord
from modelyard.state.migrations import KEY_COLUMNS, MIGRATIONS, ROLLUP_GRAINS, SPEND_COLUMNS, VERSION_TABLE
from modelyard.state.rollup import (
    MINUTE_KEEP_S,
    PURGE_MINUTES_SQL,
    Delta,
    Grouped,
    PurgeClock,
    bucket_start,
    deltas,
    deltas_of,
    first_new,
    group_rows,
    upsert_sql,
    values_source,
)
from modelyard.state.sqlite_insert_process import InsertProcess, InsertProcessUnavailable
from modelyard.state.store import (
    RollupRow,
    SpendFilter,
    SpendRow,
    UiSession,
    dead_row,
    feedback_insert_sql,
    feedback_row,
    feedback_samples_args,
    feedback_samples_sql,
    find_spend_sql,
    get_spend_sql,
    key_from_row,
    key_row,
    migration_statement,
    report_rows,
    report_sql,
    rollup_rows,
    sample_from_row,
    selective_index,
    session_from_row,
    session_row,
    session_sql,
    spend_from_row,
    spend_row,
    threshold_probes,
    traffic_args,
    traffic_sql,
    update_key_sql,
)

T = TypeVar("T")
log = logging.getLogger("modelyard.state")


def _null(value: None) -> None:
    """The adapter for None: NULL, as sqlite3 would bind it without one."""
    return value


#: sqlite3 binds an int, float or str as it is, but sends any other value, None included, through its
#: adapter lookup. Without an adapter for the type, that lookup raises and clears two AttributeErrors
#: (`__adapt__` on the protocol, `__conform__` on the value), each with a formatted message: ~0.26 µs per
#: None with the GIL held, against ~0.09 through an adapter. A spend row binds about seven (ttft, error
#: kind, content, guardrails, task, prediction, embedding). A registered adapter is found at the lookup's
#: first step, and this one returns its argument, so every None is still stored as NULL. sqlite3's registry
#: is per process: every SQLite user in this process binds None this way, with the same result.
sqlite3.register_adapter(type(None), _null)

#: Rows per insert statement. A spend batch goes in as multi-row VALUES statements with bound parameters, in
#: one transaction: SQLite's module binds a statement's parameters in one C loop (one GIL hold per statement,
#: where `executemany` took the GIL back for every row and, under load, waited for the busy event loop each
#: time), and no JSON is built or parsed (json_each + a json_extract per column cost 15.4 µs a row in the
#: store's thread, this 5.6; issue #20, measured). 32 rows of 27 columns is within SQLite's oldest limit of
#: 999 parameters a statement.
INSERT_ROWS = 32
#: The row counts a statement has: full slices, then the rest in powers of two, so that the connection's
#: statement cache holds every form instead of one per remainder.
_STATEMENT_ROWS = tuple(INSERT_ROWS >> shift for shift in range(INSERT_ROWS.bit_length()))
#: The event loop gets a turn after preparing this many rows of a batch (rows, parameters, rollup groups).
_LOOP_TURN_ROWS = 128
#: Between two statements of a batch of at most this many rows, the store's thread gives up its core
#: (`sched_yield`, ~180 µs of inserting apart). A batch is milliseconds of C; on a small machine the kernel
#: lets such a burst finish its time slice before the event loop's thread, woken by a request, gets the core
#: back, and that wait was most of the gateway's c=1 p99 tail (issue #20, docs/benchmarks.md). Priorities do
#: not do this: nice +19 and SCHED_IDLE were measured and moved nothing. A bigger batch does not yield: the
#: writer only builds one when it is behind (spend.WRITE_AT), that is on a saturated machine, where a yield
#: helps no latency and costs a GIL hand-off with the busy loop.
YIELD_UP_TO_ROWS = 256
_YIELD: Callable[[], None] | None = getattr(os, "sched_yield", None)

_KEY_SELECT = f"SELECT {', '.join(KEY_COLUMNS)} FROM modelyard_keys"
_KEY_INSERT = f"INSERT INTO modelyard_keys ({', '.join(KEY_COLUMNS)}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})"


#: ON CONFLICT (id) DO NOTHING: an id already stored (a spool replay after a crash) or seen earlier in the
#: batch is skipped, never doubled. Not `INSERT OR IGNORE`, which would also skip a row breaking NOT NULL,
#: silently.
def _spend_insert(rows: int) -> str:
    one = "(" + ", ".join("?" * len(SPEND_COLUMNS)) + ")"
    return (
        f"INSERT INTO modelyard_spend ({', '.join(SPEND_COLUMNS)}) VALUES {', '.join([one] * rows)}"
        " ON CONFLICT (id) DO NOTHING"
    )


_SPEND_INSERTS = {rows: _spend_insert(rows) for rows in _STATEMENT_ROWS}


def _statement_rows(total: int) -> list[int]:
    """The row counts of the statements that insert `total` rows: full ones, then the rest in powers of two
    (see _STATEMENT_ROWS)."""
    rest = total % INSERT_ROWS
    return [INSERT_ROWS] * (total // INSERT_ROWS) + [n for n in _STATEMENT_ROWS[1:] if rest & n]


def _statements(total: int) -> list[tuple[int, int]]:
    """The first row and the row count of each statement that inserts `total` rows."""
    sizes = _statement_rows(total)
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return list(zip(starts, sizes, strict=True))


#: Rollup deltas go in as plain parameters (executemany): a batch adds a few dozen groups, and a json_extract
#: per column (~7,000 instructions each) made the upsert cost more than the spend rows themselves.
_ROLLUP_UPSERT = {grain: upsert_sql(grain, values_source(lambda _: "?")) for grain in ROLLUP_GRAINS}
#: The ids of a batch already stored (a spool replay): usually none, found through the unique id index.
_STORED_IDS = "SELECT id FROM modelyard_spend WHERE id IN (SELECT value FROM json_each(?))"
#: The spend log's indexes that only a large log needs: the request log's filters (key, model, deployment,
#: errors, cost and latency thresholds). An in-memory log, bounded by `spend.memory_rows`, has none of them:
#: a filtered page scans at most ~110,000 rows in memory, and a row's insert and its trim skip six B-trees.
_BIG_LOG_INDEXES = (
    "modelyard_spend_key_at",
    "modelyard_spend_model_at",
    "modelyard_spend_deployment_at",
    "modelyard_spend_errors_at",
    "modelyard_spend_cost_at",
    "modelyard_spend_latency_at",
)
#: Spend rows an in-memory store deletes at once: a key lookup or a budget seed on the store's thread waits
#: at most that long behind a trim (12 ms measured with all 8 indexes, less with its 2; 10,000 rows took 100).
EVICT_ROWS = 1000
_SPENT_SINCE = "SELECT COALESCE(SUM(cost_usd), 0) FROM modelyard_spend WHERE key_id = ? AND at >= ?"
#: A key's spend: its rows from a rollup bucket boundary on, plus its rollup buckets before that boundary.
_SPENT_SINCE_EVICTED = (
    f"SELECT ({_SPENT_SINCE}) + (SELECT COALESCE(SUM(cost_usd), 0) FROM modelyard_spend_{{grain}} "
    "WHERE dim = 'key' AND value = ? AND bucket >= ? AND bucket < ?)"
)
_DEAD_INSERT = "INSERT INTO modelyard_spend_dead (id, at, failed_at, error, record) VALUES (?, ?, ?, ?, ?)"
_encode = msgspec.json.Encoder().encode
_DAY = "strftime('%Y-%m-%d', at, 'unixepoch')"


def _ph(n: int) -> str:
    return f"?{n}"


_RESPONSE_CHAIN = chain_sql(_ph)
_RESPONSE_SELECT = select_sql(_ph)
_RESPONSE_INSERT = insert_sql(_ph)
_RESPONSE_DELETE = DELETE_SQL.format("?1", "?2", "?3")
_RESPONSE_COUNT = COUNT_SQL.format("?1", "?2")
_RESPONSE_PURGE = PURGE_SQL.format("?1")
_SESSION = session_sql(_ph)
_GET_SPEND = get_spend_sql(_ph)
_FEEDBACK_INSERT = feedback_insert_sql(_ph)
_FEEDBACK_SAMPLES = {
    (with_model, lean): feedback_samples_sql(_ph, with_model, lean)
    for with_model in (False, True)
    for lean in (False, True)
}


def _bucket(width: int) -> str:
    """`at` floored to `width` seconds (CAST truncates toward zero: right for the times >= 0 a log holds)."""
    return f"(CAST(at / {width} AS INTEGER) * {width})"


#: Where spend inserts are made: the store's thread; a helper process at idle priority
#: (sqlite_insert_process.py), which hands the gateway's process the insert's CPU and GIL (docs/benchmarks.md:
#: +6-7% req/s at saturation, the same c=1 p99); or `auto`: once a batch of spend.WRITE_AT rows has been
#: written (a gateway serving ~200 requests a second or more; a quieter one never starts a helper), a batch of
#: at most YIELD_UP_TO_ROWS rows (a writer that keeps up) goes to the helper, and a bigger one (a writer that
#: is behind, perhaps because the machine leaves the helper no idle CPU) to the thread, whose share of the CPU
#: the GIL guarantees. An in-memory database is always written by the thread.
InsertsIn = Literal["auto", "thread", "process"]


class SQLiteStore:
    """`Store` on a SQLite file (or `:memory:`)."""

    def __init__(
        self, path: str = ":memory:", *, inserts: InsertsIn = "thread", memory_rows: int = MEMORY_SPEND_ROWS
    ) -> None:
        self.path = path
        self.inserts: InsertsIn = "thread" if path == ":memory:" else inserts
        #: In memory only: the spend rows kept (about; see evict_oldest). A file or a server keeps them all.
        self.memory_rows: int | None = max(1, memory_rows) if path == ":memory:" else None
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._process: InsertProcess | None = None
        self._purge = PurgeClock()
        self._unchecked = 0  # rows written since the last eviction check
        #: The newest `at` of a spend row evicted so far (read and written on the store's thread only).
        self._evicted_through = -math.inf

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._pool is None or self._conn is None:
            raise RuntimeError("the store is not open")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, conn)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-sqlite")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, connect, self.path)
        await self._run(_migrate)
        if self.memory_rows is not None:
            await self._run(_drop_big_log_indexes)

    @property
    def insert_pid(self) -> int | None:
        """The helper process making spend inserts, once started."""
        return None if self._process is None else self._process.pid

    @property
    def process_inserts(self) -> int:
        """Spend batches handed to a helper process so far."""
        return 0 if self._process is None else self._process.calls

    async def close(self) -> None:
        if self._conn is None or self._pool is None:
            return
        pool = self._pool
        process, self._process = self._process, None
        if process is not None:
            await self._run(lambda conn: process.close())
        await self._run(lambda conn: conn.close())
        self._conn = None
        self._pool = None
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)  # join the thread off the loop

    async def schema_version(self) -> int:
        return await self._run(_version)

    # ------------------------------------------------------------------ keys

    async def create_key(self, record: KeyRecord) -> None:
        row = key_row(record)
        await self._run(lambda conn: conn.execute(_KEY_INSERT, row))

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        return await self._one(f"{_KEY_SELECT} WHERE key_hash = ?", (key_hash,))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._one(f"{_KEY_SELECT} WHERE id = ?", (key_id,))

    async def _one(self, sql: str, args: tuple[Any, ...]) -> KeyRecord | None:
        row = await self._run(lambda conn: conn.execute(sql, args).fetchone())
        return None if row is None else key_from_row(row)

    async def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        sql = f"{_KEY_SELECT}{where} ORDER BY created_at"
        rows = await self._run(lambda conn: conn.execute(sql).fetchall())
        return [key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        sql = "UPDATE modelyard_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        count = await self._run(lambda conn: conn.execute(sql, (at, key_id)).rowcount)
        return bool(count)

    async def count_keys(self) -> int:
        sql = "SELECT COUNT(*) FROM modelyard_keys WHERE revoked_at IS NULL"
        return int(await self._run(lambda conn: conn.execute(sql).fetchone()[0]))

    # ------------------------------------------------------------------ spend

    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        """The rows and their rollups in one transaction. The rollup deltas are summed with the rows, assuming
        every id is new; the insert sums again only the rows of a batch whose ids were partly stored already
        (a spool replay), so each row is counted once."""
        if not records:
            return
        helper = self._insert_process(len(records))
        if helper is None or not await self._insert_in(helper, records):
            await self._insert_here(records)
        if self.memory_rows is not None:
            self._unchecked += len(records)
            if self._unchecked >= self.memory_rows // 10:  # so the log holds between 1 and 1.1 memory_rows
                self._unchecked = 0
                await self._trim()
        before = self._purge.due(r.at for r in records)
        if before is not None:
            purge = PURGE_MINUTES_SQL.format(ph="?")
            await self._run(lambda conn: conn.execute(purge, (before,)))

    async def _insert_in(self, helper: InsertProcess, records: Sequence[SpendRecord]) -> bool:
        """The batch prepared and inserted by the helper process (`insert_records`): the event loop only
        encodes the records (~0.3 µs a row, where preparing them costs ~3), so a write no longer holds up the
        requests behind it (the c=1 tail, docs/benchmarks.md). False when no helper can run here: the store's
        thread makes this insert and every later one."""
        try:
            payload = encoded_batch(records)
        except _PREPARE_ERRORS as exc:
            raise SpendDataError(str(exc)) from exc
        try:
            await self._run(lambda conn: helper.call(payload))
        except InsertProcessUnavailable as exc:
            log.warning("spend log: %s; SQLite's inserts stay on the store's thread", exc)
            self.inserts, self._process = "thread", None
            return False
        except _BIND_ERRORS as exc:
            raise SpendDataError(str(exc)) from exc
        return True

    async def _insert_here(self, records: Sequence[SpendRecord]) -> None:
        """The batch prepared on the event loop, a turn between every _LOOP_TURN_ROWS rows, and inserted on the
        store's thread."""
        batch = SpendBatch()
        try:
            for start, size in _statements(len(records)):
                if start and start % _LOOP_TURN_ROWS == 0:
                    await asyncio.sleep(0)  # the event loop's turn
                batch.add(records[start : start + size])
            statements, ids, rows, rollups = batch.arguments()
        except _PREPARE_ERRORS as exc:
            raise SpendDataError(str(exc)) from exc
        try:
            await self._run(lambda conn: insert_spend(conn, statements, ids, rows, rollups))
        except _BIND_ERRORS as exc:
            raise SpendDataError(str(exc)) from exc

    def _insert_process(self, rows: int) -> InsertProcess | None:
        """The helper process for this batch's insert (started on first use); None = the store's thread."""
        auto = self.inserts == "auto"
        if self.inserts == "thread" or (auto and rows > YIELD_UP_TO_ROWS):
            return None
        if self._process is None:
            if auto and rows < WRITE_AT:
                return None  # a gateway below ~200 requests a second (a demo, a test) keeps to one process
            self._process = InsertProcess(self.path)
        return self._process

    async def write_dead_spend(self, records: Sequence[tuple[SpendRecord, str]]) -> None:
        rows = [dead_row(record, reason) for record, reason in records]
        await self._run(lambda conn: _executemany(conn, _DEAD_INSERT, rows))

    async def spend_report(self, by: str, since: float) -> list[SpendRow]:
        sql = report_sql(by, _DAY, "?")
        rows = await self._run(lambda conn: conn.execute(sql, (since,)).fetchall())
        return report_rows(rows)

    async def spent_since(self, key_id: str, since: float) -> float:
        return float(await self._run(lambda conn: self._spent_since(conn, key_id, since)))

    async def _trim(self) -> None:
        """The in-memory log back to `memory_rows`, a chunk at a time (other store calls get in between). The
        batch is stored by now: a failed trim is logged and tried again later, never a failed write (which
        the writer would retry for ever)."""
        try:
            while await self._run(self._evict):
                pass
        except sqlite3.Error as exc:
            log.warning("spend log: could not trim the in-memory log (%s); trying again later", exc)

    def _evict(self, conn: sqlite3.Connection) -> bool:
        """One chunk of the oldest rows beyond `memory_rows` deleted; True while more are beyond it."""
        assert self.memory_rows is not None
        newest, beyond = evict_oldest(conn, self.memory_rows)
        if newest is not None:
            self._evicted_through = max(self._evicted_through, newest)
        return beyond > 0

    def _spent_since(self, conn: sqlite3.Connection, key_id: str, since: float) -> float:
        """A key's spend since `since`: its rows; where an in-memory log has evicted rows at or after `since`,
        those come from the key's rollups instead. The rollup bucket holding `since` counts whole, so the
        answer may be high by that bucket's spend before `since` (a minute, or an hour once the minutes are
        purged), never low: a budget seeded from it can refuse early, never overspend."""
        through = self._evicted_through  # on the store's thread, as every eviction: no write can race it
        if since > through or math.isnan(since):
            return float(conn.execute(_SPENT_SINCE, (key_id, since)).fetchone()[0])
        grain = (
            "minute" if bucket_start(since, ROLLUP_GRAINS["minute"]) >= self._purge.newest - MINUTE_KEEP_S else "hour"
        )
        width = ROLLUP_GRAINS[grain]
        start = bucket_start(since, width)
        boundary = bucket_start(through, width) + width  # every evicted row lies before it
        sql = _SPENT_SINCE_EVICTED.format(grain=grain)
        return float(conn.execute(sql, (key_id, boundary, key_id, start, boundary)).fetchone()[0])

    async def spend_records(self, since: float = 0.0, limit: int = 1000) -> list[SpendRecord]:
        sql = f"SELECT {', '.join(SPEND_COLUMNS)} FROM modelyard_spend WHERE at >= ? ORDER BY at LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (since, limit)).fetchall())
        return [spend_from_row(row) for row in rows]

    async def get_spend(self, request_id: str) -> SpendRecord | None:
        row = await self._run(lambda conn: conn.execute(_GET_SPEND, (request_id,)).fetchone())
        return None if row is None else spend_from_row(row)

    # ------------------------------------------------------------------ feedback (state/feedback.py)

    async def write_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        rows = [feedback_row(r) for r in records]  # ValueError before anything is written
        if rows:
            await self._run(lambda conn: _executemany(conn, _FEEDBACK_INSERT, rows))

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
    ) -> list[FeedbackSample]:
        sql = _FEEDBACK_SAMPLES[(model is not None, lean)]
        args = feedback_samples_args(since, limit, model)
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [sample_from_row(row) for row in rows]

    async def find_spend(self, where: SpendFilter, limit: int = 50) -> list[SpendRecord]:
        find_spend_sql(where, limit, _ph)  # validates before the thread sees it

        def find(conn: sqlite3.Connection) -> list[Any]:
            index = _threshold_index(conn, where) if self.memory_rows is None else None  # none in memory
            sql, args = find_spend_sql(where, limit, _ph, from_hint=f"INDEXED BY {index}" if index else "")
            return conn.execute(sql, args).fetchall()

        return [spend_from_row(row) for row in await self._run(find)]

    async def traffic(
        self, grain: str, dim: str, since: float, until: float, *, value: str | None = None, by: str = "time"
    ) -> list[RollupRow]:
        sql = traffic_sql(grain, dim, by, value is not None, _ph)
        args = traffic_args(dim, since, until, value)
        return rollup_rows(await self._run(lambda conn: conn.execute(sql, args).fetchall()))

    # ------------------------------------------------------------------ keys (the dashboard's edits)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        sql, args = update_key_sql(key_id, changes, _ph)

        def update(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN")
            try:
                if not conn.execute(sql, args).rowcount:
                    conn.execute("ROLLBACK")
                    return None
                row = conn.execute(f"{_KEY_SELECT} WHERE id = ?", (key_id,)).fetchone()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return row

        row = await self._run(update)
        return None if row is None else key_from_row(row)

    # ------------------------------------------------------------------ dashboard sessions

    async def create_session(self, session: UiSession) -> None:
        row = session_row(session)
        await self._run(lambda conn: conn.execute(_SESSION["create"], row))

    async def get_session(self, id_hash: str, now: float) -> UiSession | None:
        row = await self._run(lambda conn: conn.execute(_SESSION["get"], (id_hash, now)).fetchone())
        return None if row is None else session_from_row(row)

    async def delete_session(self, id_hash: str) -> None:
        await self._run(lambda conn: conn.execute(_SESSION["delete"], (id_hash,)))

    async def purge_sessions(self, now: float) -> int:
        return int(await self._run(lambda conn: conn.execute(_SESSION["purge"], (now,)).rowcount))

    # ------------------------------------------------------------------ stored responses (state/conversations.py)

    async def put_response(self, record: StoredResponse) -> None:
        row = response_row(record)
        await self._run(lambda conn: conn.execute(_RESPONSE_INSERT, row))

    async def get_response(self, key_id: str, response_id: str, now: float) -> StoredResponse | None:
        args = (response_id, key_id, now)
        row = await self._run(lambda conn: conn.execute(_RESPONSE_SELECT, args).fetchone())
        return None if row is None else response_from_row(row)

    async def response_chain(self, key_id: str, response_id: str, now: float, limit: int) -> list[StoredResponse]:
        args = (response_id, key_id, now, limit)
        rows = await self._run(lambda conn: conn.execute(_RESPONSE_CHAIN, args).fetchall())
        return [response_from_row(row) for row in rows]

    async def delete_response(self, key_id: str, response_id: str, now: float) -> bool:
        args = (response_id, key_id, now)
        return bool(await self._run(lambda conn: conn.execute(_RESPONSE_DELETE, args).rowcount))

    async def count_responses(self, key_id: str, now: float) -> int:
        return int(await self._run(lambda conn: conn.execute(_RESPONSE_COUNT, (key_id, now)).fetchone()[0]))

    async def purge_responses(self, now: float) -> int:
        return int(await self._run(lambda conn: conn.execute(_RESPONSE_PURGE, (now,)).rowcount))


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN")
    try:
        conn.executemany(sql, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(path: str) -> sqlite3.Connection:
    """A connection as the store uses it (WAL for a file; the helper process opens its own the same way)."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


#: What preparing a batch raises for a record it cannot store: unstorable text, NaN or huge times.
_PREPARE_ERRORS = (UnicodeEncodeError, OverflowError, TypeError, ValueError)
#: What SQLite raises for a row it refuses: a constraint, a value it cannot bind (an int beyond 64 bits).
_BIND_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError)
_RECORDS = msgspec.msgpack.Encoder()
_DECODE_RECORDS = msgspec.msgpack.Decoder(list[SpendRecord]).decode


class SpendBatch:
    """A spend batch as `insert_spend` takes it, built a statement's rows at a time (the event loop takes turns
    between them; the helper process builds it whole)."""

    __slots__ = ("_grouped", "rows", "statements")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        self._grouped: Grouped = {}

    def add(self, records: Sequence[SpendRecord]) -> None:
        """One statement's records (a count in _STATEMENT_ROWS); raises one of _PREPARE_ERRORS for a record
        that cannot be stored."""
        chunk = [spend_row(r) for r in records]
        self.rows += chunk
        parameters = tuple(chain.from_iterable(chunk))
        if unstorable("".join([p for p in parameters if type(p) is str])):
            # SQLite would keep a NUL, PostgreSQL cannot: refused, so the writer sanitises the row
            raise ValueError("a NUL or a lone surrogate in a spend row's text")
        self.statements.append((_SPEND_INSERTS[len(chunk)], parameters))
        group_rows(chunk, self._grouped)

    def arguments(
        self,
    ) -> tuple[list[tuple[str, tuple[Any, ...]]], bytes, list[tuple[Any, ...]], dict[str, list[Delta]]]:
        """`insert_spend`'s arguments after the connection: statements, ids, rows and rollup deltas."""
        return self.statements, _encode([row[0] for row in self.rows]), self.rows, deltas_of(self._grouped)


def encoded_batch(records: Sequence[SpendRecord]) -> list[bytes]:
    """A batch as `insert_records` takes it: the records of each insert statement, msgpack-encoded (~0.3 µs a
    record; raises one of _PREPARE_ERRORS for text or a number msgpack cannot carry)."""
    return [_RECORDS.encode(records[start : start + size]) for start, size in _statements(len(records))]


def evict_oldest(conn: sqlite3.Connection, keep: int, most: int = EVICT_ROWS) -> tuple[float | None, int]:
    """Delete up to `most` of the oldest-inserted spend rows beyond the newest `keep`: (the newest `at`
    deleted, or None; how many rows are still beyond `keep`). A row's rowid grows with its insert and only
    the lowest are ever deleted, so MAX - MIN + 1 counts the rows."""
    high = conn.execute("SELECT MAX(rowid) FROM modelyard_spend").fetchone()[0]
    if high is None:
        return None, 0
    low = conn.execute("SELECT MIN(rowid) FROM modelyard_spend").fetchone()[0]
    excess = high - low + 1 - keep
    if excess <= 0:
        return None, 0
    count = min(excess, most)
    cut = low + count - 1
    newest = conn.execute("SELECT MAX(at) FROM modelyard_spend WHERE rowid <= ?", (cut,)).fetchone()[0]
    conn.execute("DELETE FROM modelyard_spend WHERE rowid <= ?", (cut,))
    return (None if newest is None else float(newest)), excess - count


def insert_records(conn: sqlite3.Connection, payload: list[bytes]) -> None:
    """The helper process's insert (sqlite_insert_process.py): a batch as `SQLiteStore._insert_in` encoded it, a
    msgpack list of records per statement, decoded and prepared here a statement at a time with the core given
    up between (decoding and preparing 200 rows at once is a ~0.7 ms burst that, even at idle priority, held up
    the requests behind it on two cores), then inserted; a record that cannot be stored is a SpendDataError, as
    on the event loop."""
    batch = SpendBatch()
    try:
        for index, records in enumerate(payload):
            if index and _YIELD is not None:
                _YIELD()
            batch.add(_DECODE_RECORDS(records))
        arguments = batch.arguments()
    except (*_PREPARE_ERRORS, msgspec.DecodeError) as exc:  # DecodeError: a record that did not survive the trip
        raise SpendDataError(str(exc)) from exc
    insert_spend(conn, *arguments)


def insert_spend(
    conn: sqlite3.Connection,
    statements: list[tuple[str, tuple[Any, ...]]],
    ids: bytes,
    rows: list[tuple[Any, ...]],
    rollups: dict[str, list[Delta]],
) -> None:
    """Insert a batch (`statements`: SQL and parameters, see INSERT_ROWS) and add what it inserted to the
    rollups, in one transaction; a short batch yields the core between statements (YIELD_UP_TO_ROWS)."""
    pause = _YIELD if len(rows) <= YIELD_UP_TO_ROWS else None
    conn.execute("BEGIN")
    try:
        stored = {r[0] for r in conn.execute(_STORED_IDS, (ids.decode(),)).fetchall()}
        if stored or len({row[0] for row in rows}) < len(rows):
            rollups = deltas(first_new(rows, stored))
        for sql, parameters in statements:
            conn.execute(sql, parameters)
            if pause is not None:
                pause()
        for grain, upsert in _ROLLUP_UPSERT.items():
            if rollups[grain]:
                conn.executemany(upsert, rollups[grain])
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _threshold_index(conn: sqlite3.Connection, where: SpendFilter) -> str | None:
    """The index for the request log's query when a threshold filter is selective, else None (the planner's
    choice, which without histograms is newest first through `at` whatever the threshold: 1.2 s for a page
    of the 0.03% dearest requests of a million)."""
    counts = [(int(conn.execute(sql, (value,)).fetchone()[0]), index) for index, sql, value in _probes(where)]
    return selective_index(counts)


def _drop_big_log_indexes(conn: sqlite3.Connection) -> None:
    for index in _BIG_LOG_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")


def _probes(where: SpendFilter) -> list[tuple[str, str, float]]:
    return threshold_probes(where, _ph)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM modelyard_schema").fetchone()
    return int(row[0])


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(VERSION_TABLE)
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: two gateways starting together wait here
        try:
            if _version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                conn.execute(migration_statement(statement, _bucket))
            conn.execute(
                "INSERT INTO modelyard_schema (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
