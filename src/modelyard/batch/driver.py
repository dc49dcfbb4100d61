"""The batch driver: what a batch decides once, around an engine that only runs rows.

It reads the inputs lazily (a row is read when the engine has room for it, so a million rows stream through),
skips rows that already have a result (a resumed batch runs only what is unfinished; `--retry-failed` also
re-runs the retryable ones), hands each unfinished row its checkpointed steps (reused, not paid again),
keeps one money budget (`budget.py`), writes each result as it comes (`results.ResultsWriter`), feeds the
progress bar and the summary, and records the batch's lifecycle in the store: `running` with this process's
session marker, then `finished` or `stopped` (budget, Ctrl-C, or rows left) with the session's report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from modelyard.batch.budget import BatchBudget, Estimator, check_concurrency
from modelyard.batch.engine import RowEngine
from modelyard.batch.model import RETRYABLE_STATES, BatchHeader, BatchOptions, RowResult, RowSet, RowTask
from modelyard.batch.progress import NoProgress, ProgressSink
from modelyard.batch.store import HEARTBEAT_S, BatchBusy, BatchStore
from modelyard.batch.summary import BatchReport, BatchSummary
from modelyard.workflows.api import Workflow
from modelyard.workflows.checkpoint import session_marker

#: (row index, the row's workflow inputs), in file order.
RowSource = Callable[[], Iterable[tuple[int, dict[str, Any]]]]
#: Step checkpoints of retried rows are loaded this many rows per query.
_STEPS_CHUNK = 1_000


class Writer(Protocol):
    def write(self, result: RowResult) -> None: ...

    def finish(self) -> None: ...


class _NoWriter:
    def write(self, result: RowResult) -> None:
        pass

    def finish(self) -> None:
        pass


class BatchDriver:
    """Runs one session of a batch: `await driver.run()` returns its report; `interrupt()` (Ctrl-C) ends it
    after cancelling the rows in flight (they stay unfinished), with everything finished saved."""

    def __init__(
        self,
        workflow: Workflow,
        header: BatchHeader,
        store: BatchStore,
        engine: RowEngine,
        options: BatchOptions,
        *,
        estimator: Estimator | None = None,
        progress: ProgressSink | None = None,
        rows: RowSource | None = None,
        writer: Callable[[], AbstractContextManager[Writer]] | None = None,
        planned_row_cost: float | None = None,
        force: bool = False,
    ) -> None:
        self.workflow = workflow
        self.header = header
        self.store = store
        self.engine = engine
        self.options = options
        self.concurrency = check_concurrency(options.concurrency)
        self.budget = BatchBudget(options.max_cost_usd, 0.0, estimator)
        self.progress: ProgressSink = progress or NoProgress()
        self.rows = rows or self._file_rows
        self.writer = writer or self._file_writer
        self.planned_row_cost = planned_row_cost
        #: Run even when another live driver holds the batch (`--force`).
        self.force = force
        self.summary = BatchSummary()
        #: Rows handed to the engine this session (the feed's laziness is observable).
        self.fed = 0
        self._consumer: asyncio.Task[None] | None = None
        self._interrupted = False
        #: Rows whose result this session has taken (an engine may yield a row before the feed reaches it).
        self._settled = RowSet()

    # ------------------------------------------------------------------ the session

    async def run(self) -> BatchReport:
        started = time.perf_counter()
        batch_id = self.header.batch_id
        marker = {**session_marker(), "started_at": time.time(), "heartbeat_at": time.time()}
        held = self.store.claim(batch_id, marker, force=self.force)
        if held is not None:
            holder = held[1]
            raise BatchBusy(
                f"batch {batch_id} still looks alive (pid {holder.get('pid')} on {holder.get('host')}); "
                "use --force to resume it anyway (a second driver pays its rows twice)"
            )
        heartbeat = asyncio.ensure_future(self._heartbeat(marker))
        try:
            return await self._session(started)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, marker: dict[str, Any]) -> None:
        """Refresh the running marker: a driver on another host takes a silent one for a dead driver's."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.store.set_state(self.header.batch_id, "running", {**marker, "heartbeat_at": time.time()})

    async def _session(self, started: float) -> BatchReport:
        batch_id = self.header.batch_id
        done = self.store.done_rows(batch_id)
        retry = (
            {row for row, state in done.items() if state in RETRYABLE_STATES} if self.options.retry_failed else set()
        )
        self.budget.spent = self.store.totals(batch_id).cost_usd + self.store.spent_in_unfinished(batch_id)
        prior = self._prior_steps(retry)
        done_before = len(done) - len(retry)
        failed_before = sum(1 for row, state in done.items() if state != "succeeded" and row not in retry)
        self.progress.start(self.header.rows, done_before, failed_before, self.planned_row_cost)
        try:
            self._consumer = asyncio.ensure_future(self._consume(done, retry, prior))
            try:
                await self._consumer
            except asyncio.CancelledError:
                if not self._interrupted:
                    raise
        finally:
            self.progress.close()
            report = self._end(done_before, time.perf_counter() - started)
        return report

    def interrupt(self) -> None:
        """Ctrl-C: cancel the rows in flight and end the session (what finished is kept)."""
        self._interrupted = True
        if self._consumer is not None:
            self._consumer.cancel()

    async def _consume(self, done: dict[int, str], retry: set[int], prior: dict[int, dict[str, Any]]) -> None:
        batch_id = self.header.batch_id
        with self.writer() as writer:
            try:
                feed = self._feed(done, retry, prior)
                results = self.engine.run(feed, self.concurrency)
                try:
                    async for result in results:
                        if not self._settled.add(result.row):
                            continue  # an engine that hands a row back twice (a resumed provider job): once
                        if result.row in retry:
                            self.store.replace_row(batch_id, result)
                        writer.write(result)
                        self.budget.settle(result.row, result.session_cost_usd, observed=result.status != "invalid")
                        self.summary.add(result)
                        self.progress.row(result, self.budget.view())
                finally:
                    close = getattr(results, "aclose", None)
                    if close is not None:
                        await close()  # the engine cancels the rows still in flight
            finally:
                self.store.flush()
                writer.finish()

    async def _feed(
        self, done: dict[int, str], retry: set[int], prior: dict[int, dict[str, Any]]
    ) -> AsyncIterator[RowTask]:
        """Rows the engine pulls, one at a time: skip finished ones, reserve each row's budget, stop at it."""
        for index, inputs in self.rows():
            if (index in done and index not in retry) or index in self._settled:
                continue
            if not await self.budget.admit(index, inputs):
                return
            self.fed += 1
            yield RowTask(index, inputs, prior.pop(index, None))

    def _prior_steps(self, retry: set[int]) -> dict[int, dict[str, Any]]:
        """Checkpointed steps of unfinished rows (at most the rows in flight when a session died) and of the
        rows `--retry-failed` runs again; loaded once."""
        batch_id = self.header.batch_id
        prior: dict[int, dict[str, Any]] = dict(self.store.steps(batch_id))
        ordered = sorted(retry)
        for start in range(0, len(ordered), _STEPS_CHUNK):
            prior.update(self.store.steps(batch_id, ordered[start : start + _STEPS_CHUNK]))
        return prior

    def _end(self, done_before: int, wall_s: float) -> BatchReport:
        """Flush, count, and record how the session ended (the report is kept with the state)."""
        batch_id = self.header.batch_id
        self.store.flush()
        report = BatchReport(
            batch_id=batch_id,
            workflow=self.header.workflow,
            rows=self.header.rows,
            done_before=done_before,
            totals=self.store.totals(batch_id),
            summary=self.summary,
            wall_s=wall_s,
            out=self.options.out,
            limit_usd=self.budget.limit,
            spent_usd=self.budget.spent,
            stopped_by_budget=self.budget.stopped,
            interrupted=self._interrupted,
        )
        if report.left == 0:
            state, reason = "finished", "done"
        else:
            state = "stopped"
            reason = "budget" if report.stopped_by_budget else "interrupted" if report.interrupted else "rows left"
        self.store.set_state(batch_id, state, {"reason": reason, "ended_at": time.time(), "report": report.to_json()})
        self.store.flush()
        return report

    # ------------------------------------------------------------------ defaults: the header's files

    def _file_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        from modelyard.batch.rows import InputsFile, read_rows

        header = self.header
        inputs = InputsFile(Path(header.inputs_path), header.inputs_format, header.inputs_fingerprint, header.rows, ())
        return read_rows(inputs, self.workflow.spec, header.mapping)

    def _file_writer(self) -> AbstractContextManager[Writer]:
        if not self.options.out:
            return nullcontext(_NoWriter())
        from modelyard.batch.results import ResultsWriter

        return ResultsWriter(Path(self.options.out), self.store, self.header.batch_id, ordered=self.options.ordered)
