"""The batch store in SQLite (WAL, group commit per loop turn): one machine.

Same file as the workflow run store by default (its own `batch_*` tables). Several processes of one machine
(the driver, local Ray workers) may write it at once: WAL lets readers run beside the one writer, a busy
timeout makes writers wait their turn, and every write transaction starts `IMMEDIATE` so two writers never
deadlock upgrading a read lock. Writes made while an event loop runs are queued and committed together at
the end of the loop turn (`call_soon`), as `workflows.checkpoint.SqliteStore` does; outside a loop at once.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modelyard.batch.model import RETRYABLE_STATES, ROW_STATES, BatchHeader, BatchTotals, RowResult, Submission
from modelyard.batch.store import StoreUnavailable, holds_batch
from modelyard.workflows.checkpoint import DEFAULT_STORE
from modelyard.workflows.group_commit import TurnCommit
from modelyard.workflows.records import StepRecord

#: Row states whose step checkpoints are dropped when the result is saved (nothing will ever reuse them);
#: a retryable row keeps its steps for `--retry-failed`.
FINAL_STATES = tuple(state for state in ROW_STATES if state not in RETRYABLE_STATES)
#: The most `?` parameters one `IN (...)` list gets (SQLite's limit is 32,766; a Ray chunk may be larger).
IN_CHUNK = 500
#: The most rows one `results` page may ask for (bounded memory, whatever a caller passes).
MAX_PAGE = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_headers (
    batch_id TEXT PRIMARY KEY, created_at REAL NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_headers_created ON batch_headers(created_at);
CREATE TABLE IF NOT EXISTS batch_state (
    batch_id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_rows (
    batch_id TEXT NOT NULL, row INTEGER NOT NULL, status TEXT NOT NULL, cost_usd REAL NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (batch_id, row)
);
CREATE TABLE IF NOT EXISTS batch_steps (
    batch_id TEXT NOT NULL, row INTEGER NOT NULL, key TEXT NOT NULL, cost_usd REAL NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (batch_id, row, key)
);
CREATE TABLE IF NOT EXISTS batch_submissions (
    batch_id TEXT NOT NULL, nonce TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (batch_id, nonce)
);
"""

_FINAL = ", ".join(f"'{state}'" for state in FINAL_STATES)
_INSERT_ROW = "INSERT OR IGNORE INTO batch_rows (batch_id, row, status, cost_usd, data) VALUES (?, ?, ?, ?, ?)"
_REPLACE_ROW = "INSERT OR REPLACE INTO batch_rows (batch_id, row, status, cost_usd, data) VALUES (?, ?, ?, ?, ?)"
#: Drop a row's steps once its stored result (whoever's won) is final: one statement, right under races.
_DROP_STEPS = (
    "DELETE FROM batch_steps WHERE batch_id = ? AND row = ? AND "
    f"(SELECT status FROM batch_rows r WHERE r.batch_id = ? AND r.row = ?) IN ({_FINAL})"
)
_INSERT_STEP = "INSERT OR IGNORE INTO batch_steps (batch_id, row, key, cost_usd, data) VALUES (?, ?, ?, ?, ?)"
_SET_STATE = "INSERT OR REPLACE INTO batch_state (batch_id, state, data) VALUES (?, ?, ?)"
_SAVE_SUBMISSION = "INSERT OR REPLACE INTO batch_submissions (batch_id, nonce, created_at, data) VALUES (?, ?, ?, ?)"
_UNFINISHED = "NOT EXISTS (SELECT 1 FROM batch_rows r WHERE r.batch_id = s.batch_id AND r.row = s.row)"


def default_path() -> Path:
    """$MODELYARD_RUNS_DB or ~/.modelyard/runs.db: the workflow run store's file (other tables)."""
    return Path(os.environ.get("MODELYARD_RUNS_DB") or DEFAULT_STORE).expanduser()


