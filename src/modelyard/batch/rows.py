"""Reading a batch's inputs: JSON lines, CSV or Parquet, one row at a time, mapped onto the workflow's inputs.

`inspect_inputs` reads the whole file once before the batch starts (fingerprint, row count, columns, and every
line parsed), so a bad line is reported as `file:line` before anything is paid for; `read_rows` then streams
the rows with bounded memory. Row indexes are 0-based positions of data rows: JSONL's non-blank lines, CSV's
records after the header, Parquet's rows. A value that is absent (a missing key or cell, JSON/Parquet null,
an empty CSV cell of a non-string input) leaves the input out, so its default applies or the row fails its
own input check; a value of the wrong type is passed as is and fails that row's check, never the batch.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.spec import WorkflowSpec

FORMATS = ("jsonl", "csv", "parquet")
#: File extensions of each format (lower case).
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: The longest JSON line or CSV record (bytes; a larger one is an error naming it, not a memory spike).
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Distinct JSONL keys kept for `InputsFile.columns` (the workflow's own columns are always kept).
MAX_COLUMNS = 10_000
#: Parquet rows decoded at a time.
PARQUET_BATCH_ROWS = 4_096
_HASH_CHUNK = 1024 * 1024
_MIB = MAX_RECORD_BYTES // (1024 * 1024)
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
PARQUET_HINT = "reading Parquet needs pyarrow: pip install 'modelyard[parquet]'"


class RowsError(ModelyardError, ValueError):
    """An inputs file that cannot be read as rows: the message names the file, the line (or row) and why."""


@dataclass(frozen=True)
class InputsFile:
    path: Path
    format: str
    #: sha256 of the file's bytes (hex): a resume refuses a file that changed since the batch started.
    fingerprint: str
    rows: int
    #: The columns (CSV header, Parquet schema, the union of the JSON lines' keys: the first MAX_COLUMNS,
    #: and the workflow's own columns wherever they appear). Empty when built from a stored header.
    columns: tuple[str, ...]


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """`--map input=column` (repeatable) as {input: column}; RowsError on a malformed pair."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name = name.strip()
        if not sep or not name or not column.strip():
            raise RowsError(f"--map {pair!r}: expected INPUT=COLUMN (e.g. --map text=body)")
        if name in mapping and mapping[name] != column:
            raise RowsError(f"--map: input '{name}' is mapped twice ({mapping[name]!r} and {column!r})")
        mapping[name] = column
    return mapping


def input_format(path: Path) -> str:
    """The format a file's extension names; RowsError for any other."""
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise RowsError(f"{path}: unknown inputs format {path.suffix or '(no extension)'!r} (use {known})")
    return found


def columns_for(spec: WorkflowSpec, mapping: dict[str, str]) -> dict[str, str]:
    """{input: the column it reads}: its mapping, else the same-named column."""
    return {name: mapping.get(name, name) for name in spec.inputs}


def inspect_inputs(path: Path, spec: WorkflowSpec, mapping: dict[str, str]) -> InputsFile:
    """Format (by extension), fingerprint, row count and columns; RowsError when the file cannot serve the
    workflow (a required input with neither a mapping nor a same-named column, a mapped column that does not
    exist, an unknown format, an unreadable file). One pass over the file."""
    fmt = input_format(path)
    needed = set(columns_for(spec, mapping).values())
    try:
        if fmt == "jsonl":
            fingerprint, rows, columns = _inspect_jsonl(path, needed)
        elif fmt == "csv":
            fingerprint, rows, columns = _inspect_csv(path, needed)
        else:
            fingerprint, rows, columns = _inspect_parquet(path)
    except OSError as exc:
        raise RowsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _check_columns(path, spec, mapping, columns)
    return InputsFile(path, fmt, fingerprint, rows, columns)


def _check_columns(path: Path, spec: WorkflowSpec, mapping: dict[str, str], columns: tuple[str, ...]) -> None:
    """Every problem at once: inputs mapped that the workflow lacks, mapped columns absent, required inputs
    with nothing to read."""
    present = set(columns)
    declared = ", ".join(spec.inputs) or "none"
    shown = ", ".join(columns[:20]) + (f", ... ({len(columns)} in all)" if len(columns) > 20 else "")
    problems = [
        f"--map {name}={column}: the workflow has no input '{name}' (declared: {declared})"
        for name, column in mapping.items()
        if name not in spec.inputs
    ]
    for name, column in mapping.items():
        if name in spec.inputs and column not in present:
            problems.append(f"--map {name}={column}: no column {column!r} (columns: {shown or 'none'})")
    for name, declared_input in spec.inputs.items():
        if name not in mapping and declared_input.required and name not in present:
            problems.append(
                f"required input '{name}' has no column {name!r}: add it, or --map {name}=COLUMN"
                f" (columns: {shown or 'none'})"
            )
    if problems:
        raise RowsError("\n".join(f"{path}: {problem}" for problem in problems))


