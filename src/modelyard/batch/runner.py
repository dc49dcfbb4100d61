"""One row of a batch: one run of the workflow with the row's inputs, checkpointed into the batch store.

The same `Engine` as `modelyard run` (same scheduling, scoping, retries, repair and budgets per run), with
the row's checkpoint as its run store: a row that a crash interrupted resumes with its finished steps reused,
never called or paid again. Every model call asks the gateway's admission queue for the `batch` class.
"""

from __future__ import annotations

import os
import socket
import time

from modelyard.batch.model import RowResult, RowTask, StepTotals
from modelyard.batch.store import BatchStore, RowCheckpoint, prior_run
from modelyard.workflows.api import Workflow
from modelyard.workflows.backend import ModelBackend
from modelyard.workflows.engine import Engine, EngineOptions
from modelyard.workflows.inputs import InputError, resolve_inputs
from modelyard.workflows.records import RunResult, RunStatus, StepState

_ROW_STATUS = {
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.PARTIAL: "partial",
    RunStatus.FAILED: "failed",
    RunStatus.STOPPED: "stopped",
    RunStatus.INTERRUPTED: "failed",
    RunStatus.RUNNING: "failed",
}
#: The longest error text a row keeps (the summary groups rows by it).
MAX_ERROR_CHARS = 500


class RowRunner:
    """Runs rows of one batch against one backend and one store; safe to share between concurrent rows."""

    def __init__(
        self,
        workflow: Workflow,
        backend: ModelBackend,
        store: BatchStore,
        batch_id: str,
        *,
        priority: str | None = "batch",
        options: EngineOptions | None = None,
    ) -> None:
        self.workflow = workflow
        self.backend = backend
        self.store = store
        self.batch_id = batch_id
        base = options or EngineOptions()
        self.options = EngineOptions(backoff_s=base.backoff_s, backoff_max_s=base.backoff_max_s, priority=priority)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self, task: RowTask) -> RowResult:
        """Run one row, save its result (first write wins) and return it. An exception (a bug, not a model
        failure: those are a failed run) fails only this row: one row must not end a million-row batch."""
        try:
            return await self._run(task)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".replace("\n", "; ")[:MAX_ERROR_CHARS]
            result = RowResult(task.row, "failed", error=error, worker=self.worker)
            self.store.save_row(self.batch_id, result)
            return result

    async def _run(self, task: RowTask) -> RowResult:
        started = time.perf_counter()
        spec = self.workflow.spec
        run_id = f"{self.batch_id}:{task.row}"
        try:
            inputs = resolve_inputs(spec, task.inputs)
        except InputError as exc:
            error = f"inputs: {exc}".replace("\n", "; ")[:MAX_ERROR_CHARS]
            result = RowResult(task.row, "invalid", error=error, worker=self.worker)
        else:
            engine = Engine(
                spec,
                self.backend,
                inputs=inputs,
                store=RowCheckpoint(self.store, self.batch_id, task.row),
                run_id=run_id if not task.prior else None,
                resume=prior_run(run_id, spec.name, task.prior) if task.prior else None,
                options=self.options,
                templates=self.workflow.templates,
            )
            prior_cost = engine.prior_cost
            run = await engine.run()
            result = row_result(task.row, run, prior_cost, self.worker)
        result.duration_s = time.perf_counter() - started
        self.store.save_row(self.batch_id, result)
        return result


def row_result(row: int, run: RunResult, prior_cost: float, worker: str | None = None) -> RowResult:
    """A finished run as a row: its state, outputs and error, and per-step sums of the calls it made."""
    steps: dict[str, StepTotals] = {}
    calls = reused = 0
    for record in run.leaves:
        if record.cached:
            reused += 1
            continue
        if record.state not in (StepState.SUCCEEDED, StepState.FAILED):
            continue
        calls += 1
        totals = steps.setdefault(record.step, StepTotals())
        totals.calls += 1
        totals.cost_usd += record.cost_usd
        totals.prompt_tokens += record.prompt_tokens
        totals.completion_tokens += record.completion_tokens
        totals.failed += record.state is StepState.FAILED
    error = run.message
    return RowResult(
        row=row,
        status=_ROW_STATUS[run.status],
        outputs=run.outputs,
        cost_usd=run.cost_usd,
        session_cost_usd=max(0.0, run.cost_usd - prior_cost),
        error=error[:MAX_ERROR_CHARS] if error else None,
        steps=steps,
        calls=calls,
        reused=reused,
        worker=worker,
    )