def dumps(data: Any) -> str:
    """Compact JSON (no spaces; ASCII, so lone surrogates in model output can never fail the write)."""
    return json.dumps(data, separators=(",", ":"), default=str)


def row_values(batch_id: str, result: RowResult) -> tuple[Any, ...]:
    return (batch_id, result.row, result.status, float(result.cost_usd), dumps(result.to_json()))


def step_values(batch_id: str, row: int, record: StepRecord) -> tuple[Any, ...]:
    return (batch_id, row, record.key, float(record.cost_usd), dumps(record.to_dict()))


def header_from(data: str) -> BatchHeader:
    return BatchHeader(**json.loads(data))


def submission_from(data: str) -> Submission:
    return Submission(**json.loads(data))


def chunks(rows: Sequence[int]) -> Iterator[list[int]]:
    ordered = sorted(set(rows))
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start : start + IN_CHUNK]


def _use_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """WAL mode, which one opener sets for all: switching needs the file to itself, and SQLite answers "locked"
    at once (no busy wait) while another process writes, so a second opener retries for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SqliteBatchStore:
    """`BatchStore` in one SQLite file. One object per process; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the batch store {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        #: (batch_id, row) of results queued but not committed: a second save_row of one is a duplicate.
        self._pending_rows: set[tuple[str, int]] = set()
        self._turns = TurnCommit(self.flush, self._lock)
        try:
            _use_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # a directory, a file that is not SQLite, a read-only place
            self._db.close()
            raise StoreUnavailable(f"cannot open the batch store {self.path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    # ----------------------------------------------------------------- writes

    def create_batch(self, header: BatchHeader) -> None:
        self.flush()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO batch_headers (batch_id, created_at, data) VALUES (?, ?, ?)",
                    (header.batch_id, header.created_at, dumps(asdict(header))),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"batch {header.batch_id} already exists") from None

    def set_state(self, batch_id: str, state: str, data: dict[str, Any]) -> None:
        self._queue(_SET_STATE, (batch_id, state, dumps(data)))

    def claim(self, batch_id: str, marker: dict[str, Any], *, force: bool = False) -> tuple[str, dict[str, Any]] | None:
        self.flush()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: a second claimer waits, then reads ours
            try:
                found = self._db.execute("SELECT state, data FROM batch_state WHERE batch_id = ?", (batch_id,))
                row = found.fetchone()
                held = None if row is None else (str(row[0]), json.loads(row[1]))
                if not force and holds_batch(held, time.time()):
                    self._db.execute("ROLLBACK")
                    return held
                self._db.execute(_SET_STATE, (batch_id, "running", dumps(marker)))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return None

    def save_row(self, batch_id: str, result: RowResult) -> bool:
        with self._lock:
            if (batch_id, result.row) in self._pending_rows or self._has_row(batch_id, result.row):
                return False
            self._pending_rows.add((batch_id, result.row))
            self._pending.append((_INSERT_ROW, row_values(batch_id, result)))
            self._pending.append((_DROP_STEPS, (batch_id, result.row, batch_id, result.row)))
        self._schedule()
        return True

    def replace_row(self, batch_id: str, result: RowResult) -> None:
        with self._lock:
            self._pending_rows.add((batch_id, result.row))
            self._pending.append((_REPLACE_ROW, row_values(batch_id, result)))
            self._pending.append((_DROP_STEPS, (batch_id, result.row, batch_id, result.row)))
        self._schedule()

    def save_step(self, batch_id: str, row: int, record: StepRecord) -> None:
        self._queue(_INSERT_STEP, step_values(batch_id, row, record))

    def save_submission(self, submission: Submission) -> None:
        values = (submission.batch_id, submission.nonce, submission.created_at, dumps(asdict(submission)))
        self._queue(_SAVE_SUBMISSION, values)

    def _queue(self, sql: str, values: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append((sql, values))
        self._schedule()

    def _schedule(self) -> None:
        self._turns.schedule()

    def flush(self) -> None:
        """Commit every pending write in one transaction (in order; one executemany per run of one statement)."""
        with self._lock:
            failed = self._turns.begin()
            if failed is not None:
                raise RuntimeError(f"batch store {self.path}: an earlier commit failed: {failed}") from failed
            if not self._pending:
                return
            pending = self._pending
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, group in itertools.groupby(pending, key=lambda op: op[0]):
                    self._db.executemany(sql, [values for _, values in group])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._pending = []
            self._pending_rows.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    # ----------------------------------------------------------------- reads (each flushes first)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self.flush()
        with self._lock:
            yield self._db

    def _has_row(self, batch_id: str, row: int) -> bool:
        query = "SELECT 1 FROM batch_rows WHERE batch_id = ? AND row = ?"
        return self._db.execute(query, (batch_id, row)).fetchone() is not None

    def header(self, batch_id: str) -> BatchHeader | None:
        with self._read() as db:
            found = db.execute("SELECT data FROM batch_headers WHERE batch_id = ?", (batch_id,)).fetchone()
        return None if found is None else header_from(found[0])

    def batch_ids(self, limit: int = 50) -> list[str]:
        with self._read() as db:
            query = "SELECT batch_id FROM batch_headers ORDER BY created_at DESC LIMIT ?"
            return [r[0] for r in db.execute(query, (max(0, limit),)).fetchall()]

    def state(self, batch_id: str) -> tuple[str, dict[str, Any]] | None:
        with self._read() as db:
            found = db.execute("SELECT state, data FROM batch_state WHERE batch_id = ?", (batch_id,)).fetchone()
        return None if found is None else (found[0], json.loads(found[1]))

    def done_rows(self, batch_id: str) -> dict[int, str]:
        with self._read() as db:
            return dict(db.execute("SELECT row, status FROM batch_rows WHERE batch_id = ?", (batch_id,)).fetchall())

    def results(self, batch_id: str, after: int = -1, limit: int = 10_000) -> list[RowResult]:
        query = "SELECT data FROM batch_rows WHERE batch_id = ? AND row > ? ORDER BY row LIMIT ?"
        with self._read() as db:
            found = db.execute(query, (batch_id, after, max(0, min(limit, MAX_PAGE)))).fetchall()
        return [RowResult.from_json(json.loads(r[0])) for r in found]

    def totals(self, batch_id: str) -> BatchTotals:
        query = "SELECT status, count(*), total(cost_usd) FROM batch_rows WHERE batch_id = ? GROUP BY status"
        with self._read() as db:
            found = db.execute(query, (batch_id,)).fetchall()
        return BatchTotals({r[0]: r[1] for r in found}, sum(r[2] for r in found))

    def steps(self, batch_id: str, rows: Sequence[int] | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        base = "SELECT row, key, data FROM batch_steps s WHERE batch_id = ?"
        out: dict[int, dict[str, dict[str, Any]]] = {}
        queries = (  # with `rows`: the rows named, finished or not (a retried row's steps)
            [(f"{base} AND {_UNFINISHED}", [batch_id])]
            if rows is None
            else [(f"{base} AND row IN ({','.join('?' * len(part))})", [batch_id, *part]) for part in chunks(rows)]
        )
        with self._read() as db:
            for query, args in queries:
                for row, key, data in db.execute(query, args):
                    out.setdefault(row, {})[key] = json.loads(data)
        return out

    def spent_in_unfinished(self, batch_id: str) -> float:
        query = f"SELECT total(cost_usd) FROM batch_steps s WHERE batch_id = ? AND {_UNFINISHED}"
        with self._read() as db:
            return float(db.execute(query, (batch_id,)).fetchone()[0])

    def submissions(self, batch_id: str) -> list[Submission]:
        query = "SELECT data FROM batch_submissions WHERE batch_id = ? ORDER BY created_at, nonce"
        with self._read() as db:
            return [submission_from(r[0]) for r in db.execute(query, (batch_id,)).fetchall()]
