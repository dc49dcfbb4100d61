"""The batch store on SQLite and PostgreSQL: what a batch must not lose, first write wins, group commit.

Every test runs on both stores (the real servers on loopback; PostgreSQL gets a schema of its own per test,
dropped after). Processes writing one batch at once and a process killed with SIGKILL mid-loop run as real
subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch.model import BatchHeader, RowResult, StepTotals, Submission
from modelyard.batch.store import BatchStore, iter_results, open_batch_store
from modelyard.batch.store_pg import PostgresBatchStore
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.workflows.records import StepRecord, StepState
from tests.unit.batch.conftest import PG, ROOT, location


@pytest.fixture
def store(where: str) -> Iterator[BatchStore]:
    opened = open_batch_store(where)
    try:
        yield opened
    finally:
        opened.close()


def header(batch_id: str = "b1", rows: int = 3, created_at: float | None = None) -> BatchHeader:
    extra = {} if created_at is None else {"created_at": created_at}
    return BatchHeader(batch_id, "triage", "wf.yaml", "steps: {}", "in.jsonl", "jsonl", "fp", rows, {"q": "col"},
                       {"concurrency": 4}, **extra)  # fmt: skip


def result(row: int, status: str = "succeeded", cost: float = 0.01, **extra: Any) -> RowResult:
    steps = {"classify": StepTotals(1, cost, 10, 2, 0)}
    return RowResult(row, status, {"label": f"l{row}", "text": "é\u0000\ud800"}, cost, cost, steps=steps, **extra)


def step(key: str, cost: float = 0.002, output: Any = "x") -> StepRecord:
    return StepRecord(key, key.split("[")[0], "model", StepState.SUCCEEDED, output=output, cost_usd=cost)


def test_open_batch_store_picks_the_backend(where: str) -> None:
    opened = open_batch_store(where)
    try:
        expected = PostgresBatchStore if where.startswith("postgresql://") else SqliteBatchStore
        assert type(opened) is expected
    finally:
        opened.close()


def test_header_state_and_submissions_round_trip(store: BatchStore) -> None:
    store.create_batch(header("old", created_at=1.0))
    store.create_batch(header("b1"))
    with pytest.raises(ValueError, match="already exists"):
        store.create_batch(header("b1"))
    got = store.header("b1")
    assert got == header("b1", created_at=got.created_at if got else 0)
    assert got is not None and got.mapping == {"q": "col"} and got.options == {"concurrency": 4}
    assert store.header("nope") is None
    assert store.batch_ids() == ["b1", "old"] and store.batch_ids(1) == ["b1"]

    assert store.state("b1") is None
    store.set_state("b1", "running", {"pid": 1, "host": "h"})
    store.set_state("b1", "finished", {"rows": 3})
    assert store.state("b1") == ("finished", {"rows": 3})

    job = Submission("b1", "n1", "gpt@oai", "openai", [0, 1, 2])
    store.save_submission(job)
    job.job_id, job.state = "batch_123", "submitted"
    store.save_submission(job)
    store.save_submission(Submission("b1", "n2", "c@ant", "anthropic", [3], created_at=job.created_at + 1))
    jobs = store.submissions("b1")
    assert [(j.nonce, j.job_id, j.state, j.rows) for j in jobs] == [
        ("n1", "batch_123", "submitted", [0, 1, 2]),
        ("n2", None, "pending", [3]),
    ]
    assert store.submissions("old") == []


def test_a_row_result_round_trips_and_the_first_write_wins(store: BatchStore) -> None:
    first = result(4, worker="h:1")
    assert store.save_row("b1", first) is True
    assert store.save_row("b1", result(4, "failed", cost=9.0, error="late duplicate")) is False
    store.flush()
    assert store.save_row("b1", result(4, "failed", cost=9.0)) is False  # committed now: still the first
    (got,) = store.results("b1")
    assert got == first and got.outputs["text"] == "é\u0000\ud800" and got.steps["classify"].prompt_tokens == 10
    assert store.done_rows("b1") == {4: "succeeded"}
    assert store.save_row("other", result(4)) is True  # the key is (batch, row)


def test_replace_row_overwrites_a_retried_row(store: BatchStore) -> None:
    store.save_row("b1", result(1, "failed", cost=0.5, error="boom"))
    store.save_row("b1", result(2, "succeeded", cost=0.25))
    store.replace_row("b1", result(1, "succeeded", cost=0.75))
    assert store.done_rows("b1") == {1: "succeeded", 2: "succeeded"}
    assert store.results("b1")[0].error is None
    totals = store.totals("b1")
    assert totals.by_status == {"succeeded": 2} and totals.cost_usd == pytest.approx(1.0) and totals.done == 2


def test_steps_are_kept_per_row_until_its_result_and_a_duplicate_step_is_ignored(store: BatchStore) -> None:
    store.save_step("b1", 0, step("a", 0.1, "first"))
    store.save_step("b1", 0, step("a", 0.9, "second"))  # a duplicate: ignored
    store.save_step("b1", 0, step("fan[1]", 0.2))
    store.save_step("b1", 1, step("a", 0.4))
    store.save_step("b1", 2, step("a", 0.8))
    store.save_step("b2", 0, step("a", 5.0))
    steps = store.steps("b1")
    assert set(steps) == {0, 1, 2} and set(steps[0]) == {"a", "fan[1]"}
    assert steps[0]["a"]["output"] == "first" and StepRecord.from_dict(steps[0]["a"]).cost_usd == 0.1
    assert store.spent_in_unfinished("b1") == pytest.approx(0.1 + 0.2 + 0.4 + 0.8)

    store.save_row("b1", result(0))  # finished: its steps are no longer anyone's to reuse
    store.save_row("b1", result(2, "failed"))  # retryable: its steps stay stored but it has a result
    assert set(store.steps("b1")) == {1}
    # named rows: finished or not, what each still has (row 0 succeeded: dropped; row 2 failed: kept for a retry)
    assert set(store.steps("b1", rows=[0, 1, 2, 7])) == {1, 2}
    assert StepRecord.from_dict(store.steps("b1", rows=[2])[2]["a"]).cost_usd == 0.8
    assert store.steps("b1", rows=[]) == {}
    assert store.spent_in_unfinished("b1") == pytest.approx(0.4)
    assert set(store.steps("b2")) == {0}
    # a retried failed row that now succeeds drops its steps: nothing left to resume
    store.replace_row("b1", result(2))
    store.replace_row("b1", result(2, "failed"))
    assert store.steps("b1", rows=[2]) == {}


def test_steps_for_many_rows_are_asked_in_chunks(store: BatchStore) -> None:
    for row in range(1_200):
        store.save_step("b1", row, step("a", 0.001))
    store.flush()
    wanted = list(range(0, 1_200, 2))
    assert sorted(store.steps("b1", rows=wanted)) == wanted


def test_results_page_in_row_order(store: BatchStore) -> None:
    rows = [9, 3, 0, 7, 1, 8, 2, 5, 4, 6, 11]

    async def save() -> None:
        for row in rows:
            store.save_row("b1", result(row))
            await asyncio.sleep(0)

    asyncio.run(save())
    assert [r.row for r in store.results("b1", after=-1, limit=4)] == [0, 1, 2, 3]
    assert [r.row for r in store.results("b1", after=3, limit=4)] == [4, 5, 6, 7]
    assert [r.row for r in store.results("b1", after=7, limit=4)] == [8, 9, 11]
    assert store.results("b1", after=11) == []
    assert [r.row for r in iter_results(store, "b1", page=3)] == sorted(rows)


def test_writes_inside_a_loop_commit_at_the_end_of_the_turn(where: str, store: BatchStore) -> None:
    seen: list[dict[int, str]] = []

    async def main() -> None:
        store.save_row("b1", result(0))
        store.save_step("b1", 1, step("a"))
        other = open_batch_store(where)  # another connection sees only what is committed
        try:
            seen.append(other.done_rows("b1"))
            await asyncio.sleep(0)
            seen.append(other.done_rows("b1"))
            assert set(other.steps("b1")) == {1}
        finally:
            other.close()

    asyncio.run(main())
    assert seen == [{}, {0: "succeeded"}]


def test_done_rows_of_100k_rows_takes_under_a_second(where: str, store: BatchStore) -> None:
    bulk_rows(store, "big", 100_000)
    started = time.perf_counter()
    done = store.done_rows("big")
    elapsed = time.perf_counter() - started
    assert len(done) == 100_000 and done[99_999] == "succeeded" and done[1] == "failed"
    print(f"done_rows(100k) on {type(store).__name__}: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0


def bulk_rows(store: BatchStore, batch_id: str, count: int) -> None:
    """`count` stored rows, inserted in bulk (this test measures the read, not the writes)."""
    data = RowResult(0, "succeeded", {"label": "x"}).to_json()
    import json

    text = json.dumps(data, separators=(",", ":"))
    values = [(batch_id, i, "failed" if i % 1000 == 1 else "succeeded", 0.001, text) for i in range(count)]
    if isinstance(store, SqliteBatchStore):
        with store._lock:
            store._db.executemany("INSERT INTO batch_rows VALUES (?, ?, ?, ?, ?)", values)
        return
    assert isinstance(store, PostgresBatchStore)
    insert = "INSERT INTO modelyard_batch_rows VALUES (%s, %s, %s, %s, %s)"
    store._writer.call(lambda conn: conn.cursor().executemany(insert, values))


# --------------------------------------------------------------------------- real processes

WRITER = """
import asyncio, sys
from modelyard.batch.model import RowResult
from modelyard.batch.store import open_batch_store
from modelyard.workflows.records import StepRecord, StepState
from tests.unit.batch.conftest import PG, ROOT, location

