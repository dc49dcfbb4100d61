"""Writing a batch's results: JSON lines as rows finish (crash-safe), Parquet at the end; row order restored.

The batch store is the truth; the file is a view of it. Opening the writer rebuilds the file from the store
(temp file, then an atomic `os.replace`), so a file torn by a crash, or missing the rows the store saved
after the last flush, is whole again before anything is appended. Rows are appended in small groups (at most
~0.2 s or 200 rows late), never twice (a bitmap of written rows), and `finish` rewrites the file in row
order from the store (a `--retry-failed` row's new result included). Parquet cannot be appended to: during
the run the rows go to a `<out>.partial.jsonl` sidecar, and `finish` writes the Parquet file and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.util
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from modelyard.batch.model import RowResult, RowSet
from modelyard.batch.store import BatchStore, iter_results
from modelyard.schema.errors import ModelyardError
from modelyard.workflows.checkpoint import marker_alive

log = logging.getLogger(__name__)

OUT_FORMATS = ("jsonl", "parquet")
OUT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
#: Appended rows wait at most this long, or this many rows, before they reach the file.
FLUSH_S = 0.2
FLUSH_ROWS = 200
#: `ordered`: the most out-of-order rows held back; past it they are written out of order (a warning says so).
MAX_HELD = 100_000
#: Rows per Parquet row group (and per page read from the store while writing it).
ROW_GROUP = 10_000
#: More distinct output names than this go into one `outputs` JSON column instead of a column each.
MAX_OUTPUT_COLUMNS = 1_000
FIXED_COLUMNS = ("row", "status", "cost_usd", "error")
_INT64 = 2**63


class ResultsError(ModelyardError, ValueError):
    """An output file that cannot be written (unknown format, a directory that does not exist, no pyarrow)."""


def out_format(path: Path) -> str:
    """The output format `--out`'s extension names; ResultsError for any other."""
    found = OUT_EXTENSIONS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(sorted(OUT_EXTENSIONS))
        raise ResultsError(f"--out {path}: unknown output format {path.suffix or '(no extension)'!r} (use {known})")
    return found


