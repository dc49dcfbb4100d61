"""The batch driver over the local engine, the scripted backend and the SQLite batch store: lazy feed, skip what is
finished, reuse checkpointed steps, retry-failed, the budget at 30% of the projected cost, Ctrl-C, the summary."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch.budget import planner_estimator
from modelyard.batch.driver import BatchDriver
from modelyard.batch.engine import LocalEngine
from modelyard.batch.model import BatchHeader, BatchOptions, RowResult
from modelyard.batch.runner import RowRunner
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.batch.summary import BatchSummary, error_group
from modelyard.workflows.api import Workflow
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.scripted import ScriptedBackend

TWO_STEPS = """
schema: modelyard.workflow/v1
name: triage
inputs: {ticket: string}
steps:
  classify: {model: fast, prompt: "Classify {{ inputs.ticket }}", max_tokens: 30}
  reply: {model: smart, needs: [classify], prompt: "Reply to {{ classify }}", max_tokens: 60}
outputs: {label: "{{ classify }}", reply: "{{ reply }}"}
"""
WORKFLOW = Workflow.from_string(textwrap.dedent(TWO_STEPS), "triage.yaml")


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `check()` holds (fails the test past `timeout_s`)."""
    start = time.perf_counter()
    while not check():
        assert time.perf_counter() - start < timeout_s, "not within the time allowed"
        await asyncio.sleep(0.002)


class ListWriter:
    def __init__(self) -> None:
        self.rows: list[int] = []
        self.finished = False

    def write(self, result: RowResult) -> None:
        self.rows.append(result.row)

    def finish(self) -> None:
        self.finished = True


class Batch:
    """One batch in a SQLite store, and drivers for its sessions."""

    def __init__(self, tmp_path: Path, n: int, batch_id: str = "b-test") -> None:
        self.store = SqliteBatchStore(tmp_path / "batch.db")
        self.n = n
        self.read = 0
        self.header = BatchHeader(batch_id, "triage", "triage.yaml", TWO_STEPS, "rows.jsonl", "jsonl", "f", n, {}, {})
        self.store.create_batch(self.header)
        self.writer = ListWriter()

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for row in range(self.n):
            self.read += 1
            yield row, {"ticket": f"ticket number {row} " + "word " * (row % 7)}

    @contextmanager
    def writing(self) -> Iterator[ListWriter]:
        yield self.writer

    def driver(self, backend: ScriptedBackend, **options: Any) -> BatchDriver:
        fast = EngineOptions(backoff_s=0.001, backoff_max_s=0.01)
        runner = RowRunner(WORKFLOW, backend, self.store, self.header.batch_id, options=fast)
        estimate = options.pop("estimate", False)
        estimator = planner_estimator(WORKFLOW.spec, backend, {"ticket": "x"}) if estimate else None
        return BatchDriver(
            WORKFLOW,
            self.header,
            self.store,
            LocalEngine(runner),
            BatchOptions(**options),
            estimator=estimator,
            rows=self.rows,
            writer=self.writing,
        )


async def test_every_row_runs_once_and_the_batch_is_finished(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 40)
    report = await batch.driver(ScriptedBackend(), concurrency=8).run()
    assert sorted(batch.writer.rows) == list(range(40)) and batch.writer.finished
    assert report.totals.by_status == {"succeeded": 40} and report.left == 0 and report.all_succeeded
    assert report.summary.steps["classify"].calls == 40 and report.summary.steps["reply"].calls == 40
    assert report.totals.cost_usd == pytest.approx(report.summary.cost_usd) and report.spent_usd > 0
    state = batch.store.state("b-test")
    assert state is not None and state[0] == "finished"


async def test_the_feed_reads_rows_only_as_the_engine_has_room(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 10_000)
    driver = batch.driver(ScriptedBackend(delay_s=0.01), concurrency=4)
    task = asyncio.ensure_future(driver.run())
    await until(lambda: driver.summary.rows >= 20)
    assert batch.read <= driver.summary.rows + 4 + 2  # done + in flight + one pending pull (+ the one being read)
    driver.interrupt()
    report = await task
    assert report.interrupted and 0 < report.totals.done < 10_000
    state = batch.store.state("b-test")
    assert state is not None and state[0] == "stopped" and state[1]["reason"] == "interrupted"