where, name, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    store = open_batch_store(where)
    for row in range(rows):
        key = f"s{row % 3}"
        store.save_step("b1", row, StepRecord(key, key, "model", StepState.SUCCEEDED, cost_usd=0.001))
        if row % 2 == 0:
            store.save_row("b1", RowResult(row, "succeeded", {"by": name}, worker=name))
        if row % 25 == 0:
            await asyncio.sleep(0)
    store.close()

asyncio.run(main())
"""


def test_two_processes_writing_one_batch_lose_nothing(where: str) -> None:
    rows = 1_500
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, where, name, str(rows)], cwd=ROOT, stderr=subprocess.PIPE)
        for name in ("w1", "w2")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = open_batch_store(where)
    try:
        done = store.done_rows("b1")
        assert sorted(done) == list(range(0, rows, 2))
        workers = {r.worker for r in iter_results(store, "b1")}
        assert workers <= {"w1", "w2"} and all(r.outputs["by"] == r.worker for r in iter_results(store, "b1"))
        steps = store.steps("b1")
        assert sorted(steps) == list(range(1, rows, 2))  # every unfinished row's step, once
        assert all(list(s) == [f"s{row % 3}"] for row, s in steps.items())
    finally:
        store.close()


KILLED = """
import asyncio, sys
from modelyard.batch.model import RowResult
from modelyard.batch.store import open_batch_store

