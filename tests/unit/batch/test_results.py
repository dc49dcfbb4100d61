"""The results file: rebuilt from the batch store at open, appended as rows finish, every row once, row
order at finish (or all along with `ordered`), Parquet written at the end from a JSON lines sidecar."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch import results as results_module
from modelyard.batch.model import RowResult
from modelyard.batch.results import ResultsError, ResultsWriter, result_line
from modelyard.batch.store_sqlite import SqliteBatchStore

BATCH = "b-test"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SqliteBatchStore(tmp_path / "runs.db")
    try:
        yield opened
    finally:
        opened.close()


def result(row: int, status: str = "succeeded", outputs: dict[str, Any] | None = None) -> RowResult:
    outputs = {"label": f"L{row}"} if outputs is None else outputs
    return RowResult(row, status, outputs, cost_usd=0.001 * row, error=None)


def finished(
    store: SqliteBatchStore, writer: ResultsWriter, row: int, outputs: dict[str, Any] | None = None
) -> RowResult:
    """What the engine and driver do for a row: save it in the store, then hand it to the writer."""
    done = result(row, outputs=outputs)
    store.save_row(BATCH, done)
    writer.write(done)
    return done


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def rows(path: Path) -> list[int]:
    return [line["row"] for line in lines(path)]


def test_a_line_is_compact_utf8_json_with_the_five_fields() -> None:
    line = result_line(RowResult(3, "failed", {"text": "café \ud800"}, cost_usd=0.5, error="boom"))
    assert line.endswith(b"\n") and b", " not in line and "café".encode() in line
    assert json.loads(line) == {
        "row": 3,
        "status": "failed",
        "outputs": {"text": "café \ud800"},
        "cost_usd": 0.5,
        "error": "boom",
    }


def test_rows_are_appended_as_they_finish_once_each_and_in_row_order_at_finish(
    tmp_path: Path, store: SqliteBatchStore
) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, store, BATCH) as writer:
        for row in (2, 0, 3, 1):
            finished(store, writer, row)
        writer.write(result(2, outputs={"label": "a second result for row 2"}))  # e.g. a Ray row reported twice
        writer.flush()
        assert rows(out) == [2, 0, 3, 1]
        writer.finish()
    assert lines(out) == [json.loads(result_line(result(row))) for row in range(4)]


def test_writes_reach_the_file_in_groups_and_at_exit(
    tmp_path: Path, store: SqliteBatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "FLUSH_S", 3600.0)
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, store, BATCH) as writer:
        for row in range(results_module.FLUSH_ROWS - 1):
            finished(store, writer, row)
        assert out.read_bytes() == b""  # buffered
        finished(store, writer, results_module.FLUSH_ROWS - 1)
        assert len(rows(out)) == results_module.FLUSH_ROWS
        finished(store, writer, 10_000)
    assert rows(out)[-1] == 10_000  # exit flushes (no finish: a crash-like end keeps the append order)


async def test_in_an_event_loop_a_quiet_buffer_is_flushed_within_a_fraction_of_a_second(
    tmp_path: Path, store: SqliteBatchStore
) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, store, BATCH) as writer:
        finished(store, writer, 0)
        await asyncio.sleep(0)
        finished(store, writer, 1)  # within FLUSH_S of the last flush (the open): buffered, a timer armed
        assert rows(out) == []
        await asyncio.sleep(results_module.FLUSH_S + 0.2)
        assert rows(out) == [0, 1]
        writer.finish()


def test_open_rebuilds_a_torn_file_from_the_store(tmp_path: Path, store: SqliteBatchStore) -> None:
    """A crash left rows 0-4 and half of row 5 in the file; the store has rows 0-9."""
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(result_line(result(row)) for row in range(5)) + result_line(result(5))[:12])
    for row in range(10):
        store.save_row(BATCH, result(row))
    with ResultsWriter(out, store, BATCH) as writer:
        assert rows(out) == list(range(10))
        finished(store, writer, 11)
        finished(store, writer, 10)
        writer.write(result(3))  # already in the file: ignored
        writer.flush()
        assert rows(out) == [*range(10), 11, 10]
    assert not list(tmp_path.glob(".out.jsonl.*"))  # no temp file left behind


_CRASHING_DRIVER = """
import os, signal, sys
from pathlib import Path
from modelyard.batch.model import RowResult
from modelyard.batch.results import ResultsWriter
from modelyard.batch.store_sqlite import SqliteBatchStore