async def test_a_second_session_runs_only_unfinished_rows_reusing_their_checkpointed_steps(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 30)
    # session 1 is interrupted while the `reply` steps hang: some rows finished, others have `classify` saved
    slow = ScriptedBackend(delays={"reply": 0.0})
    driver = batch.driver(slow, concurrency=5)
    task = asyncio.ensure_future(driver.run())
    await until(lambda: driver.summary.rows >= 10)
    slow.delays["reply"] = 30.0
    await until(lambda: slow.in_flight >= 5)
    driver.interrupt()
    first = await task
    finished = set(batch.store.done_rows("b-test"))
    prior = batch.store.steps("b-test")
    assert prior and all(set(steps) == {"classify"} for steps in prior.values())

    batch.writer = ListWriter()
    backend = ScriptedBackend()
    second = await batch.driver(backend, concurrency=5).run()
    assert sorted(batch.writer.rows) == sorted(set(range(30)) - finished)  # no finished row again
    calls = [(c.metadata.get("step"), c.messages[-1]["content"]) for c in backend.calls]
    assert sum(step == "classify" for step, _ in calls) == 30 - len(finished) - len(prior)  # reused, not called
    assert second.left == 0 and second.done_before == first.totals.done
    assert second.summary.reused == len(prior)


async def test_retry_failed_reruns_only_the_retryable_rows(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 12)
    failing = ScriptedBackend(answers={"reply": ["ok", RuntimeError("upstream 503 for req-8f3a2b1c9d")]})
    # every reply after the first fails: the first row (whichever) succeeds, the rest are partial
    first = await batch.driver(failing, concurrency=1).run()
    assert first.totals.by_status.get("partial", 0) == 11 and not first.all_succeeded
    assert first.summary.top_failures()[0][1].count == 11  # one group despite different ids
    batch.writer = ListWriter()
    again = await batch.driver(ScriptedBackend(), concurrency=3).run()
    assert batch.writer.rows == [] and again.totals.by_status.get("partial") == 11  # without the flag: nothing
    retried = await batch.driver(ScriptedBackend(), concurrency=3, retry_failed=True).run()
    assert len(batch.writer.rows) == 11 and retried.totals.by_status == {"succeeded": 12}


async def test_the_budget_at_30_percent_of_the_projected_cost_holds(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 200)
    backend = ScriptedBackend(delay_s=0.002)
    estimator = planner_estimator(WORKFLOW.spec, backend, {"ticket": "x"})
    assert estimator is not None
    projected = sum(estimator(inputs) or 0 for _, inputs in batch.rows())
    batch.read = 0
    limit = projected * 0.3
    report = await batch.driver(backend, concurrency=16, max_cost_usd=limit, estimate=True).run()
    one_row = max(estimator(inputs) or 0 for _, inputs in batch.rows())
    assert report.stopped_by_budget and 50 <= report.totals.done <= 70  # ~30% of 200 similar rows
    assert report.spent_usd <= limit + one_row
    assert report.left == 200 - report.totals.done
    assert "--resume b-test --max-cost-usd" in report.resume_command()
    state = batch.store.state("b-test")
    assert state is not None and state[1]["reason"] == "budget"


async def test_without_an_estimate_the_budget_probes_with_one_row(tmp_path: Path) -> None:
    batch = Batch(tmp_path, 100)
    backend = ScriptedBackend(delay_s=0.002)
    report = await batch.driver(backend, concurrency=16, max_cost_usd=0.002).run()
    per_row = report.totals.cost_usd / max(1, report.totals.done)
    assert report.stopped_by_budget and report.totals.done < 100
    assert report.spent_usd <= 0.002 + per_row * 1.01


def test_failures_group_by_error_with_ids_and_numbers_normalised() -> None:
    assert error_group("row 12 timed out after 30.5s") == error_group("row 7 timed out after 2s")
    assert error_group("upstream 503 for req-8f3a2b1c9d") == error_group("upstream 502 for req-77aa00bb11")
    assert error_group("schema: missing label") != error_group("schema: missing confidence")
    summary = BatchSummary()
    for row in range(25):
        error = f"timeout after {row}s" if row % 5 else f"bad json at char {row}"
        summary.add(RowResult(row, "failed", error=error))
    summary.add(RowResult(99, "succeeded"))
    (_, group), (_, other) = summary.top_failures()
    assert (group.count, other.count) == (20, 5) and group.examples == [1, 2, 3]
    assert summary.by_status == {"failed": 25, "succeeded": 1}
