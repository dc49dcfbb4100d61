"""The batch store: a batch's header, every finished row's result, and every finished step of an unfinished row.

One interface, two implementations: SQLite (`store_sqlite.py`, the same file as the workflow run store by
default, `~/.modelyard/runs.db`) for one machine, PostgreSQL (`store_pg.py`) for several. Both group commits
per event-loop turn, as the workflow run store does: a row's steps and its result are committed before
anything that depends on them runs, and a kill -9 loses only the current loop turn's writes.

Writes are idempotent on their natural keys (first write wins): `(batch_id, row)` for results,
`(batch_id, row, key)` for steps. A Ray worker that dies after saving a row, and a driver that resubmits that
row, therefore never record it twice, and a resumed row reuses exactly the steps that finished.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from modelyard.batch.model import BatchHeader, BatchTotals, RowResult, Submission
from modelyard.schema.errors import ModelyardError
from modelyard.workflows.checkpoint import RunHeader, StoredEvent, StoredRun, marker_alive
from modelyard.workflows.records import LEAF_KINDS, RunStatus, StepRecord, StepState


class StoreUnavailable(ModelyardError, RuntimeError):
    """A store that cannot be opened (a directory, a file that is not SQLite, no permission)."""


class BatchBusy(ModelyardError, RuntimeError):
    """Another driver is running this batch now: a second one would pay its rows twice."""


#: A running driver refreshes its marker this often, and a marker from another host that has not been
#: refreshed for LEASE_S is taken as a dead driver's (a process on this host is asked directly).
HEARTBEAT_S = 10.0
LEASE_S = 45.0


def holds_batch(state: tuple[str, dict[str, Any]] | None, now: float) -> bool:
    """Whether a stored state says another live driver runs the batch: `running`, and its process alive (this
    host) or its heartbeat fresh (another host). A marker of this very process holds nothing."""
    if state is None or state[0] != "running":
        return False
    marker = state[1]
    if marker.get("host") == socket.gethostname():
        return marker.get("pid") != os.getpid() and marker_alive(marker)
    beat = marker.get("heartbeat_at")
    return isinstance(beat, int | float) and now - beat < LEASE_S


class BatchStore(Protocol):
    """Where a batch keeps what it must not lose."""

    def create_batch(self, header: BatchHeader) -> None:
        """Record a new batch; raises ValueError when the id exists."""
        ...

    def header(self, batch_id: str) -> BatchHeader | None: ...

    def batch_ids(self, limit: int = 50) -> list[str]:
        """Newest first."""
        ...

    def set_state(self, batch_id: str, state: str, data: dict[str, Any]) -> None:
        """The batch's lifecycle: `running` (with the driver's session marker), `finished`, `stopped`."""
        ...

    def state(self, batch_id: str) -> tuple[str, dict[str, Any]] | None: ...

    def claim(self, batch_id: str, marker: dict[str, Any], *, force: bool = False) -> tuple[str, dict[str, Any]] | None:
        """Mark the batch `running` with this driver's marker, atomically with reading who holds it (two
        drivers started together cannot both pass): None when claimed; else the state of the live driver that
        holds it (`holds_batch`), unless `force`."""
        ...

    def save_row(self, batch_id: str, result: RowResult) -> bool:
        """Store a finished row (first write wins); False when the row already had a result.

        `--retry-failed` replaces a retryable row's result through `replace_row`."""
        ...

    def replace_row(self, batch_id: str, result: RowResult) -> None: ...

    def done_rows(self, batch_id: str) -> dict[int, str]:
        """Every stored row's index and state (a million rows: one query, two ints a row)."""
        ...

    def results(self, batch_id: str, after: int = -1, limit: int = 10_000) -> list[RowResult]:
        """Stored results with `row > after`, ordered by row: page through a batch with the last row seen."""
        ...

    def totals(self, batch_id: str) -> BatchTotals: ...

    def save_step(self, batch_id: str, row: int, record: StepRecord) -> None:
        """Checkpoint one finished leaf step of a row (first write wins per key)."""
        ...

    def steps(self, batch_id: str, rows: Sequence[int] | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        """Checkpointed step records (as dicts): row -> key -> record. Without `rows`: every row that has no
        result yet. With `rows`: those rows, finished or not (a Ray worker's chunk; a `--retry-failed` row keeps
        the steps it finished, which its retry reuses)."""
        ...

    def spent_in_unfinished(self, batch_id: str) -> float:
        """What steps of rows without a result cost: money a resumed batch has spent but no row reports yet."""
        ...

    def save_submission(self, submission: Submission) -> None:
        """Insert or update a provider Batch API job (by batch_id and nonce)."""
        ...

    def submissions(self, batch_id: str) -> list[Submission]: ...

    def flush(self) -> None:
        """Commit what is pending now."""
        ...

    def close(self) -> None: ...


def open_batch_store(location: str | Path | None) -> BatchStore:
    """`postgresql://...` (or `postgres://`) -> PostgreSQL; anything else is a SQLite file path;
    None -> $MODELYARD_RUNS_DB or ~/.modelyard/runs.db."""
    text = str(location) if location is not None else None
    if text is not None and text.startswith(("postgresql://", "postgres://")):
        from modelyard.batch.store_pg import PostgresBatchStore

        return PostgresBatchStore(text)
    from modelyard.batch.store_sqlite import SqliteBatchStore, default_path

    return SqliteBatchStore(Path(text) if text else default_path())


# --------------------------------------------------------------------------- one row as a workflow run


#: The engine's events a row checkpoints: leaf steps that finished (the only ones a resume may reuse).
_CHECKPOINTED = "step_finished"


class RowCheckpoint:
    """The workflow engine's `RunStore` for one row of a batch.

    The engine appends every start and finish; a row keeps only its finished leaf steps (what a resumed row
    reuses), in the batch store's steps table. The run's header is the batch's, so `create_run` writes nothing.
    """

    def __init__(self, store: BatchStore, batch_id: str, row: int) -> None:
        self.store = store
        self.batch_id = batch_id
        self.row = row

    def create_run(self, header: RunHeader) -> None:
        pass

    def append(self, run_id: str, kind: str, key: str | None, data: dict[str, Any], cost_usd: float = 0.0) -> None:
        if kind != _CHECKPOINTED or key is None:
            return
        record = data.get("record")
        if not isinstance(record, dict) or record.get("state") != StepState.SUCCEEDED.value:
            return
        if record.get("kind") in LEAF_KINDS and not record.get("cached"):
            self.store.save_step(self.batch_id, self.row, StepRecord.from_dict(record))

    def header(self, run_id: str) -> RunHeader | None:
        return None

    def events(self, run_id: str) -> list[StoredEvent]:
        return []

    def run_ids(self, limit: int = 50) -> list[str]:
        return []

    def close(self) -> None:
        pass


def prior_run(run_id: str, workflow: str, prior: dict[str, dict[str, Any]]) -> StoredRun:
    """A row's checkpointed steps as the `StoredRun` the engine resumes from (their cost is the prior spend)."""
    records = {key: StepRecord.from_dict(data) for key, data in prior.items()}
    header = RunHeader(run_id, workflow, "", "", {}, 0.0)
    cost = sum(r.cost_usd for r in records.values())
    return StoredRun(header, records, cost, RunStatus.INTERRUPTED, 1, 0.0, 0.0)


def iter_results(store: BatchStore, batch_id: str, page: int = 10_000) -> Iterator[RowResult]:
    """Every stored result in row order, a page at a time (bounded memory for a million rows)."""
    after = -1
    while True:
        chunk = store.results(batch_id, after, page)
        yield from chunk
        if len(chunk) < page:
            return
        after = chunk[-1].row