store = SqliteBatchStore(sys.argv[1])
writer = ResultsWriter(Path(sys.argv[2]), store, "b-test").__enter__()
for row in range(int(sys.argv[3]), 1_000_000):
    done = RowResult(row, "succeeded", {"label": "x" * 300})
    store.save_row("b-test", done)
    writer.write(done)
    if row == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_mid_run_then_reopen_has_every_stored_row_once(tmp_path: Path) -> None:
    db, out = tmp_path / "runs.db", tmp_path / "out.jsonl"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_CRASHING_DRIVER))
    for first, kill_at in ((0, 1_234), (1_235, 2_500)):
        done = subprocess.run([sys.executable, str(script), str(db), str(out), str(first), str(kill_at)], check=False)
        assert done.returncode == -signal.SIGKILL
    store = SqliteBatchStore(db)
    try:
        stored = sorted(store.done_rows(BATCH))
        assert stored == list(range(2_501))
        # the killed file may be torn or short: reopening makes it whole
        with ResultsWriter(out, store, BATCH):
            assert rows(out) == stored
    finally:
        store.close()


def test_ordered_holds_rows_back_until_every_earlier_row_is_written(tmp_path: Path, store: SqliteBatchStore) -> None:
    """A resumed batch: the store had rows 0, 1, 2, 5 and 7; this session finishes 4, 3, 6, then 9."""
    out = tmp_path / "out.jsonl"
    for row in (0, 1, 2, 5, 7):
        store.save_row(BATCH, result(row))
    with ResultsWriter(out, store, BATCH, ordered=True) as writer:
        writer.flush()
        assert rows(out) == [0, 1, 2]  # 5 and 7 wait for 3, 4 and 6
        finished(store, writer, 4)
        writer.flush()
        assert rows(out) == [0, 1, 2]
        finished(store, writer, 3)
        writer.flush()
        assert rows(out) == [0, 1, 2, 3, 4, 5]
        finished(store, writer, 9)
        finished(store, writer, 6)
        writer.write(result(4))  # a second result for a written row: ignored
        writer.flush()
        assert rows(out) == [0, 1, 2, 3, 4, 5, 6, 7]  # 9 waits for 8, which never comes
        writer.finish()
    assert rows(out) == [0, 1, 2, 3, 4, 5, 6, 7, 9]


def test_ordered_does_not_hold_rows_without_bound(
    tmp_path: Path, store: SqliteBatchStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(results_module, "MAX_HELD", 3)
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, store, BATCH, ordered=True) as writer:
        for row in (4, 2, 1, 3):  # row 0 is slow
            finished(store, writer, row)
        writer.flush()
        assert rows(out) == [1, 2, 3, 4]
        assert len(writer.warnings) == 1 and "ahead of row 0" in writer.warnings[0]
        assert "out of order" in caplog.text
        for row in (8, 7, 6, 5):
            finished(store, writer, row)
        finished(store, writer, 0)
        writer.flush()
        assert rows(out) == [1, 2, 3, 4, 5, 6, 7, 8, 0]
        assert len(writer.warnings) == 1  # said once
        finished(store, writer, 9)
        writer.flush()
        assert rows(out)[-1] == 9  # order resumes after the slow row
        writer.finish()
    assert rows(out) == list(range(10))


def test_a_retried_row_is_replaced_at_finish_not_written_twice(tmp_path: Path, store: SqliteBatchStore) -> None:
    out = tmp_path / "out.jsonl"
    store.save_row(BATCH, RowResult(0, "failed", error="rate limited"))
    store.save_row(BATCH, result(1))
    with ResultsWriter(out, store, BATCH) as writer:
        retried = result(0)
        store.save_row(BATCH, retried)  # the runner's first-write-wins save is refused...
        store.replace_row(BATCH, retried)  # ...and the driver replaces it
        writer.write(retried)
        writer.flush()
        assert [(line["row"], line["status"]) for line in lines(out)] == [(0, "failed"), (1, "succeeded")]
        writer.finish()
    assert [(line["row"], line["status"]) for line in lines(out)] == [(0, "succeeded"), (1, "succeeded")]


