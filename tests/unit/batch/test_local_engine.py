"""The local engine: bounded in-flight rows, lazy pulls, a row's exception fails only that row, cancel."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelyard.batch.engine import LocalEngine
from modelyard.batch.model import RowResult, RowTask
from modelyard.batch.runner import RowRunner
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.workflows.api import Workflow
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.scripted import ScriptedBackend

ONE_STEP = """
schema: modelyard.workflow/v1
name: one
inputs: {ticket: string}
steps:
  classify: {model: fast, prompt: "Classify {{ inputs.ticket }}"}
outputs: {label: "{{ classify }}"}
"""


def make_runner(backend: ScriptedBackend, tmp_path: Path) -> RowRunner:
    store = SqliteBatchStore(tmp_path / "b.db")
    workflow = Workflow.from_string(textwrap.dedent(ONE_STEP), "one.yaml")
    return RowRunner(workflow, backend, store, "b-1", options=EngineOptions(backoff_s=0.001, backoff_max_s=0.01))


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `check()` holds (fails the test past `timeout_s`)."""
    start = time.perf_counter()
    while not check():
        assert time.perf_counter() - start < timeout_s, "not within the time allowed"
        await asyncio.sleep(0.002)


class CountingFeed:
    """An async feed of `n` rows that counts how many were pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    async def __call__(self) -> AsyncIterator[RowTask]:
        for row in range(self.n):
            self.pulled += 1
            yield RowTask(row, {"ticket": f"t{row}"})


async def collect(engine: LocalEngine, feed: AsyncIterator[RowTask], concurrency: int) -> list[RowResult]:
    return [result async for result in engine.run(feed, concurrency)]


async def test_never_more_than_concurrency_rows_in_flight_and_every_row_once(tmp_path: Path) -> None:
    backend = ScriptedBackend(delay_s=0.01)
    engine = LocalEngine(make_runner(backend, tmp_path))
    results = await collect(engine, CountingFeed(60)(), 7)
    assert sorted(r.row for r in results) == list(range(60))
    assert all(r.status == "succeeded" for r in results)
    assert backend.peak_in_flight == 7  # the bound is reached, never passed


async def test_the_feed_is_pulled_only_when_there_is_room(tmp_path: Path) -> None:
    backend = ScriptedBackend(delay_s=0.02)
    engine = LocalEngine(make_runner(backend, tmp_path))
    feed = CountingFeed(1_000)
    seen = 0
    async for _ in engine.run(feed(), 4):
        seen += 1
        # pulled = finished + in flight (<= 4) + at most one pull waiting for room
        assert feed.pulled <= seen + 4 + 1
        if seen == 10:
            break
    assert feed.pulled <= 15


async def test_a_row_that_raises_is_a_failed_row_and_the_others_finish(tmp_path: Path) -> None:
    runner = make_runner(ScriptedBackend(), tmp_path)
    real = runner._run  # the row's own work: the runner's guard turns its exception into a failed row

    async def buggy(task: RowTask) -> RowResult:
        if task.row == 3:
            raise KeyError("a bug in row 3")
        return await real(task)

    runner._run = buggy  # type: ignore[method-assign]
    results = {r.row: r for r in await collect(LocalEngine(runner), CountingFeed(6)(), 2)}
    assert sorted(results) == list(range(6))
    assert results[3].status == "failed" and "KeyError" in (results[3].error or "")
    assert all(results[r].status == "succeeded" for r in (0, 1, 2, 4, 5))
    runner.store.flush()
    assert runner.store.done_rows("b-1")[3] == "failed"  # saved: a resume does not run it again


async def test_a_feed_that_waits_does_not_block_the_results_it_waits_for(tmp_path: Path) -> None:
    """The budget's probe: the feed waits for the first row's result before handing out the second."""
    engine = LocalEngine(make_runner(ScriptedBackend(delay_s=0.005), tmp_path))
    first_done = asyncio.Event()

    async def feed() -> AsyncIterator[RowTask]:
        yield RowTask(0, {"ticket": "a"})
        await first_done.wait()
        yield RowTask(1, {"ticket": "b"})

    rows = []
    async for result in engine.run(feed(), 8):
        rows.append(result.row)
        first_done.set()
    assert rows == [0, 1]


async def test_cancel_leaves_running_rows_unfinished(tmp_path: Path) -> None:
    backend = ScriptedBackend(delay_s=5.0)
    runner = make_runner(backend, tmp_path)

    async def consume() -> None:
        async for _ in LocalEngine(runner).run(CountingFeed(10)(), 3):
            pass

    task = asyncio.ensure_future(consume())
    await until(lambda: backend.in_flight >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.in_flight == 0
    runner.store.flush()
    assert runner.store.done_rows("b-1") == {}


async def test_concurrency_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await collect(LocalEngine(make_runner(ScriptedBackend(), tmp_path)), CountingFeed(1)(), 0)
