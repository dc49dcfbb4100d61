"""The batch store in PostgreSQL (psycopg 3, group commit per loop turn): several machines.

The same tables and semantics as `store_sqlite.py` (prefixed `modelyard_`, in the DSN's `?schema=` when
given), on the run store's `PgWriter`: one connection per store object (a Ray worker opens its own), tables
created under an advisory lock, every write of a loop turn in one transaction (executemany, pipelined), a
dropped connection reopened once with the pending writes sent again. Writes are `ON CONFLICT DO NOTHING` on
their natural keys, so the first write wins and a re-sent transaction changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import psycopg

from modelyard.batch.model import BatchHeader, BatchTotals, RowResult, Submission
from modelyard.batch.store import holds_batch
from modelyard.batch.store_sqlite import (
    FINAL_STATES,
    MAX_PAGE,
    dumps,
    header_from,
    row_values,
    step_values,
    submission_from,
)
from modelyard.workflows.checkpoint_pg import PgWriter
from modelyard.workflows.records import StepRecord

_DDL = (
    """CREATE TABLE IF NOT EXISTS modelyard_batch_headers (
        batch_id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS modelyard_batch_headers_created ON modelyard_batch_headers (created_at)",
    """CREATE TABLE IF NOT EXISTS modelyard_batch_state (
        batch_id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS modelyard_batch_rows (
        batch_id TEXT NOT NULL, row BIGINT NOT NULL, status TEXT NOT NULL, cost_usd DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (batch_id, row))""",
    """CREATE TABLE IF NOT EXISTS modelyard_batch_steps (
        batch_id TEXT NOT NULL, row BIGINT NOT NULL, key TEXT NOT NULL, cost_usd DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (batch_id, row, key))""",
    """CREATE TABLE IF NOT EXISTS modelyard_batch_submissions (
        batch_id TEXT NOT NULL, nonce TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (batch_id, nonce))""",
)

