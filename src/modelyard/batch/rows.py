"""Reading a batch's inputs: JSON lines, CSV or Parquet, one row at a time, mapped onto the workflow's inputs.

Owned by the I/O helper; the contract the driver uses is below.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.spec import WorkflowSpec

FORMATS = ("jsonl", "csv", "parquet")


class RowsError(ModelyardError, ValueError):
    """An inputs file that cannot be read as rows: the message names the file, the line (or row) and why."""


@dataclass(frozen=True)
class InputsFile:
    path: Path
    format: str
    #: sha256 of the file's bytes (hex): a resume refuses a file that changed since the batch started.
    fingerprint: str
    rows: int
    #: The columns (CSV header, Parquet schema, the union of keys of the first JSON lines).
    columns: tuple[str, ...]


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """`--map input=column` (repeatable) as {input: column}; RowsError on a malformed pair."""
    raise NotImplementedError


def inspect_inputs(path: Path, spec: WorkflowSpec, mapping: dict[str, str]) -> InputsFile:
    """Format (by extension), fingerprint, row count and columns; RowsError when the file cannot serve the
    workflow (a required input with neither a mapping nor a same-named column, a mapped column that does not
    exist, an unknown format, an unreadable file). One pass over the file."""
    raise NotImplementedError


def read_rows(inputs: InputsFile, spec: WorkflowSpec, mapping: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index from 0, the row's workflow inputs) in file order, streaming (bounded memory). Values keep
    their JSON/Parquet types; a CSV cell is converted to the declared input type (number, integer, boolean,
    array/object as JSON) and left as text when it does not convert (the row then fails its input check)."""
    raise NotImplementedError
