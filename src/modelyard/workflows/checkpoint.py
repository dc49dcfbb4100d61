"""The run store: an append-only event log that is checkpoint, resume point and cache at once.

Every step start, finish, failure and skip is one row, written and committed as it happens, keyed by run
id and step key, carrying the step's record (output, model served, tokens, cost, timings, inputs hash).
A crashed run is resumed from its log: finished steps whose inputs hash matches are reused, never re-run
and never paid again. SQLite (WAL) is the default store (`~/.modelyard/runs.db`); `MemoryStore` keeps
the same log in a list for tests and embedding.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from modelyard.workflows.group_commit import TurnCommit
from modelyard.workflows.records import RunStatus, StepRecord, StepState

DEFAULT_STORE = Path("~/.modelyard/runs.db")
RUN_EVENTS = ("run_started", "run_resumed", "run_finished")
SPEND_EVENTS = ("step_finished", "step_failed")


@dataclass
class RunHeader:
    """What a run was started with: enough to resume it without the original file."""

    run_id: str
    workflow: str
    source: str
    text: str
    inputs: dict[str, Any]
    created_at: float
    deps: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StoredEvent:
    seq: int
    run_id: str
    at: float
    kind: str
    key: str | None
    cost_usd: float
    data: dict[str, Any]


@dataclass
class RunRow:
    """One line of `runs list`."""

    run_id: str
    workflow: str
    status: RunStatus
    created_at: float
    updated_at: float
    cost_usd: float
    steps_done: int


class RunStore(Protocol):
    def create_run(self, header: RunHeader) -> None: ...

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None: ...

    def header(self, run_id: str) -> RunHeader | None: ...

    def events(self, run_id: str) -> list[StoredEvent]: ...

    def run_ids(self, limit: int = 50) -> list[str]: ...

    def close(self) -> None: ...


class DecisionStore(Protocol):
    """Where approval decisions live (`approval.py`): one row per run and step key, written once."""

    def add_decision(self, run_id: str, key: str, decision: dict[str, Any]) -> bool:
        """Store the decision unless one exists for (run_id, key); whether this call stored it."""
        ...

    def decisions(self, run_id: str) -> dict[str, dict[str, Any]]: ...


def header_row(header: RunHeader) -> tuple[Any, ...]:
    """A run header as the stores' `runs` row: run_id, workflow, source, text, inputs, deps, created_at."""
    inputs, deps = json.dumps(header.inputs, default=str), json.dumps(header.deps)
    return (header.run_id, header.workflow, header.source, header.text, inputs, deps, header.created_at)