_ROW_COLUMNS = "modelyard_batch_rows (batch_id, row, status, cost_usd, data) VALUES (%s, %s, %s, %s, %s)"
_INSERT_ROW = f"INSERT INTO {_ROW_COLUMNS} ON CONFLICT DO NOTHING"
_REPLACE_ROW = (
    f"INSERT INTO {_ROW_COLUMNS} ON CONFLICT (batch_id, row) DO UPDATE SET "
    "status = EXCLUDED.status, cost_usd = EXCLUDED.cost_usd, data = EXCLUDED.data"
)
_DROP_STEPS = (
    "DELETE FROM modelyard_batch_steps s USING modelyard_batch_rows r WHERE s.batch_id = %s AND s.row = %s "
    f"AND r.batch_id = s.batch_id AND r.row = s.row AND r.status IN ({', '.join(repr(x) for x in FINAL_STATES)})"
)
_INSERT_STEP = (
    "INSERT INTO modelyard_batch_steps (batch_id, row, key, cost_usd, data) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)
_SET_STATE = (
    "INSERT INTO modelyard_batch_state (batch_id, state, data) VALUES (%s, %s, %s) "
    "ON CONFLICT (batch_id) DO UPDATE SET state = EXCLUDED.state, data = EXCLUDED.data"
)
_SAVE_SUBMISSION = (
    "INSERT INTO modelyard_batch_submissions (batch_id, nonce, created_at, data) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (batch_id, nonce) DO UPDATE SET data = EXCLUDED.data"
)
_UNFINISHED = "NOT EXISTS (SELECT 1 FROM modelyard_batch_rows r WHERE r.batch_id = s.batch_id AND r.row = s.row)"


class PostgresBatchStore:
    """`BatchStore` on PostgreSQL; one connection per object. Safe to call from several threads."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._writer = PgWriter(dsn, _DDL)
        self.path = self._writer.where

    # ----------------------------------------------------------------- writes

    def create_batch(self, header: BatchHeader) -> None:
        values = (header.batch_id, header.created_at, dumps(asdict(header)))
        try:
            self._writer.execute("INSERT INTO modelyard_batch_headers VALUES (%s, %s, %s)", values)
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"batch {header.batch_id} already exists") from None

    def set_state(self, batch_id: str, state: str, data: dict[str, Any]) -> None:
        self._writer.queue(_SET_STATE, (batch_id, state, dumps(data)))

    def claim(self, batch_id: str, marker: dict[str, Any], *, force: bool = False) -> tuple[str, dict[str, Any]] | None:
        def claim(conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]] | None:
            with conn.transaction():  # one claimer at a time per batch, until its transaction ends
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"modelyard_batch:{batch_id}",))
                query = "SELECT state, data FROM modelyard_batch_state WHERE batch_id = %s"
                row = conn.execute(query, (batch_id,)).fetchone()
                held = None if row is None else (str(row[0]), json.loads(row[1]))
                if not force and holds_batch(held, time.time()):
                    return held
                conn.execute(_SET_STATE, (batch_id, "running", dumps(marker)))
            return None

        self._writer.flush()
        return self._writer.call(claim)

    def save_row(self, batch_id: str, result: RowResult) -> bool:
        """First write wins. The answer is this store's view (its pending rows and the table): two processes
        saving one row at the same instant may both hear True, but only the first commit is kept."""
        key = (batch_id, result.row)
        if key in self._writer.pending_keys:
            return False
        found = self._writer.call(
            lambda conn: conn.execute(
                "SELECT 1 FROM modelyard_batch_rows WHERE batch_id = %s AND row = %s", key
            ).fetchone()
        )
        if found is not None:
            return False
        self._writer.queue(_INSERT_ROW, row_values(batch_id, result), key)
        self._writer.queue(_DROP_STEPS, key)
        return True

    def replace_row(self, batch_id: str, result: RowResult) -> None:
        key = (batch_id, result.row)
        self._writer.queue(_REPLACE_ROW, row_values(batch_id, result), key)
        self._writer.queue(_DROP_STEPS, key)

    def save_step(self, batch_id: str, row: int, record: StepRecord) -> None:
        self._writer.queue(_INSERT_STEP, step_values(batch_id, row, record))

    def save_submission(self, submission: Submission) -> None:
        values = (submission.batch_id, submission.nonce, submission.created_at, dumps(asdict(submission)))
        self._writer.queue(_SAVE_SUBMISSION, values)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def drop(self) -> None:
        """Drop the store's schema (tests; only with `?schema=`)."""
        self._writer.drop_schema()

    # ----------------------------------------------------------------- reads (each commits pending writes first)

    def header(self, batch_id: str) -> BatchHeader | None:
        rows = self._writer.fetch("SELECT data FROM modelyard_batch_headers WHERE batch_id = %s", (batch_id,))
        return header_from(rows[0][0]) if rows else None

    def batch_ids(self, limit: int = 50) -> list[str]:
        query = "SELECT batch_id FROM modelyard_batch_headers ORDER BY created_at DESC LIMIT %s"
        return [r[0] for r in self._writer.fetch(query, (max(0, limit),))]

    def state(self, batch_id: str) -> tuple[str, dict[str, Any]] | None:
        rows = self._writer.fetch("SELECT state, data FROM modelyard_batch_state WHERE batch_id = %s", (batch_id,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def done_rows(self, batch_id: str) -> dict[int, str]:
        query = "SELECT row, status FROM modelyard_batch_rows WHERE batch_id = %s"
        return dict(self._writer.fetch(query, (batch_id,)))

    def results(self, batch_id: str, after: int = -1, limit: int = 10_000) -> list[RowResult]:
        query = "SELECT data FROM modelyard_batch_rows WHERE batch_id = %s AND row > %s ORDER BY row LIMIT %s"
        rows = self._writer.fetch(query, (batch_id, after, max(0, min(limit, MAX_PAGE))))
        return [RowResult.from_json(json.loads(r[0])) for r in rows]

    def totals(self, batch_id: str) -> BatchTotals:
        query = (
            "SELECT status, count(*), coalesce(sum(cost_usd), 0) FROM modelyard_batch_rows "
            "WHERE batch_id = %s GROUP BY status"
        )
        rows = self._writer.fetch(query, (batch_id,))
        return BatchTotals({r[0]: r[1] for r in rows}, float(sum(r[2] for r in rows)))

    def steps(self, batch_id: str, rows: Sequence[int] | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        query = "SELECT row, key, data FROM modelyard_batch_steps s WHERE batch_id = %s"
        args: tuple[Any, ...] = (batch_id,)
        if rows is None:
            query += f" AND {_UNFINISHED}"
        else:  # the rows named, finished or not (a retried row's steps)
            query += " AND row = ANY(%s)"
            args = (batch_id, sorted({int(r) for r in rows}))
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for row, key, data in self._writer.fetch(query, args):
            out.setdefault(row, {})[key] = json.loads(data)
        return out

    def spent_in_unfinished(self, batch_id: str) -> float:
        query = f"SELECT coalesce(sum(cost_usd), 0) FROM modelyard_batch_steps s WHERE batch_id = %s AND {_UNFINISHED}"
        return float(self._writer.fetch(query, (batch_id,))[0][0])

    def submissions(self, batch_id: str) -> list[Submission]:
        query = "SELECT data FROM modelyard_batch_submissions WHERE batch_id = %s ORDER BY created_at, nonce"
        return [submission_from(r[0]) for r in self._writer.fetch(query, (batch_id,))]
