"""The async scheduler: runs a workflow's step graph concurrently, scoped, checkpointed and on budget.

Every step is a task that waits for the steps it needs, so independent steps run at once; a fan-out runs
its items under the step's `max_parallel`, and every call under the workflow's `max_parallel`. A step
sees only the outputs it declared. A failure fails its dependents only (they are `blocked`); the run ends
with a partial result. Every start and finish is appended to the run store before the next step can
depend on it, which is what makes `--resume` re-run nothing that finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from modelyard.accounting.tokens import count_message_dicts, count_value
from modelyard.config.imports import CallableImportError
from modelyard.workflows import approval
from modelyard.workflows.backend import ModelBackend, ModelCall, ModelEstimate
from modelyard.workflows.calls import Retry, Spend, StepFailure, run_model, run_tool, with_retries
from modelyard.workflows.checkpoint import MemoryStore, RunHeader, RunStore, StoredRun, session_marker
from modelyard.workflows.graph import topo_order
from modelyard.workflows.inputs import InputError
from modelyard.workflows.pricing import premium_comparison
from modelyard.workflows.records import (
    DONE_OK,
    RunEvent,
    RunResult,
    RunStatus,
    StepRecord,
    StepState,
)
from modelyard.workflows.routing import NextError, choose_next, not_chosen
from modelyard.workflows.spec import StepSpec, WorkflowSpec
from modelyard.workflows.stepcall import step_call
from modelyard.workflows.streaming import TokenSource, TokenTap
from modelyard.workflows.subworkflow import Scope, conclude, nested_scope
from modelyard.workflows.templates import TemplateEngine, TemplateError
from modelyard.workflows.tools import resolve_callable
from modelyard.workflows.typed_outputs import check_outputs, paid_repair, repair_call, spent_on_repair

Listener = Callable[[RunEvent], None]
#: What a step_started event stores: enough to show the step as running (or interrupted) later.
_STARTED_FIELDS = ("key", "step", "kind", "model", "started_at", "order", "items", "inputs_hash")
_EVENT_FOR_STATE = {
    StepState.SUCCEEDED: "step_finished",
    StepState.FAILED: "step_failed",
    StepState.SKIPPED: "step_skipped",
    StepState.BLOCKED: "step_blocked",
    StepState.STOPPED: "step_stopped",
    StepState.CANCELLED: "step_cancelled",
    StepState.WAITING: "step_waiting",
}


@dataclass
class EngineOptions:
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    #: The admission-queue class every model call of the run asks for (`modelyard batch`: `batch`).
    priority: str | None = None
    #: Stream each model call's text as `step_token` events (`run --stream`); the results are the same.
    stream: bool = False


@dataclass
class Frame:
    """One graph being scheduled: the top level, or one round of a loop."""

    prefix: str
    order: tuple[int, ...]
    outputs: dict[str, Any]
    keys: dict[str, str]
    iteration: dict[str, Any] | None = None
    previous_keys: list[str] = field(default_factory=list)
    #: What each step with `next:` chose in this graph (routing.py), by step id.
    chosen: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Inside a sub-workflow: its inputs and `workflow` vars (None: the run's own).
    scope: Scope | None = None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def digest(value: Any) -> str:
    """The inputs hash of a call: same request, same hash, so a resumed run can reuse the answer."""
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


class Engine:
    """One run (or resumed session) of one workflow against one backend."""

    def __init__(
        self,
        spec: WorkflowSpec,
        backend: ModelBackend,
        *,
        inputs: dict[str, Any],
        store: RunStore | None = None,
        run_id: str | None = None,
        resume: StoredRun | None = None,
        listener: Listener | None = None,
        options: EngineOptions | None = None,
        templates: TemplateEngine | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.inputs = inputs
        self.store: RunStore = store if store is not None else MemoryStore()
        self.run_id = resume.header.run_id if resume else (run_id or new_run_id())
        self.resume = resume
        self.listener = listener
        self.options = options or EngineOptions()
        self.templates = templates or TemplateEngine()
        self.records: dict[str, StepRecord] = {}
        self._instructions: dict[str, int] = {}
        self.cache = resume.reusable() if resume else {}
        self.prior_cost = resume.cost_usd if resume else 0.0
        self.spent = 0.0
        self.reserved = 0.0
        self.stop_reason: str | None = None
        self.workflow_vars = {"name": spec.name, "dir": str(spec.base_dir), "run_id": self.run_id}
        self._tools: dict[str, Callable[..., Any]] = {}
        self._sem = asyncio.Semaphore(spec.max_parallel)
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ the run

    async def run(self) -> RunResult:
        started = time.time()
        self._t0 = time.monotonic()
        self._begin()
        top_frame = Frame(prefix="", order=(), outputs={}, keys={})
        max_seconds = self.spec.budget.max_seconds
        try:
            if max_seconds is None:
                await self._graph(self.spec.steps, top_frame)
            else:
                async with asyncio.timeout(max_seconds):
                    await self._graph(self.spec.steps, top_frame)
        except TimeoutError:
            self.stop_reason = f"the time budget of {max_seconds:g}s ran out; unfinished steps were cancelled"
            self._cancel_unfinished()
        return await self._finish_run(started)

    def _begin(self) -> None:
        marker = session_marker()
        if self.resume is None:
            deps = {sid: list(step.needs) for sid, step in self.spec.steps.items()}
            header = RunHeader(
                self.run_id, self.spec.name, self.spec.source, self.spec.text, self.inputs, time.time(), deps
            )
            self.store.create_run(header)
            self.store.append(self.run_id, "run_started", None, marker)
        else:
            self.store.append(self.run_id, "run_resumed", None, {**marker, "reusable": len(self.cache)})
        self._emit(RunEvent("run_started", time.time(), message=self.run_id))

    async def _finish_run(self, started: float) -> RunResult:
        top = {sid: self._top_record(sid) for sid in self.spec.steps}
        outputs, errors = self._outputs(top)
        typed = await check_outputs(self.spec, outputs, self._repair_output) if self.spec.output_schemas else []
        errors = [f"step '{r.step}' {r.state.value}: {r.error}" for r in top.values() if r.error] + errors + typed
        status = self._status(top)
        if typed and status is RunStatus.SUCCEEDED:
            status = RunStatus.FAILED
        message = self.stop_reason or (errors[0] if errors else None)
        if status is RunStatus.WAITING:
            errors, message = approval.waiting_errors(self.records, errors)
        result = RunResult(
            run_id=self.run_id,
            workflow=self.spec.name,
            status=status,
            inputs=self.inputs,
            outputs=outputs,
            records=dict(self.records),
            started_at=started,
            finished_at=time.time(),
            cost_usd=self.prior_cost + self.spent,
            message=message,
            errors=errors,
            deps={sid: list(step.needs) for sid, step in self.spec.steps.items()},
            sessions=(self.resume.sessions + 1) if self.resume else 1,
        )
        result.comparison = premium_comparison(self.spec, result, self.backend)
        data = {
            "status": status.value,
            "outputs": outputs,
            "message": message,
            "errors": errors,
            "comparison": result.comparison,
        }
        self.store.append(self.run_id, "run_finished", None, data)
        self._emit(RunEvent("run_finished", time.time(), message=status.value))
        return result

    def _top_record(self, sid: str) -> StepRecord:
        record = self.records.get(sid)
        if record is None:
            step = self.spec.steps[sid]
            record = StepRecord(sid, sid, _kind(step), StepState.STOPPED, error=self.stop_reason)
            self.records[sid] = record
        return record

    def _status(self, top: dict[str, StepRecord]) -> RunStatus:
        if self.stop_reason:
            return RunStatus.STOPPED
        if any(r.state is StepState.WAITING for r in self.records.values()):
            return RunStatus.WAITING
        if all(r.state in DONE_OK for r in top.values()):
            return RunStatus.SUCCEEDED
        if any(r.is_leaf and r.state is StepState.SUCCEEDED for r in self.records.values()):
            return RunStatus.PARTIAL
        return RunStatus.FAILED

    def _outputs(self, top: dict[str, StepRecord]) -> tuple[dict[str, Any], list[str]]:
        context: dict[str, Any] = {"inputs": self.inputs, "workflow": self.workflow_vars}
        context.update({sid: r.output for sid, r in top.items() if r.state in DONE_OK})
        outputs: dict[str, Any] = {}
        errors: list[str] = []
        for name, template in self.spec.outputs.items():
            try:
                outputs[name] = self.templates.evaluate(template, context)
            except TemplateError as exc:
                errors.append(f"output '{name}': {exc.message}")
        return outputs, errors

    async def _repair_output(
        self, name: str, step: StepSpec, field: str | None, schema: dict[str, Any] | bool, problem: str
    ) -> str | None:
        """Ask `step` once to repair its answer for typed output `name`; the repair's cost joins its record."""
        record = self.records.get(step.id)
        if record is None or record.state is not StepState.SUCCEEDED:
            return None
        paid = paid_repair(record, name)
        if paid is not None or self.stop_reason:  # a resumed run reuses the reply it paid for: nothing twice
            return paid
        outputs = {sid: r.output for sid, r in self.records.items() if sid in self.spec.steps}
        call = self._model_call(step, step.id, self._context(step, Frame("", (), outputs, {})))
        call = repair_call(call, record.output, name, field, schema, problem)
        budget = self.spec.budget
        budgeted = budget.max_cost_usd is not None or budget.max_seconds is not None
        over = self._budget_problem(step.id, self._estimate(call) if budgeted else None)
        if over:
            raise StepFailure(over)
        retry = Retry(step.retries, step.timeout, self.options.backoff_s, self.options.backoff_max_s)
        spend = Spend()
        reply: str | None = None
        try:
            answer = await with_retries(lambda: self.backend.call(call), retry, spend)
            spend.add(answer)
            reply = answer.text
        finally:  # paid even when the repair failed: into the record and the log (with the reply), counted once
            spent_on_repair(record, spend, name, reply)
            self.spent += spend.cost_usd
            self.store.append(self.run_id, "step_finished", record.key, {"record": record.to_dict()}, spend.cost_usd)
        return reply

    def _cancel_unfinished(self) -> None:
        for record in list(self.records.values()):
            if record.state is StepState.RUNNING:
                record.state = StepState.CANCELLED
                record.finished_at = time.time()
                record.error = "cancelled: the time budget ran out"
                self._finish(record)

    # ------------------------------------------------------------------ scheduling

    async def _graph(self, steps: dict[str, StepSpec], frame: Frame) -> dict[str, StepRecord]:
        """Run a graph: one task per step, each waiting for the steps it needs."""
        deps = {sid: [d for d in step.needs if d in steps] for sid, step in steps.items()}
        tasks: dict[str, asyncio.Task[StepRecord]] = {}
        for index, sid in enumerate(topo_order(deps)):
            waits = [tasks[d] for d in deps[sid]]
            tasks[sid] = asyncio.create_task(self._when_ready(steps[sid], frame, waits, index))
        try:
            results = await asyncio.gather(*tasks.values())
        except BaseException:
            for task in tasks.values():
                task.cancel()
            raise
        return dict(zip(tasks, results, strict=True))

    async def _when_ready(
        self, step: StepSpec, frame: Frame, waits: list[asyncio.Task[StepRecord]], index: int
    ) -> StepRecord:
        needed = [await task for task in waits]
        key = frame.prefix + step.id
        bad = [r for r in needed if r.state not in DONE_OK]
        if bad:
            quiet = all(r.state in (StepState.STOPPED, StepState.CANCELLED, StepState.WAITING) for r in bad)
            state = StepState.STOPPED if quiet else StepState.BLOCKED
            error = f"needs '{bad[0].step}', which {bad[0].state.value}"
            record = self._finish(StepRecord(key, step.qualname, _kind(step), state, error=error))
        else:
            record = await self._step(step, frame, key, (*frame.order, index))
            if step.next is not None and record.state is StepState.SUCCEEDED:
                record = self._route(step, frame, record)
        if record.state in DONE_OK:
            frame.outputs[step.id] = record.output
        frame.keys[step.id] = key
        return record

    async def _step(self, step: StepSpec, frame: Frame, key: str, order: tuple[int, ...]) -> StepRecord:
        kind = _kind(step)
        if self.stop_reason:
            stopped = StepRecord(key, step.qualname, kind, StepState.STOPPED, error=self.stop_reason)
            return self._finish(stopped)
        context = self._context(step, frame)
        unchosen = not_chosen(step.id, step.needs, frame.chosen)
        if unchosen is not None:
            skipped = StepRecord(key, step.qualname, kind, StepState.SKIPPED, order=list(order), note=unchosen)
            return self._finish(skipped)
        try:
            if step.when is not None and not self.templates.truthy(step.when, context):
                skipped = StepRecord(key, step.qualname, kind, StepState.SKIPPED, order=list(order))
                skipped.note = "skipped: `when` was false"
                return self._finish(skipped)
            if step.loop is not None:
                return await self._loop(step, frame, key, order)
            if step.foreach is not None:
                return await self._foreach(step, frame, key, order, context)
            if step.approve is not None:
                previous = self.resume.records.get(key) if self.resume else None
                gate = approval.gate(
                    step, key, list(order), context, store=self.store, run_id=self.run_id,
                    templates=self.templates, previous=previous,
                )  # fmt: skip
                return self._finish(gate)
        except TemplateError as exc:
            failed = StepRecord(key, step.qualname, kind, StepState.FAILED, order=list(order))
            failed.error = f"template: {exc.message}"
            return self._finish(failed)
        return await self._leaf(step, frame, key, order, context)

    def _route(self, step: StepSpec, frame: Frame, record: StepRecord) -> StepRecord:
        """Evaluate `next:` over the step's output (again on resume: same output, same choice); an
        invalid choice fails the step, recorded again without paying again."""
        assert step.next is not None
        context = {**self._context(step, frame), step.id: record.output}
        try:
            frame.chosen[step.id] = choose_next(step.id, step.next, step.successors, context, self.templates)
        except NextError as exc:
            record.state, record.error = StepState.FAILED, str(exc)
            return self._finish(record, paid_before=True)
        choice = "next: " + (", ".join(frame.chosen[step.id]) or "none")
        record.note = f"{record.note}; {choice}" if record.note else choice
        return record

    def _context(self, step: StepSpec, frame: Frame) -> dict[str, Any]:
        """Exactly what the step declared: inputs, its needs' outputs, the loop round. Nothing else."""
        context = self._bare(frame)
        for name in step.needs:
            context[name] = frame.outputs.get(name)
        if frame.iteration is not None:
            context["iteration"] = frame.iteration
        return context

    # ------------------------------------------------------------------ fan-out and loops

    async def _foreach(
        self, step: StepSpec, frame: Frame, key: str, order: tuple[int, ...], context: dict[str, Any]
    ) -> StepRecord:
        items = self._items(step, context)
        aggregate = StepRecord(key, step.qualname, "foreach", StepState.RUNNING, model=step.model)
        aggregate.order, aggregate.items, aggregate.started_at = list(order), len(items), time.time()
        self._start(aggregate)
        bound = asyncio.Semaphore(step.max_parallel or self.spec.max_parallel)

        async def one(index: int, item: Any) -> StepRecord:
            async with bound:
                scoped = {**context, "item": item, "item_index": index}
                return await self._leaf(step, frame, f"{key}[{index}]", order, scoped)

        leaves = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        _summarise(aggregate, leaves)
        aggregate.output = [leaf.output for leaf in leaves]
        failed = [leaf for leaf in leaves if leaf.state not in DONE_OK]
        if any(leaf.state is StepState.WAITING for leaf in failed):  # items' gates wait for a person
            aggregate.state = StepState.WAITING
        elif failed:
            stopped = all(leaf.state is StepState.STOPPED for leaf in failed)
            aggregate.state = StepState.STOPPED if stopped else StepState.FAILED
            first = failed[0]
            aggregate.error = f"{len(failed)} of {len(leaves)} items {first.state.value}: {first.error}"
        else:
            aggregate.state = StepState.SUCCEEDED
        return self._finish(aggregate)

    def _items(self, step: StepSpec, context: dict[str, Any]) -> list[Any]:
        value = self.templates.evaluate(step.foreach, context)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise TemplateError(f"foreach must give a list, got text {value[:60]!r}") from None
        if isinstance(value, dict):
            value = list(value.items())
        if not isinstance(value, list | tuple):
            raise TemplateError(f"foreach must give a list, got {type(value).__name__}")
        return list(value)

    async def _loop(self, step: StepSpec, frame: Frame, key: str, order: tuple[int, ...]) -> StepRecord:
        assert step.loop is not None
        spec = step.loop
        aggregate = StepRecord(key, step.qualname, "loop", StepState.RUNNING, order=list(order))
        aggregate.started_at = time.time()
        self._start(aggregate)
        previous: dict[str, Any] | None = None
        previous_keys: list[str] = []
        rounds: list[StepRecord] = []
        for round_no in range(1, spec.max_iterations + 1):
            iteration = {
                "index": round_no,
                "max": spec.max_iterations,
                "first": round_no == 1,
                "last": round_no == spec.max_iterations,
                "previous": previous,
            }
            inner = Frame(
                prefix=f"{key}#{round_no}.",
                order=(*order, round_no),
                outputs={name: frame.outputs.get(name) for name in step.needs},
                keys={name: frame.keys.get(name, name) for name in step.needs},
                iteration=iteration,
                previous_keys=previous_keys,
                scope=frame.scope,
            )
            records = await self._graph(spec.steps, inner)
            rounds.extend(records.values())
            aggregate.iterations = round_no
            previous = {sid: r.output for sid, r in records.items()}
            previous_keys = [r.key for r in records.values()]
            bad = [r for r in records.values() if r.state not in DONE_OK]
            if any(r.state is StepState.WAITING for r in bad):  # a person decides this round's gate
                aggregate.state = StepState.WAITING
                break
            if bad:
                aggregate.state = StepState.STOPPED if self.stop_reason else StepState.FAILED
                first = bad[0]
                aggregate.error = f"round {round_no}: step '{first.step}' {first.state.value}: {first.error}"
                break
            if spec.until is not None and self._until(spec.until, step, inner, previous):
                aggregate.note = f"`until` held after {round_no} of {spec.max_iterations} rounds"
                break
        else:
            aggregate.note = (
                f"reached max_iterations ({spec.max_iterations}) without `until` holding"
                if spec.until is not None
                else f"ran {spec.max_iterations} rounds"
            )
        if aggregate.state is StepState.RUNNING:
            aggregate.state = StepState.SUCCEEDED
        _summarise(aggregate, rounds)
        aggregate.output = previous
        return self._finish(aggregate)

    def _until(self, until: str | bool, step: StepSpec, inner: Frame, outputs: dict[str, Any]) -> bool:
        context = {**self._context(step, inner), **outputs}
        return self.templates.truthy(until, context)

    # ------------------------------------------------------------------ leaves

    async def _subworkflow(
        self, step: StepSpec, frame: Frame, key: str, order: tuple[int, ...], context: dict[str, Any]
    ) -> StepRecord:
        """The included graph in a nested frame (child keys `key/step`); its outputs are the step's output."""
        assert step.workflow is not None
        aggregate = StepRecord(key, step.qualname, "workflow", StepState.RUNNING, order=list(order))
        aggregate.started_at = time.time()
        self._start(aggregate)
        try:
            scope = nested_scope(step.workflow, key, lambda v: self._evaluate_deep(v, context), self.run_id)
        except (TemplateError, InputError) as exc:
            aggregate.state, aggregate.error = StepState.FAILED, f"sub-workflow inputs: {exc}"
            return self._finish(aggregate)
        inner = Frame(prefix=scope.prefix, order=order, outputs={}, keys={}, scope=scope)
        records = await self._graph(step.workflow.spec.steps, inner)
        _summarise(aggregate, list(records.values()))
        conclude(aggregate, records, scope, self.templates, self.stop_reason is not None)
        return self._finish(aggregate)

    def _bare(self, frame: Frame) -> dict[str, Any]:
        """`inputs` and `workflow`: the run's, or the sub-workflow's the frame belongs to."""
        if frame.scope is not None:
            return {"inputs": frame.scope.inputs, "workflow": frame.scope.workflow_vars}
        return {"inputs": self.inputs, "workflow": self.workflow_vars}

    async def _leaf(
        self, step: StepSpec, frame: Frame, key: str, order: tuple[int, ...], context: dict[str, Any]
    ) -> StepRecord:
        if step.workflow is not None:
            return await self._subworkflow(step, frame, key, order, context)
        record = StepRecord(key, step.qualname, step.kind, model=step.model, order=list(order))
        record.context = [frame.keys.get(n, frame.prefix + n) for n in step.needs] + frame.previous_keys
        try:
            call, function, args = self._request(step, key, context, frame)
        except (TemplateError, CallableImportError) as exc:
            record.state, record.error = StepState.FAILED, f"{type(exc).__name__}: {exc}"
            return self._finish(record)
        if call is not None:
            record.instruction_tokens = self._instruction_tokens(step, call, frame)
        record.inputs_hash = digest(_call_identity(call) if call else {"call": step.call, "args": args})
        cached = self.cache.get(key)
        if cached is not None and cached.inputs_hash == record.inputs_hash:
            reused = dataclasses.replace(cached, cached=True)
            self.records[key] = reused
            self._emit(RunEvent("step_cached", time.time(), key, reused))
            return reused
        reservation = 0.0
        if call is not None:
            budget = self.spec.budget
            budgeted = budget.max_cost_usd is not None or budget.max_seconds is not None
            estimate = self._estimate(call) if budgeted else None
            problem = self._budget_problem(key, estimate)
            if problem:
                self.stop_reason = self.stop_reason or problem
                record.state, record.error = StepState.STOPPED, problem
                return self._finish(record)
            reservation = estimate.cost_usd if estimate else 0.0
        self.reserved += reservation
        backend = self.backend
        if call is not None and self.options.stream:
            backend = TokenTap(backend, TokenSource.of(key, step.qualname, context), self._emit)
        try:
            async with self._sem:
                return await self._execute(step, record, call, function, args, backend)
        finally:
            self.reserved -= reservation

    def _request(
        self, step: StepSpec, key: str, context: dict[str, Any], frame: Frame
    ) -> tuple[ModelCall | None, Callable[..., Any] | None, dict[str, Any]]:
        if step.kind == "tool":
            assert step.call is not None
            base_dir = (frame.scope.spec if frame.scope else self.spec).base_dir
            function = self._tools.get(f"{base_dir}|{step.call}")
            if function is None:
                function = self._tools[f"{base_dir}|{step.call}"] = resolve_callable(step.call, base_dir)
            args = {name: self._evaluate_deep(value, context) for name, value in step.args.items()}
            return None, function, args
        return self._model_call(step, key, context), None, {}

    def _instruction_tokens(self, step: StepSpec, call: ModelCall, frame: Frame) -> int:
        """Tokens of the call's messages without the step data in them (inputs kept).

        The same for every item and round of a step, so it is counted once per step and run.
        """
        name = (frame.scope.prefix if frame.scope else "") + step.qualname
        known = self._instructions.get(name)
        if known is not None:
            return known
        bare = self._bare(frame)
        data = (*step.needs, "item", "item_index", "iteration")
        messages: list[dict[str, Any]] = []
        try:
            if step.system:
                system = self.templates.render_hollow(step.system, bare, data)
                messages.append({"role": "system", "content": system})
            prompt = self.templates.render_hollow(step.prompt or "", bare, data)
            tokens = count_message_dicts([*messages, {"role": "user", "content": prompt}])
        except TemplateError:  # a template that cannot render without its data: count it whole
            tokens = count_message_dicts(call.messages)
        self._instructions[name] = tokens
        return tokens

    def _evaluate_deep(self, value: Any, context: dict[str, Any]) -> Any:
        if isinstance(value, dict):
            return {k: self._evaluate_deep(v, context) for k, v in value.items()}
        if isinstance(value, list):
            return [self._evaluate_deep(v, context) for v in value]
        return self.templates.evaluate(value, context)

    def _model_call(self, step: StepSpec, key: str, context: dict[str, Any]) -> ModelCall:
        assert step.model is not None and step.prompt is not None
        call = step_call(
            step,
            lambda template: self.templates.render(template, context),
            workflow=self.spec.name,
            key=key,
            run_id=self.run_id,
        )
        call.priority = self.options.priority
        return call

    async def _execute(
        self,
        step: StepSpec,
        record: StepRecord,
        call: ModelCall | None,
        function: Callable[..., Any] | None,
        args: dict[str, Any],
        backend: ModelBackend | None = None,
    ) -> StepRecord:
        if self.stop_reason:
            record.state, record.error = StepState.STOPPED, self.stop_reason
            return self._finish(record)
        record.state, record.started_at = StepState.RUNNING, time.time()
        self._start(record)
        retry = Retry(step.retries, step.timeout, self.options.backoff_s, self.options.backoff_max_s)
        spend = Spend()
        try:
            if call is not None:
                record.output, record.output_tokens = await run_model(
                    backend or self.backend, call, step.output_schema, retry, spend
                )
            else:
                assert function is not None
                output = await run_tool(function, args, retry, spend)
                record.output = json.loads(json.dumps(output, default=str))
                record.output_tokens = count_value(record.output)
            record.state = StepState.SUCCEEDED
        except StepFailure as exc:
            record.state, record.error = StepState.FAILED, exc.message
        record.finished_at = time.time()
        spend.apply(record)
        self.spent += record.cost_usd
        return self._finish(record)

    # ------------------------------------------------------------------ budget

    def _estimate(self, call: ModelCall) -> ModelEstimate | None:
        try:
            return self.backend.estimate(call)
        except Exception:  # NotImplementedError included: an estimate must never break a run
            return None

    def _budget_problem(self, key: str, estimate: ModelEstimate | None) -> str | None:
        budget = self.spec.budget
        if budget.max_cost_usd is not None:
            committed = self.prior_cost + self.spent + self.reserved
            next_cost = estimate.cost_usd if estimate else 0.0
            if committed + next_cost > budget.max_cost_usd or committed >= budget.max_cost_usd:
                return (
                    f"stopped before '{key}': its estimated ${next_cost:.4f} would bring the run to "
                    f"${committed + next_cost:.4f}, over the ${budget.max_cost_usd:g} budget"
                )
        if budget.max_seconds is not None and estimate is not None:
            elapsed = time.monotonic() - self._t0
            if elapsed + estimate.latency_ms / 1000 > budget.max_seconds:
                return (
                    f"stopped before '{key}': its estimated {estimate.latency_ms / 1000:.1f}s would pass the "
                    f"{budget.max_seconds:g}s time budget ({elapsed:.1f}s used)"
                )
        return None

    # ------------------------------------------------------------------ events

    def _start(self, record: StepRecord) -> None:
        self.records[record.key] = record
        started = {name: getattr(record, name) for name in _STARTED_FIELDS}
        started["state"] = record.state.value
        self.store.append(self.run_id, "step_started", record.key, {"record": started})
        self._emit(RunEvent("step_started", time.time(), record.key, record))

    def _finish(self, record: StepRecord, paid_before: bool = False) -> StepRecord:
        self.records[record.key] = record
        kind = _EVENT_FOR_STATE.get(record.state, "step_finished")
        paying = record.is_leaf and record.state in (StepState.SUCCEEDED, StepState.FAILED) and not paid_before
        paid = record.cost_usd if paying else 0.0
        self.store.append(self.run_id, kind, record.key, {"record": record.to_dict()}, paid)
        self._emit(RunEvent(kind, time.time(), record.key, record))
        return record

    def _emit(self, event: RunEvent) -> None:
        if self.listener is not None:
            self.listener(event)


