"""Writing a batch's results: JSON lines as rows finish (crash-safe), Parquet at the end; row order restored.

Owned by the I/O helper; the contract the driver uses is below.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from modelyard.batch.model import RowResult
from modelyard.batch.store import BatchStore

OUT_FORMATS = ("jsonl", "parquet")


class ResultsWriter:
    """`--out`: every finished row once. Open: rebuilds the file from the store's results (a resumed batch's
    output has every row finished before the crash, once, and no torn last line). `write`: appends a finished
    row (JSONL; with `ordered`, rows are held until every earlier row is written). `finish`: rewrites the file
    in row order from the store (and writes Parquet, which cannot be appended to)."""

    def __init__(self, path: Path, store: BatchStore, batch_id: str, *, ordered: bool = False) -> None:
        self.path = path
        self.store = store
        self.batch_id = batch_id
        self.ordered = ordered

    def __enter__(self) -> ResultsWriter:
        raise NotImplementedError

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        raise NotImplementedError

    def write(self, result: RowResult) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError
