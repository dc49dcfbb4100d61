"""The workflow run store in PostgreSQL (psycopg 3, sync), so several machines share runs and batches.

`PgWriter` is the connection both PostgreSQL stores use (this run store and `batch.store_pg`): one
connection per store object, tables created if missing under an advisory lock (several workers start at
once), `?schema=name` in the DSN for a schema of their own, and the run store's group commit: writes made
while an event loop runs are queued and sent together in one transaction at the end of the loop turn
(`call_soon`), outside a loop at once. A dropped connection is reopened once and the pending writes sent
again (every write is idempotent, so a commit whose answer was lost is harmless to repeat); a write that
still cannot be made raises, from the next call when the loop's flush failed: nothing is lost silently.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.checkpoint import RunHeader, StoredEvent, header_row
from modelyard.workflows.group_commit import TurnCommit

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: The advisory lock every table creation of these stores runs under ("mywfst": not the state store's lock).
DDL_LOCK = 0x6D7977667374


class StoreWriteError(ModelyardError, RuntimeError):
    """A write the store could not make (after one reconnect): the caller must not go on as if it was."""


def is_postgres(location: object) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def split_schema(dsn: str) -> tuple[str, str | None]:
    """The DSN without its `schema=` query parameter, and that schema (None when absent)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r} in the store's DSN")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def redacted(dsn: str) -> str:
    """The DSN without its password (in the user part or as `?password=`), for messages."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        parts = parts._replace(query=urlencode([(k, "***" if k == "password" else v) for k, v in query]))
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    return urlunsplit(parts)


class PgWriter:
    """One connection, its DDL, and group-committed writes. Safe to call from several threads."""

    def __init__(self, dsn: str, ddl: Sequence[str]) -> None:
        self.dsn = dsn
        self.where = redacted(dsn)
        self._conninfo, self.schema = split_schema(dsn)
        self._ddl = tuple(ddl)
        self._lock = threading.RLock()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        #: Keys a store marks as written-but-pending (the batch store's rows); cleared by a commit.
        self.pending_keys: set[Any] = set()
        self._turns = TurnCommit(self.flush, self._lock)
        self._conn = self._connect(create=True)

    def _connect(self, create: bool) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreWriteError(f"cannot connect to the store {self.where}: {exc}") from None
        try:
            if create:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
                    if self.schema is not None:
                        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                    self._use_schema(conn)
                    for statement in self._ddl:
                        conn.execute(statement.encode())
            else:
                self._use_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_schema(self, conn: psycopg.Connection[Any]) -> None:
        if self.schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    # ----------------------------------------------------------------- writes

    def queue(self, statement: str, values: tuple[Any, ...], key: Any = None) -> None:
        """Add a write to this loop turn's transaction (outside a loop: commit it now)."""
        with self._lock:
            self._pending.append((statement, values))
            if key is not None:
                self.pending_keys.add(key)
        self._turns.schedule()

    def flush(self) -> None:
        """Send every pending write in one transaction (reconnecting once); raise when that fails."""
        with self._lock:
            failed = self._turns.begin()
            if failed is not None:
                raise StoreWriteError(f"store {self.where}: an earlier commit failed: {failed}") from failed
            if not self._pending:
                return
            pending = self._pending
            self.call(lambda conn: _commit(conn, pending))
            self._pending = []
            self.pending_keys.clear()

    def execute(self, statement: str | sql.Composed, values: Sequence[Any] = ()) -> int:
        """Run one statement now (after the pending writes); its row count."""
        self.flush()
        return self.call(lambda conn: conn.execute(statement, values).rowcount)

    def fetch(self, statement: str, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A query's rows, after the pending writes are committed (a store reads what it wrote)."""
        self.flush()
        return self.call(lambda conn: conn.execute(statement, values).fetchall())

    def call(self, action: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`action` on the connection; on a dropped connection, reconnect once and try again."""
        with self._lock:
            try:
                return action(self._conn)
            except psycopg.OperationalError as exc:
                if not (self._conn.closed or self._conn.broken):
                    raise
                first = exc
            try:
                self._conn.close()
            finally:
                try:
                    self._conn = self._connect(create=False)
                except StoreWriteError as exc:
                    raise StoreWriteError(f"{exc} (after: {first})") from first
            return action(self._conn)

    def drop_schema(self) -> None:
        """Drop this store's own schema and everything in it (tests)."""
        if self.schema is None:
            raise ValueError("no ?schema= in the DSN: refusing to drop tables of a shared schema")
        with self._lock:
            self._pending = []
            self.pending_keys.clear()
        self.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._conn.close()


def _commit(conn: psycopg.Connection[Any], pending: list[tuple[str, tuple[Any, ...]]]) -> None:
    """One transaction, pipelined: the statements go out in order without waiting for each answer."""
    with conn.transaction(), conn.pipeline(), conn.cursor() as cursor:
        for statement, values in pending:
            cursor.execute(statement.encode(), values)


# --------------------------------------------------------------------------- the run store

_RUN_DDL = (
    """CREATE TABLE IF NOT EXISTS modelyard_runs (
        run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, source TEXT NOT NULL, text TEXT NOT NULL,
        inputs TEXT NOT NULL, deps TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS modelyard_runs_created ON modelyard_runs (created_at)",
    """CREATE TABLE IF NOT EXISTS modelyard_run_events (
        seq BIGSERIAL PRIMARY KEY, uid TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL REFERENCES modelyard_runs (run_id),
        at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, key TEXT, cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS modelyard_run_events_run ON modelyard_run_events (run_id, seq)",
    """CREATE TABLE IF NOT EXISTS modelyard_run_decisions (
        run_id TEXT NOT NULL REFERENCES modelyard_runs (run_id), key TEXT NOT NULL, data TEXT NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, key))""",
)
_INSERT_DECISION = (
    "INSERT INTO modelyard_run_decisions (run_id, key, data, decided_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (run_id, key) DO NOTHING"
)
_INSERT_EVENT = (
    "INSERT INTO modelyard_run_events (uid, run_id, at, kind, key, cost_usd, data) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (uid) DO NOTHING"
)
_HEADER = "SELECT run_id, workflow, source, text, inputs, created_at, deps FROM modelyard_runs"
_EVENTS = "SELECT seq, run_id, at, kind, key, cost_usd, data FROM modelyard_run_events"


class PostgresRunStore:
    """The workflow `RunStore` on PostgreSQL: the same event log as `SqliteStore`, shared by machines.

    Each event carries a unique id (this store's token and a counter), so re-sending a transaction whose
    commit answer was lost never records an event, or its spend, twice.
    """

    def __init__(self, dsn: str) -> None:
        self._writer = PgWriter(dsn, _RUN_DDL)
        self.path = self._writer.where
        self._token = uuid.uuid4().hex
        self._count = itertools.count()

    def create_run(self, header: RunHeader) -> None:
        values = header_row(header)
        try:
            self._writer.execute("INSERT INTO modelyard_runs VALUES (%s, %s, %s, %s, %s, %s, %s)", values)
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"run {header.run_id} already exists") from None

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None:
        uid = f"{self._token}:{next(self._count)}"
        values = (uid, run_id, time.time(), kind, key, cost_usd, json.dumps(data, default=str))
        self._writer.queue(_INSERT_EVENT, values)

    def flush(self) -> None:
        self._writer.flush()

    def header(self, run_id: str) -> RunHeader | None:
        rows = self._writer.fetch(f"{_HEADER} WHERE run_id = %s", (run_id,))
        if not rows:
            return None
        row = rows[0]
        return RunHeader(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], json.loads(row[6]))

    def events(self, run_id: str) -> list[StoredEvent]:
        rows = self._writer.fetch(f"{_EVENTS} WHERE run_id = %s ORDER BY seq", (run_id,))
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def run_ids(self, limit: int = 50) -> list[str]:
        rows = self._writer.fetch("SELECT run_id FROM modelyard_runs ORDER BY created_at DESC LIMIT %s", (limit,))
        return [r[0] for r in rows]

    def add_decision(self, run_id: str, key: str, decision: dict[str, Any]) -> bool:
        values = (run_id, key, json.dumps(decision, default=str), time.time())
        return self._writer.execute(_INSERT_DECISION, values) == 1

    def decisions(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self._writer.fetch("SELECT key, data FROM modelyard_run_decisions WHERE run_id = %s", (run_id,))
        return {key: json.loads(data) for key, data in rows}

    def drop(self) -> None:
        """Drop the store's schema (tests; only with `?schema=`)."""
        self._writer.drop_schema()

    def close(self) -> None:
        self._writer.close()