def read_rows(inputs: InputsFile, spec: WorkflowSpec, mapping: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index from 0, the row's workflow inputs) in file order, streaming (bounded memory). Values keep
    their JSON/Parquet types; a CSV cell is converted to the declared input type (number, integer, boolean,
    array/object as JSON) and left as text when it does not convert (the row then fails its input check)."""
    wanted = columns_for(spec, mapping)
    types = {name: spec.inputs[name].type for name in wanted}
    if inputs.format == "jsonl":
        records: Iterable[tuple[int, dict[str, Any]]] = _jsonl_records(inputs.path)
    elif inputs.format == "csv":
        records = _csv_records(inputs.path, set(wanted.values()))
    elif inputs.format == "parquet":
        records = _parquet_records(inputs.path, set(wanted.values()))
    else:
        raise RowsError(f"{inputs.path}: unknown inputs format {inputs.format!r}")
    text_cells = inputs.format == "csv"
    for index, (_, record) in enumerate(records):
        row: dict[str, Any] = {}
        for name, column in wanted.items():
            if column not in record:
                continue
            value = _from_text(record[column], types[name]) if text_cells else _from_typed(record[column], types[name])
            if value is not _ABSENT:
                row[name] = value
        yield index, row


# --------------------------------------------------------------------------- values

_ABSENT: Any = object()


def _from_text(cell: str, declared: str) -> Any:
    """A CSV cell as the declared type; the text itself when it does not convert (the row's check fails)."""
    if declared == "string":
        return cell
    text = cell.strip()
    if not text:
        return _ABSENT
    try:
        if declared == "integer":
            return _integer(text)
        if declared == "number":
            return _number(text)
        if declared == "boolean":
            lowered = text.lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else cell
        if declared in ("array", "object"):
            value = json.loads(text, parse_constant=_no_constant)
            return value if isinstance(value, list if declared == "array" else dict) else cell
    except (ValueError, RecursionError):
        return cell
    return cell


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # "3.0", as writers of float columns with gaps spell integers
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not math.isfinite(value):
            raise
        return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _from_typed(value: Any, declared: str) -> Any:
    """A JSON/Parquet value as given (null is absent); Parquet-only types as plain JSON values."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _ABSENT
    if declared == "integer" and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _plain(value: Any) -> Any:
    """Parquet's datetimes, decimals, bytes and maps as JSON values (ISO text, numbers, text, lists)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------- JSON lines


def _lines(file: IO[bytes], path: Path, digest: Any = None) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, the line's bytes), each at most MAX_RECORD_BYTES; feeds `digest` every byte."""
    number = 0
    while True:
        line = file.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        number += 1
        if digest is not None:
            digest.update(line)
        if len(line) > MAX_RECORD_BYTES:
            raise RowsError(f"{path}:{number}: line longer than {_MIB} MiB (the most one row may hold)")
        yield number, line


def _decode(line: bytes, path: Path, number: int) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowsError(f"{path}:{number}: not UTF-8 (byte {exc.start + 1} of the line)") from None
    return text[1:] if number == 1 and text.startswith("\ufeff") else text


def _jsonl_records(path: Path, digest: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; RowsError naming `file:line` for anything else."""
    try:
        with path.open("rb") as file:
            for number, line in _lines(file, path, digest):
                text = _decode(line, path, number)
                if not text.strip():
                    continue
                try:
                    value = json.loads(text, parse_constant=_no_constant)
                except ValueError as exc:
                    raise RowsError(f"{path}:{number}: not JSON: {exc}") from None
                except RecursionError:
                    raise RowsError(f"{path}:{number}: JSON nested too deeply") from None
                if not isinstance(value, dict):
                    raise RowsError(f"{path}:{number}: expected a JSON object, got {_json_kind(value)}")
                yield number, value
    except OSError as exc:
        raise RowsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _inspect_jsonl(path: Path, needed: set[str]) -> tuple[str, int, tuple[str, ...]]:
    digest = hashlib.sha256()
    rows = 0
    columns: dict[str, None] = {}
    for _, record in _jsonl_records(path, digest):
        rows += 1
        for key in record:
            if key not in columns and (len(columns) < MAX_COLUMNS or key in needed):
                columns[key] = None
    return digest.hexdigest(), rows, tuple(columns)


# --------------------------------------------------------------------------- CSV


class _CsvLines:
    """The decoded lines the csv module reads, with the size of the record being read bounded and the line
    each record starts on known."""

    def __init__(self, file: IO[bytes], path: Path, digest: Any = None) -> None:
        self.lines = _lines(file, path, digest)
        self.path = path
        self.number = 0
        self.record_start = 1
        self.record_bytes = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        self.number, line = next(self.lines)
        if self.record_bytes == 0:
            self.record_start = self.number
        self.record_bytes += len(line)
        if self.record_bytes > MAX_RECORD_BYTES:
            raise RowsError(
                f"{self.path}:{self.record_start}: CSV record longer than {_MIB} MiB (the most one row may hold;"
                " an unclosed quote makes one record of the rest of the file)"
            )
        return _decode(line, self.path, self.number)

    def next_record(self) -> None:
        self.record_bytes = 0


def _csv_rows(path: Path, digest: Any = None) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, its cells) of the header and every non-empty record."""
    # process-wide: only ever raised (to let one field fill a record; `_CsvLines` bounds the record itself)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES))
    try:
        with path.open("rb") as file:
            lines = _CsvLines(file, path, digest)
            reader = csv.reader(lines, strict=True)
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise RowsError(f"{path}:{lines.record_start}: not CSV: {exc}") from None
                start = lines.record_start
                lines.next_record()
                if cells:
                    yield start, cells
    except OSError as exc:
        raise RowsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _csv_header(path: Path, rows: Iterator[tuple[int, list[str]]], needed: set[str]) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise RowsError(f"{path}: empty CSV file (a header row naming the columns is required)")
    header = first[1]
    seen: set[str] = set()
    for name in header:
        if name in seen and name in needed:
            raise RowsError(f"{path}:{first[0]}: column {name!r} appears twice in the header")
        seen.add(name)
    return header


def _csv_records(path: Path, needed: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = _csv_rows(path)
    header = _csv_header(path, rows, needed)
    positions = [(i, name) for i, name in enumerate(header) if name in needed]
    for start, cells in rows:
        yield start, {name: cells[i] for i, name in positions if i < len(cells)}


def _inspect_csv(path: Path, needed: set[str]) -> tuple[str, int, tuple[str, ...]]:
    digest = hashlib.sha256()
    rows_iter = _csv_rows(path, digest)
    header = _csv_header(path, rows_iter, needed)
    rows = sum(1 for _ in rows_iter)
    return digest.hexdigest(), rows, tuple(header)


# --------------------------------------------------------------------------- Parquet


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RowsError(f"{path}: {PARQUET_HINT}") from None
    return pq


def _parquet_file(path: Path) -> Any:
    pq = _pyarrow_parquet(path)
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise RowsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (pa.ArrowException, ValueError) as exc:
        raise RowsError(f"{path}: not a Parquet file: {exc}") from None


def _inspect_parquet(path: Path) -> tuple[str, int, tuple[str, ...]]:
    parquet = _parquet_file(path)
    try:
        rows = int(parquet.metadata.num_rows)
        columns = tuple(str(name) for name in parquet.schema_arrow.names)
    finally:
        parquet.close()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), rows, columns


def _parquet_records(path: Path, needed: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """A record batch at a time (only the columns the workflow reads): memory stays bounded."""
    import pyarrow as pa

    parquet = _parquet_file(path)
    try:
        columns = [name for name in parquet.schema_arrow.names if name in needed]
        if not columns:  # nothing to read but the row count
            yield from ((index, {}) for index in range(int(parquet.metadata.num_rows)))
            return
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                data = batch.to_pydict()
                for offset in range(batch.num_rows):
                    yield index, {name: data[name][offset] for name in columns}
                    index += 1
        except pa.ArrowException as exc:
            raise RowsError(f"{path}: row {index}: cannot read Parquet: {exc}") from None
    finally:
        parquet.close()
