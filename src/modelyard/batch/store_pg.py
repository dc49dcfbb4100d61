"""The batch store in PostgreSQL (psycopg, group commit per loop turn): several machines. Owned by the store helper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.batch.model import BatchHeader, BatchTotals, RowResult, Submission
from modelyard.workflows.records import StepRecord


class PostgresBatchStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        raise NotImplementedError

    def create_batch(self, header: BatchHeader) -> None:
        raise NotImplementedError

    def header(self, batch_id: str) -> BatchHeader | None:
        raise NotImplementedError

    def batch_ids(self, limit: int = 50) -> list[str]:
        raise NotImplementedError

    def set_state(self, batch_id: str, state: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def state(self, batch_id: str) -> tuple[str, dict[str, Any]] | None:
        raise NotImplementedError

    def save_row(self, batch_id: str, result: RowResult) -> bool:
        raise NotImplementedError

    def replace_row(self, batch_id: str, result: RowResult) -> None:
        raise NotImplementedError

    def done_rows(self, batch_id: str) -> dict[int, str]:
        raise NotImplementedError

    def results(self, batch_id: str, after: int = -1, limit: int = 10_000) -> list[RowResult]:
        raise NotImplementedError

    def totals(self, batch_id: str) -> BatchTotals:
        raise NotImplementedError

    def save_step(self, batch_id: str, row: int, record: StepRecord) -> None:
        raise NotImplementedError

    def steps(self, batch_id: str, rows: Sequence[int] | None = None) -> dict[int, dict[str, dict[str, Any]]]:
        raise NotImplementedError

    def spent_in_unfinished(self, batch_id: str) -> float:
        raise NotImplementedError

    def save_submission(self, submission: Submission) -> None:
        raise NotImplementedError

    def submissions(self, batch_id: str) -> list[Submission]:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