def session_marker() -> dict[str, Any]:
    """Who is running a session, so a reader can tell a live run from one whose process died."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class MemoryStore:
    """The event log in memory (tests, embedding); same semantics as SqliteStore."""

    def __init__(self) -> None:
        self._headers: dict[str, RunHeader] = {}
        self._events: list[StoredEvent] = []
        self._decisions: dict[tuple[str, str], dict[str, Any]] = {}

    def add_decision(self, run_id: str, key: str, decision: dict[str, Any]) -> bool:
        if (run_id, key) in self._decisions:
            return False
        self._decisions[(run_id, key)] = json.loads(json.dumps(decision, default=str))
        return True

    def decisions(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {key: dict(value) for (run, key), value in self._decisions.items() if run == run_id}

    def create_run(self, header: RunHeader) -> None:
        if header.run_id in self._headers:
            raise ValueError(f"run {header.run_id} already exists")
        self._headers[header.run_id] = header

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None:
        encoded = json.loads(json.dumps(data, default=str))
        seq = len(self._events) + 1
        self._events.append(StoredEvent(seq, run_id, time.time(), kind, key, cost_usd, encoded))

    def header(self, run_id: str) -> RunHeader | None:
        return self._headers.get(run_id)

    def events(self, run_id: str) -> list[StoredEvent]:
        return [e for e in self._events if e.run_id == run_id]

    def run_ids(self, limit: int = 50) -> list[str]:
        ordered = sorted(self._headers.values(), key=lambda h: h.created_at, reverse=True)
        return [h.run_id for h in ordered[:limit]]

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, source TEXT NOT NULL, text TEXT NOT NULL,
    inputs TEXT NOT NULL, deps TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs(run_id),
    at REAL NOT NULL, kind TEXT NOT NULL, key TEXT, cost_usd REAL NOT NULL DEFAULT 0, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL REFERENCES runs(run_id), key TEXT NOT NULL, data TEXT NOT NULL, decided_at REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""
_INSERT_DECISION = "INSERT OR IGNORE INTO decisions (run_id, key, data, decided_at) VALUES (?, ?, ?, ?)"
_DECISIONS = "SELECT key, data FROM decisions WHERE run_id = ?"


_INSERT_EVENT = "INSERT INTO events (run_id, at, kind, key, cost_usd, data) VALUES (?, ?, ?, ?, ?, ?)"


class SqliteStore:
    """The event log in SQLite (WAL), with group commit.

    Events appended while the event loop runs are committed together at the end of the current loop turn
    (`call_soon`): before any task that an event wakes up (a dependent step) can run, and without one
    commit per event when a fan-out starts or finishes a hundred calls at once. Outside an event loop
    every append is committed at once. A kill -9 loses only events of the loop turn it interrupts.
    """

    def __init__(self, path: str | Path = DEFAULT_STORE, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._pending: list[tuple[Any, ...]] = []
        self._turns = TurnCommit(self.flush)

    def create_run(self, header: RunHeader) -> None:
        self._db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", header_row(header))

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None:
        self._pending.append((run_id, time.time(), kind, key, cost_usd, json.dumps(data, default=str)))
        self._turns.schedule()

    def flush(self) -> None:
        """Commit every pending event in one transaction."""
        failed = self._turns.begin()
        if failed is not None:
            raise RuntimeError(f"run store {self.path}: an earlier commit failed: {failed}") from failed
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._db.execute("BEGIN")
        try:
            self._db.executemany(_INSERT_EVENT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def header(self, run_id: str) -> RunHeader | None:
        query = "SELECT run_id, workflow, source, text, inputs, created_at, deps FROM runs WHERE run_id = ?"
        row = self._db.execute(query, (run_id,)).fetchone()
        if row is None:
            return None
        return RunHeader(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], json.loads(row[6]))

    def events(self, run_id: str) -> list[StoredEvent]:
        self.flush()
        query = "SELECT seq, run_id, at, kind, key, cost_usd, data FROM events WHERE run_id = ? ORDER BY seq"
        rows = self._db.execute(query, (run_id,)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def run_ids(self, limit: int = 50) -> list[str]:
        query = "SELECT run_id FROM runs ORDER BY created_at DESC LIMIT ?"
        rows = self._db.execute(query, (limit,)).fetchall()
        return [r[0] for r in rows]

    def add_decision(self, run_id: str, key: str, decision: dict[str, Any]) -> bool:
        self.flush()
        row = (run_id, key, json.dumps(decision, default=str), time.time())
        return self._db.execute(_INSERT_DECISION, row).rowcount == 1

    def decisions(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {key: json.loads(data) for key, data in self._db.execute(_DECISIONS, (run_id,)).fetchall()}

    def close(self) -> None:
        self.flush()
        self._db.close()


class SqliteReader:
    """The SQLite event log opened read-only (an `mode=ro` URI): a reader such as the gateway's dashboard can
    never create, write or write-lock the store a running workflow appends to.

    `run_ids` reads the listed runs' headers and events in two queries and answers `header`/`events` for them
    from that batch, so `list_runs` over it costs two queries, not two per run. With `outlines`, that batch
    holds each record's key, step, kind and state only (all `list_runs` reads), cut out by SQLite's JSON
    functions, so listing runs never decodes their outputs. Writes raise. One reader serves one thread;
    `interrupt` (from any thread) stops a query that runs past its caller's deadline.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 2.0, *, outlines: bool = False) -> None:
        self.outlines = outlines
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(str(self.path))
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)
        self._headers: dict[str, RunHeader] = {}
        self._events: dict[str, list[StoredEvent]] = {}

    def create_run(self, header: RunHeader) -> None:
        raise PermissionError("the run store is open read-only")

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None:
        raise PermissionError("the run store is open read-only")

    def header(self, run_id: str) -> RunHeader | None:
        if run_id in self._headers:
            return self._headers[run_id]
        query = "SELECT run_id, workflow, source, text, inputs, created_at, deps FROM runs WHERE run_id = ?"
        row = self._db.execute(query, (run_id,)).fetchone()
        return None if row is None else _header(row)

    def events(self, run_id: str) -> list[StoredEvent]:
        if run_id in self._events:
            return self._events[run_id]
        query = "SELECT seq, run_id, at, kind, key, cost_usd, data FROM events WHERE run_id = ? ORDER BY seq"
        return [_event(r) for r in self._db.execute(query, (run_id,)).fetchall()]

    def run_ids(self, limit: int = 50) -> list[str]:
        query = (
            "SELECT run_id, workflow, source, text, inputs, created_at, deps FROM runs ORDER BY created_at DESC LIMIT ?"
        )
        headers = [_header(row) for row in self._db.execute(query, (limit,)).fetchall()]
        self._headers = {h.run_id: h for h in headers}
        self._events = {h.run_id: [] for h in headers}
        if headers:
            marks = ",".join("?" * len(headers))
            data = _OUTLINE if self.outlines else "data"
            query = f"SELECT seq, run_id, at, kind, key, cost_usd, {data} FROM events WHERE run_id IN ({marks})"
            query += " ORDER BY seq"
            for row in self._db.execute(query, [h.run_id for h in headers]).fetchall():
                self._events[row[1]].append(_event(row))
        return [h.run_id for h in headers]

    def add_decision(self, run_id: str, key: str, decision: dict[str, Any]) -> bool:
        raise PermissionError("the run store is open read-only")

    def decisions(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's decisions ({} for a store written before decisions had a table)."""
        try:
            rows = self._db.execute(_DECISIONS, (run_id,)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        return {key: json.loads(data) for key, data in rows}

    def interrupt(self) -> None:
        """Stop the query in flight (safe from another thread, and after `close`: then it does nothing)."""
        try:
            self._db.interrupt()
        except sqlite3.ProgrammingError:
            pass

    def close(self) -> None:
        self._db.close()


#: An event's data with its record cut down to what a runs list reads (run events keep theirs: a session marker).
_OUTLINE = """CASE WHEN key IS NULL THEN data
    WHEN json_type(data, '$.record') = 'object' THEN json_object('record', json_object('key', key,
        'step', coalesce(json_extract(data, '$.record.step'), key),
        'kind', coalesce(json_extract(data, '$.record.kind'), ''),
        'state', coalesce(json_extract(data, '$.record.state'), 'pending')))
    ELSE '{}' END"""


def _header(row: tuple[Any, ...]) -> RunHeader:
    return RunHeader(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], json.loads(row[6]))


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))