def test_bad_output_paths_are_clear_errors(tmp_path: Path, store: SqliteBatchStore) -> None:
    with pytest.raises(ResultsError, match=r"unknown output format '\.csv'"):
        ResultsWriter(tmp_path / "out.csv", store, BATCH)
    with pytest.raises(ResultsError, match="does not exist"):
        ResultsWriter(tmp_path / "absent" / "out.jsonl", store, BATCH).__enter__()


# --------------------------------------------------------------------------- Parquet


def test_parquet_is_written_at_finish_with_typed_columns_and_the_sidecar_goes(
    tmp_path: Path, store: SqliteBatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(results_module, "ROW_GROUP", 4)
    out = tmp_path / "out.parquet"
    sidecar = tmp_path / "out.parquet.partial.jsonl"
    with ResultsWriter(out, store, BATCH) as writer:
        for row in (9, 3, 0, 1, 2, 4, 5, 6, 7, 8):
            outputs: dict[str, Any] = {
                "label": f"L{row}",
                "score": row if row % 2 else row + 0.5,  # ints and floats: a float column
                "ok": row != 3,
                "mixed": row if row < 5 else "text",  # not uniform: JSON text
                "tags": ["a", row],  # not a scalar: JSON text
                "status": "clash",  # a fixed column's name
            }
            if row == 3:
                outputs = {"label": None}
            finished(store, writer, row, outputs)
        writer.flush()
        assert not out.exists() and rows(sidecar) == [9, 3, 0, 1, 2, 4, 5, 6, 7, 8]
        writer.finish()
    assert not sidecar.exists()
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 3  # 10 rows, 4 a group
    table = parquet.read()
    names = ["row", "status", "cost_usd", "error", "label", "score", "ok", "mixed", "tags", "outputs.status"]
    assert table.schema.names == names
    assert {name: str(table.schema.field(name).type) for name in ("row", "label", "score", "ok", "mixed")} == {
        "row": "int64",
        "label": "string",
        "score": "double",
        "ok": "bool",
        "mixed": "string",
    }
    data = table.to_pydict()
    assert data["row"] == list(range(10))
    assert data["label"][3] is None and data["label"][4] == "L4"
    assert data["score"][:3] == [0.5, 1.0, 2.5]
    assert data["mixed"][2] == "2" and data["mixed"][6] == '"text"' and data["mixed"][3] is None
    assert data["tags"][0] == '["a",0]' and data["outputs.status"][0] == "clash"
    assert data["cost_usd"][5] == pytest.approx(0.005)


def test_a_resumed_parquet_batch_rebuilds_its_sidecar(tmp_path: Path, store: SqliteBatchStore) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out.parquet"
    sidecar = tmp_path / "out.parquet.partial.jsonl"
    sidecar.write_bytes(result_line(result(0))[:5])  # torn by a crash
    store.save_row(BATCH, result(0))
    store.save_row(BATCH, result(1))
    with ResultsWriter(out, store, BATCH) as writer:
        assert rows(sidecar) == [0, 1]
        finished(store, writer, 2)
        writer.finish()
    assert pq.read_table(out).to_pydict()["row"] == [0, 1, 2]
    assert not sidecar.exists()


def test_parquet_with_no_rows_has_the_fixed_columns(tmp_path: Path, store: SqliteBatchStore) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out.parquet"
    with ResultsWriter(out, store, BATCH) as writer:
        writer.finish()
    assert pq.read_table(out).schema.names == ["row", "status", "cost_usd", "error"]


def test_finish_twice_and_exit_after_finish_change_nothing(tmp_path: Path, store: SqliteBatchStore) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, store, BATCH) as writer:
        finished(store, writer, 0)
        writer.finish()
        before = out.read_bytes()
        writer.finish()
        writer.write(result(1))
    assert out.read_bytes() == before and os.path.getsize(out) > 0


def test_a_parquet_output_without_pyarrow_is_refused_before_any_row_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from modelyard.batch.results import ResultsError, require_writer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(ResultsError, match=r"pip install 'modelyard\[parquet\]'"):
        require_writer("/tmp/out.parquet")
    require_writer("/tmp/out.jsonl")  # JSON lines need nothing more