def _call_identity(call: ModelCall) -> dict[str, Any]:
    """What makes two model calls the same request (the run id and step labels do not)."""
    return {
        "model": call.model,
        "messages": call.messages,
        "max_tokens": call.max_tokens,
        "temperature": call.temperature,
        "response_format": call.response_format,
        "route": msgspec.to_builtins(msgspec.structs.replace(call.route, candidates=None, tags=())),
    }


def _kind(step: StepSpec) -> str:
    if step.loop is not None:
        return "loop"
    return "foreach" if step.foreach is not None else step.kind


def _summarise(aggregate: StepRecord, parts: list[StepRecord]) -> None:
    """An aggregate's money, tokens and timing: sums over its parts (each part counted once)."""
    aggregate.cost_usd = sum(p.cost_usd for p in parts)
    aggregate.prompt_tokens = sum(p.prompt_tokens for p in parts)
    aggregate.completion_tokens = sum(p.completion_tokens for p in parts)
    aggregate.output_tokens = sum(p.output_tokens for p in parts)
    aggregate.latency_ms = sum(p.latency_ms for p in parts)
    aggregate.attempts = sum(p.attempts for p in parts)
    aggregate.repaired = any(p.repaired for p in parts)
    aggregate.cached = bool(parts) and all(p.cached for p in parts)
    deployments = sorted({p.deployment for p in parts if p.deployment})
    aggregate.deployment = ", ".join(deployments[:3]) + (" ..." if len(deployments) > 3 else "") or None
    starts = [p.started_at for p in parts if p.started_at is not None]
    if starts and aggregate.cached:
        aggregate.started_at = min(starts)
    ends = [p.finished_at for p in parts if p.finished_at is not None]
    aggregate.finished_at = max(ends, default=time.time())