# --------------------------------------------------------------------------- reading a run back


@dataclass
class StoredRun:
    """A run rebuilt from its log: the latest record of every step key, spend, status."""

    header: RunHeader
    records: dict[str, StepRecord]
    cost_usd: float
    status: RunStatus
    sessions: int
    started_at: float
    updated_at: float
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    errors: list[str] = field(default_factory=list)
    comparison: dict[str, Any] | None = None

    def reusable(self) -> dict[str, StepRecord]:
        """Leaf records that finished: what a resumed session may reuse instead of calling again."""
        return {k: r for k, r in self.records.items() if r.is_leaf and r.state is StepState.SUCCEEDED}


def load_run(store: RunStore, run_id: str) -> StoredRun | None:
    header = store.header(run_id)
    if header is None:
        return None
    events = store.events(run_id)
    records: dict[str, StepRecord] = {}
    run_events = [e for e in events if e.kind in RUN_EVENTS]
    for event in events:
        if event.key is not None and "record" in event.data:
            records[event.key] = StepRecord.from_dict(event.data["record"])
    last = run_events[-1] if run_events else None
    status = _status(last)
    if status is not RunStatus.RUNNING:
        for record in records.values():
            if record.state is StepState.RUNNING:
                record.state = StepState.INTERRUPTED
    finished = last.data if last is not None and last.kind == "run_finished" else {}
    return StoredRun(
        header=header,
        records=records,
        cost_usd=sum(e.cost_usd for e in events if e.kind in SPEND_EVENTS),
        status=status,
        sessions=sum(1 for e in run_events if e.kind != "run_finished"),
        started_at=header.created_at,
        updated_at=events[-1].at if events else header.created_at,
        outputs=finished.get("outputs") or {},
        message=finished.get("message"),
        errors=list(finished.get("errors") or []),
        comparison=finished.get("comparison"),
    )


def _status(last: StoredEvent | None) -> RunStatus:
    if last is None:
        return RunStatus.INTERRUPTED
    if last.kind == "run_finished":
        try:
            return RunStatus(last.data.get("status", RunStatus.FAILED))
        except ValueError:  # written by another version: shown as failed, never a run list that cannot load
            return RunStatus.FAILED
    return RunStatus.RUNNING if marker_alive(last.data) else RunStatus.INTERRUPTED


def marker_alive(marker: dict[str, Any]) -> bool:
    """Whether the process that wrote a session marker still runs (only knowable on the same host)."""
    pid = marker.get("pid")
    if not isinstance(pid, int) or marker.get("host") != socket.gethostname():
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def list_runs(store: RunStore, limit: int = 50) -> list[RunRow]:
    rows: list[RunRow] = []
    for run_id in store.run_ids(limit):
        run = load_run(store, run_id)
        if run is None:
            continue
        done = sum(1 for r in run.records.values() if r.is_leaf and r.state is StepState.SUCCEEDED)
        times = (run.started_at, run.updated_at)
        rows.append(RunRow(run_id, run.header.workflow, run.status, *times, run.cost_usd, done))
    return rows


def open_run_store(location: str | Path | None) -> RunStore:
    """`postgresql://...` (or `postgres://`, `?schema=` allowed) -> PostgreSQL, shared by machines; anything
    else is a SQLite file path; None -> $MODELYARD_RUNS_DB or ~/.modelyard/runs.db."""
    text = str(location) if location is not None else os.environ.get("MODELYARD_RUNS_DB")
    if text is not None and text.startswith(("postgresql://", "postgres://")):
        from modelyard.workflows.checkpoint_pg import PostgresRunStore

        return PostgresRunStore(text)
    return SqliteStore(Path(text or DEFAULT_STORE).expanduser())