store = open_batch_store(sys.argv[1])

async def main():
    turn = 0
    while True:
        for i in range(10):
            store.save_row("b1", RowResult(turn * 10 + i, "succeeded"))
        await asyncio.sleep(0)  # the end of the turn: its flush runs before this task resumes
        print(f"turn {turn}", flush=True)
        turn += 1
        await asyncio.sleep(0.002)

asyncio.run(main())
"""


def test_a_process_killed_mid_loop_keeps_every_turn_before_the_last(where: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, where], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:
            if line.startswith("turn 20"):
                break
        assert line.startswith("turn 20"), proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = open_batch_store(where)
    try:
        done = store.done_rows("b1")
    finally:
        store.close()
    assert set(range(210)) <= set(done)  # turns 0..20 were committed before "turn 20" was printed
    count = len(done)
    assert count % 10 == 0 and sorted(done) == list(range(count))  # whole turns only


def test_a_failed_flush_in_the_loop_is_raised_by_the_next_call(tmp_path: Path) -> None:
    store = SqliteBatchStore(tmp_path / "runs.db")

    async def main() -> None:
        store.save_row("b1", result(0))
        store._db.execute("DROP TABLE batch_rows")  # the loop's flush will fail
        await asyncio.sleep(0)

    try:
        asyncio.run(main())
        with pytest.raises(RuntimeError, match="earlier commit failed"):
            store.flush()
    finally:
        store._pending = []
        store.close()


def test_bad_postgres_locations_fail_clearly() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        open_batch_store(f"{PG}?schema=bad;drop")
    from modelyard.workflows.checkpoint_pg import StoreWriteError

    with pytest.raises(StoreWriteError, match="cannot connect to the store") as raised:
        open_batch_store("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2")
    assert "postgresql://u:***@127.0.0.1:1/x" in str(raised.value) and "secret" not in str(raised.value)


@pytest.mark.postgres
def test_postgres_reconnects_once_and_resends_the_pending_writes(tmp_path: Path) -> None:
    where = location("postgres", tmp_path)
    store = PostgresBatchStore(where)
    killer = PostgresBatchStore(where)
    try:

        async def main() -> None:
            store.save_row("b1", result(0))
            store.save_step("b1", 1, step("a"))
            pid = store._writer.call(lambda conn: conn.info.backend_pid)
            killer._writer.fetch("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0)  # the flush finds the connection dropped, reconnects, sends both

        asyncio.run(main())
        assert killer.done_rows("b1") == {0: "succeeded"} and set(killer.steps("b1")) == {1}
        assert store.header("b1") is None  # and the store goes on working
    finally:
        killer.drop()
        killer.close()
        store.close()