def result_line(result: RowResult) -> bytes:
    """One row as a compact JSON line, UTF-8 (a lone surrogate in model output is kept as its JSON escape)."""
    data = {
        "row": result.row,
        "status": result.status,
        "outputs": result.outputs,
        "cost_usd": result.cost_usd,
        "error": result.error,
    }
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:  # a non-finite number in an output (a tool's float): null, so the line stays JSON
        text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", errors="backslashreplace") + b"\n"


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, ±inf) as None: what JSON and Parquet columns can hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
        self.format = out_format(path)
        #: The file rows are appended to: `--out` itself, or the Parquet file's JSON lines sidecar.
        self.live = path if self.format == "jsonl" else path.with_name(path.name + ".partial.jsonl")
        #: What the CLI may show once (e.g. ordering given up past MAX_HELD held rows).
        self.warnings: list[str] = []
        self._file: IO[bytes] | None = None
        self._written = RowSet()
        self._buffer: list[bytes] = []
        self._last_flush = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        #: `ordered`: the next row to write, rows held back, rows the store had at open but not yet written.
        self._next = 0
        self._held: dict[int, bytes] = {}
        self._stored = RowSet()
        self._finished = False

    # ------------------------------------------------------------------ open / close

    def __enter__(self) -> ResultsWriter:
        if not self.path.parent.is_dir():
            raise ResultsError(f"--out {self.path}: the directory {self.path.parent} does not exist")
        try:
            _remove_dead_temps(self.live)
            if self.live != self.path:
                _remove_dead_temps(self.path)
            self._rebuild()
            self._file = self.live.open("ab")
        except OSError as exc:
            raise ResultsError(f"--out {self.path}: cannot write: {exc.strerror or exc}") from None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        """Flush what is buffered (held rows stay out: the store has them, the next open writes them)."""
        self._cancel_timer()
        file, self._file = self._file, None
        if file is None:
            return
        try:
            self._flush_to(file)
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()

    def _rebuild(self) -> None:
        """The live file, as the store has it (atomically replaced). `ordered`: only the rows up to the first
        one missing; the later ones are written when the rows before them are."""
        stored = iter_results(self.store, self.batch_id)
        if not self.ordered:
            _atomic_write(self.live, self._mark(stored))
            return

        def prefix() -> Iterator[bytes]:
            for result in stored:
                if result.row == self._next and self._written.add(result.row):
                    self._next += 1
                    yield result_line(result)
                else:
                    self._stored.add(result.row)

        _atomic_write(self.live, prefix())

    def _mark(self, results: Iterable[RowResult]) -> Iterator[bytes]:
        for result in results:
            if self._written.add(result.row):
                yield result_line(result)

    # ------------------------------------------------------------------ rows as they finish

    def write(self, result: RowResult) -> None:
        """Append a finished row (a row already written is ignored: `finish` writes the store's version)."""
        if result.row in self._written or self._file is None:
            return
        if not self.ordered:
            self._written.add(result.row)
            self._append(result_line(result))
            return
        if result.row < self._next or result.row in self._held:
            return
        self._held[result.row] = result_line(result)
        self._advance()
        if len(self._held) > MAX_HELD:
            self._spill()

    def _advance(self) -> None:
        """`ordered`: write every row that is next in line, from those held and those the store had at open."""
        while True:
            line = self._held.pop(self._next, None)
            if line is not None:
                if self._written.add(self._next):
                    self._append(line)
                self._next += 1
            elif self._next in self._stored:
                self._from_store()
            elif self._next in self._written:
                self._next += 1
            else:
                return

    def _from_store(self) -> None:
        """Rows the store had at open, from the cursor on while they follow each other (one page)."""
        start = self._next
        for result in self.store.results(self.batch_id, self._next - 1, ROW_GROUP):
            if result.row != self._next:
                break
            self._held.pop(result.row, None)
            if self._written.add(result.row):
                self._append(result_line(result))
            self._next += 1
        if self._next == start:  # the store no longer has a row it had at open: never wait for it
            self._next += 1

    def _spill(self) -> None:
        """Too many rows held back behind a slow one: write them now, out of order, and say so once."""
        if not self.warnings:
            message = (
                f"--ordered: more than {MAX_HELD:,} rows finished ahead of row {self._next}; writing them out of"
                " order now (the file is put in row order when the batch ends)"
            )
            self.warnings.append(message)
            log.warning(message)
        for row in sorted(self._held):
            if self._written.add(row):
                self._append(self._held[row])
        self._held.clear()

    def _append(self, line: bytes) -> None:
        self._buffer.append(line)
        if len(self._buffer) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_S:
            self.flush()
        elif self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        """Inside an event loop, a timer flushes a quiet buffer ~0.2 s later (outside one, the next write or
        `finish` does)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(FLUSH_S, self.flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """Hand the buffered rows to the OS (an fsync happens at the end, not per flush)."""
        self._cancel_timer()
        if self._file is not None:
            self._flush_to(self._file)
            self._file.flush()

    def _flush_to(self, file: IO[bytes]) -> None:
        self._last_flush = time.monotonic()
        if self._buffer:
            file.write(b"".join(self._buffer))
            self._buffer.clear()

    # ------------------------------------------------------------------ the end

    def finish(self) -> None:
        """The file in row order from the store (retried rows' new results included); Parquet is written
        now and its sidecar removed."""
        if self._finished:
            return
        self._close()
        self._held.clear()
        self.store.flush()
        try:
            if self.format == "jsonl":
                _atomic_write(self.path, (result_line(r) for r in iter_results(self.store, self.batch_id)))
            else:
                write_parquet(self.path, self.store, self.batch_id)
                self.live.unlink(missing_ok=True)
        except OSError as exc:
            raise ResultsError(f"--out {self.path}: cannot write: {exc.strerror or exc}") from None
        self._finished = True


# --------------------------------------------------------------------------- files


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove_dead_temps(path: Path) -> None:
    """Temp files a killed rewrite of `path` left behind (their writer's pid is gone on this host; this process
    opens the writer only when no rewrite of its own runs)."""
    prefix = f".{path.name}."
    host = socket.gethostname()
    for temp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = temp.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and (int(pid) == os.getpid() or not marker_alive({"pid": int(pid), "host": host})):
            with contextlib.suppress(OSError):
                temp.unlink()


def _atomic_write(path: Path, lines: Iterable[bytes]) -> None:
    """Write next to `path`, fsync, then replace it: a crash leaves the old file or the new one, never half."""
    temp = _temp_path(path)
    try:
        with temp.open("wb") as file:
            chunk: list[bytes] = []
            for line in lines:
                chunk.append(line)
                if len(chunk) >= 1_000:
                    file.write(b"".join(chunk))
                    chunk.clear()
            file.write(b"".join(chunk))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """The rename itself survives a power cut (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- Parquet


def _kind(value: Any) -> str | None:
    """A value's column kind: None for null, "json" for anything that is not one scalar type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -_INT64 <= value < _INT64 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def output_kinds(results: Iterable[RowResult]) -> dict[str, str]:
    """Each output name's column kind over all rows: its scalar type when uniform (integers and floats
    together are floats), else "json"; an all-null output is text."""
    seen: dict[str, set[str]] = {}
    for result in results:
        for name, value in result.outputs.items():
            kinds = seen.setdefault(name, set())
            kind = _kind(value)
            if kind is not None:
                kinds.add(kind)
    columns: dict[str, str] = {}
    for name, kinds in seen.items():
        if kinds == {"int", "float"}:
            columns[name] = "float"
        elif len(kinds) == 1:
            columns[name] = next(iter(kinds))
        else:
            columns[name] = "json" if kinds else "str"
    return columns


def _column_names(kinds: dict[str, str]) -> dict[str, str]:
    """Output name -> its column name (`outputs.NAME` where it would clash with a fixed column)."""
    return {name: f"outputs.{name}" if name in FIXED_COLUMNS else name for name in kinds}


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    if kind == "float":
        return float(value)
    return value


def require_writer(out: str) -> None:
    """Refuse at the start, before any row is paid, an output the batch could only fail to write at its end."""
    if out.endswith(".parquet") and importlib.util.find_spec("pyarrow") is None:
        raise ResultsError(f"--out {out}: writing Parquet needs pyarrow: pip install 'modelyard[parquet]'")


def write_parquet(path: Path, store: BatchStore, batch_id: str) -> None:
    """The batch's rows from the store as Parquet, in row groups of ROW_GROUP rows (two passes over the
    store: the output columns' types first, then the rows; memory is one row group)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ResultsError(f"--out {path}: writing Parquet needs pyarrow: pip install 'modelyard[parquet]'") from None
    kinds = output_kinds(iter_results(store, batch_id, ROW_GROUP))
    packed = len(kinds) > MAX_OUTPUT_COLUMNS
    if packed:
        kinds = {"outputs": "json"}
    names = _column_names(kinds)
    types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string(), "json": pa.string()}
    fields = [("row", pa.int64()), ("status", pa.string()), ("cost_usd", pa.float64()), ("error", pa.string())]
    fields += [(names[name], types[kind]) for name, kind in kinds.items()]
    schema = pa.schema(fields)
    temp = _temp_path(path)
    try:
        with pq.ParquetWriter(temp, schema) as writer:
            for group in _groups(iter_results(store, batch_id, ROW_GROUP)):
                columns: dict[str, list[Any]] = {
                    "row": [r.row for r in group],
                    "status": [r.status for r in group],
                    "cost_usd": [_finite(r.cost_usd) for r in group],
                    "error": [r.error for r in group],
                }
                for name, kind in kinds.items():
                    values = [r.outputs or None for r in group] if packed else [r.outputs.get(name) for r in group]
                    columns[names[name]] = [_cell(value, kind) for value in values]
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync_dir(path.parent)


def _groups(results: Iterable[RowResult]) -> Iterator[list[RowResult]]:
    group: list[RowResult] = []
    for result in results:
        group.append(result)
        if len(group) >= ROW_GROUP:
            yield group
            group = []
    if group:
        yield group
