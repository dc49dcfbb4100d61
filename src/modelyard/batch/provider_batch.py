"""`--provider-batch`: a single-model-step workflow's rows through the providers' own Batch APIs (OpenAI's
files + batches, Anthropic's message batches): half the price, a 24-hour window, the same resume and accounting.

Each row's request is the step's call rendered exactly as the workflow engine renders it, translated by the
deployment's own adapter (the body a live call would send). A job's `Submission` is saved before anything is
uploaded, and its provider ids as soon as they are known, so a driver killed while the job is in flight finds
it again on `--resume` (OpenAI by the nonce in the job's metadata; Anthropic, which has no metadata, by the
job's creation time and request count) and collects it instead of submitting its rows twice. Results are
read with the adapter's `parse_chat` (the live path's usage) and priced at the router's price times
`Price.batch`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from modelyard.accounting.prices import cost_usd
from modelyard.batch.engine import RowEngine
from modelyard.batch.model import BatchHeader, RowResult, RowTask, StepTotals, Submission
from modelyard.batch.provider_jobs import BatchClient, JobError, Outcome, client_for
from modelyard.batch.ray_engine import BatchEngineError
from modelyard.batch.runner import MAX_ERROR_CHARS
from modelyard.batch.store import BatchStore
from modelyard.config.model import Config, Deployment
from modelyard.providers.anthropic import AnthropicAdapter
from modelyard.providers.base import Adapter
from modelyard.providers.openai import OpenAIAdapter
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import ModelyardError
from modelyard.workflows.api import Workflow
from modelyard.workflows.backend import chat_body
from modelyard.workflows.inputs import InputError, resolve_inputs
from modelyard.workflows.jsonout import AnswerInvalid, parse_structured
from modelyard.workflows.spec import StepSpec
from modelyard.workflows.stepcall import step_call
from modelyard.workflows.templates import TemplateError
from modelyard.workflows.typed_outputs import unrepaired_problems

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder().decode
#: How long a partly filled job waits for more rows before it is submitted as it is.
_LINGER_S = 0.5
#: The first poll's wait; each next one doubles up to `poll_s`.
_FIRST_POLL_S = 0.5
_END = object()


def _price_resolver() -> Any:
    try:
        from modelyard.accounting.price_table import resolve_price
    except ImportError:  # pragma: no cover - the table ships with the package
        return None
    return resolve_price


def single_model_step(workflow: Workflow) -> StepSpec:
    """The workflow's one model step; BatchEngineError saying why a workflow cannot go through a Batch API."""
    steps = list(workflow.spec.steps.values())
    if len(steps) != 1:
        raise BatchEngineError(
            f"--provider-batch runs workflows of exactly one model step; {workflow.name} has {len(steps)} steps"
        )
    step = steps[0]
    problems = [
        ("a tool step", step.kind == "tool"),
        ("a loop", step.kind == "loop" or step.loop is not None),
        ("foreach", step.foreach is not None),
        ("needs", bool(step.needs)),
        ("a `when` condition", step.when is not None),
        ("no model", not step.model),
    ]
    found = [name for name, present in problems if present]
    if found:
        raise BatchEngineError(f"--provider-batch runs one plain model step; step '{step.id}' has {', '.join(found)}")
    return step


def _format(adapter: object) -> str | None:
    """`openai` or `anthropic` for the exact wire formats with a Batch API (not Azure's, Vertex's or Bedrock's)."""
    if type(adapter) is OpenAIAdapter:
        return "openai"
    if type(adapter) is AnthropicAdapter:
        return "anthropic"
    return None


@dataclass
class _Target:
    dep: Deployment
    adapter: Adapter
    fmt: str


def choose_target(router: Router, workflow: Workflow, step: StepSpec) -> _Target:
    """The first planned deployment of the step's model whose wire format has a Batch API."""
    call = step_call(step, lambda template: template, workflow=workflow.name, key=step.id)
    raw = chat_body(call)
    req = msgspec.convert(raw, ChatRequest)
    plan = router.plan(req.model, chat_features(req, tags=call.route.tags), overrides=req.modelyard)
    for dep in plan.order:
        adapter = router.adapters.get(dep.provider)
        fmt = _format(adapter) if adapter is not None else None
        if adapter is not None and fmt is not None:
            return _Target(dep, adapter, fmt)
    seen = ", ".join(f"{d.name} ({d.provider})" for d in plan.order) or "none"
    raise BatchEngineError(
        f"--provider-batch: model `{step.model}` routes to no OpenAI- or Anthropic-format deployment (planned: {seen})"
    )


@asynccontextmanager
async def open_provider_engine(
    workflow: Workflow,
    header: BatchHeader,
    store: BatchStore,
    *,
    config: str | None = None,
    poll_s: float = 10.0,
    job_rows: int = 10_000,
) -> AsyncIterator[RowEngine]:
    """A RowEngine that submits pulled rows as provider batch jobs of up to `job_rows` rows, polls every
    `poll_s` seconds and yields each row's result when its job ends. Raises BatchEngineError when the workflow
    is not one model step or its model routes to no OpenAI- or Anthropic-format deployment."""
    step = single_model_step(workflow)
    if not 1 <= job_rows <= 50_000:
        raise BatchEngineError(f"job_rows must be between 1 and 50000 (OpenAI's limit), not {job_rows}")
    sim = None
    if config:
        from modelyard.config.loader import load_config

        loaded: Config = load_config(config)
    else:
        from modelyard.config.demo import demo_config
        from modelyard.sim.server import SimServer

        sim = SimServer()
        await asyncio.to_thread(sim.start)
        loaded = demo_config(sim.url)
    try:
        router = Router(loaded, resolve_price=_price_resolver())
        async with router, aiohttp.ClientSession() as session:
            target = choose_target(router, workflow, step)
            yield ProviderEngine(workflow, step, header, store, router, target, session, poll_s, job_rows)
    finally:
        if sim is not None:
            await asyncio.to_thread(sim.stop)


class ProviderEngine:
    """Rows as provider batch jobs: pulled up to `job_rows` at a time, each job polled until it ends."""

    name = "provider-batch"

    def __init__(
        self,
        workflow: Workflow,
        step: StepSpec,
        header: BatchHeader,
        store: BatchStore,
        router: Router,
        target: _Target,
        session: aiohttp.ClientSession,
        poll_s: float,
        job_rows: int,
    ) -> None:
        self.workflow = workflow
        self.step = step
        self.header = header
        self.batch_id = header.batch_id
        self.store = store
        self.router = router
        self.target = target
        self.poll_s = max(0.01, poll_s)
        self.job_rows = job_rows
        probe_raw = {"model": target.dep.model, "messages": [{"role": "user", "content": "x"}]}
        probe = target.adapter.chat_call(target.dep, msgspec.convert(probe_raw, ChatRequest), probe_raw, False)
        base = probe.url.rsplit("/chat/completions", 1)[0]
        self.client: BatchClient = client_for(target.fmt, session, target.dep, base, probe.headers)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._prefix = _custom_prefix(self.batch_id)
        #: Inputs of rows of jobs found on resume, as the driver hands them again (for the outputs' templates).
        self._live_inputs: dict[int, dict[str, Any]] = {}
        self._live_changed = asyncio.Event()
        self._feed_done = asyncio.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    # ------------------------------------------------------------------ the engine contract

    async def run(self, tasks: AsyncIterator[RowTask], concurrency: int) -> AsyncIterator[RowResult]:
        out: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = out
        running: set[asyncio.Task[None]] = set()
        resumed = await self._resumed()
        live = {row for sub in resumed for row in sub.rows}
        room = asyncio.Semaphore(max(concurrency, self.job_rows))
        for sub in resumed:
            running.add(asyncio.ensure_future(self._guard(self._follow(sub, None, None), out)))
        feeder = asyncio.ensure_future(self._guard(self._feed(tasks, live, room, running, out), out))
        producers = len(running) + 1
        try:
            while producers:
                item = await out.get()
                if item is _END:
                    producers -= 1
                elif isinstance(item, int):
                    producers += item
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            feeder.cancel()
            for job in running:
                job.cancel()
            await asyncio.gather(feeder, *running, return_exceptions=True)
            self.store.flush()

    async def aclose(self) -> None:
        pass

    # ------------------------------------------------------------------ feeding rows into jobs

    async def _guard(self, work: Any, out: asyncio.Queue[Any]) -> None:
        """Run a producer; its failure goes to the consumer; its end is counted."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the consumer raises it
            await out.put(exc)
        finally:
            out.put_nowait(_END)

    async def _feed(
        self,
        tasks: AsyncIterator[RowTask],
        live: set[int],
        room: asyncio.Semaphore,
        running: set[asyncio.Task[None]],
        out: asyncio.Queue[Any],
    ) -> None:
        """Pull rows while there is room, and submit them as jobs of up to `job_rows` (a partly filled job
        goes when no row comes for a moment: the driver may be waiting on its budget)."""
        pending: asyncio.Queue[Any] = asyncio.Queue()

        async def pull() -> None:
            try:
                async for task in tasks:
                    if task.row in live:
                        self._live_inputs[task.row] = task.inputs
                        self._live_changed.set()
                        continue
                    await room.acquire()
                    await pending.put(task)
            finally:
                self._feed_done.set()
                self._live_changed.set()
                pending.put_nowait(_END)

        puller = asyncio.ensure_future(pull())
        try:
            ended = False
            while not ended:
                chunk: list[RowTask] = []
                first = await pending.get()
                if first is _END:
                    break
                chunk.append(first)
                while len(chunk) < self.job_rows:
                    try:
                        item = await asyncio.wait_for(pending.get(), _LINGER_S)
                    except TimeoutError:
                        break
                    if item is _END:
                        ended = True
                        break
                    chunk.append(item)
                out.put_nowait(1)  # one more producer: this job
                running.add(asyncio.ensure_future(self._guard(self._follow(None, chunk, room), out)))
            await puller
        finally:
            puller.cancel()

    # ------------------------------------------------------------------ one job

    async def _follow(
        self, sub: Submission | None, chunk: list[RowTask] | None, room: asyncio.Semaphore | None
    ) -> None:
        """Submit `chunk` as a new job (or follow the resumed `sub`), poll it, collect its rows."""
        try:
            inputs: dict[int, dict[str, Any]] = {}
            if sub is None:
                assert chunk is not None
                sub = await self._submit(chunk, inputs)
                if sub is None:
                    return
            assert sub.job_id is not None
            status = await self.client.status(sub.job_id)
            wait = min(self.poll_s, _FIRST_POLL_S)
            while not status.ended:  # quick first polls for a small job, then every `poll_s`
                await asyncio.sleep(wait)
                wait = min(self.poll_s, wait * 2)
                status = await self.client.status(sub.job_id)
            sub.state = "ended"
            self._save(sub)
            results = await self.client.results(sub.job_id, status) if status.error is None else {}
            if chunk is None:
                inputs = await self._resumed_inputs(sub.rows)
            for row in sub.rows:
                outcome = results.get(self._custom_id(row)) or Outcome(None, status.error or _missing(status.state))
                await self._emit(self._row_result(row, inputs.get(row), outcome))
            sub.state = "collected"
            self._save(sub)
        finally:
            if room is not None and chunk is not None:
                for _ in chunk:
                    room.release()

    async def _submit(self, chunk: list[RowTask], inputs: dict[int, dict[str, Any]]) -> Submission | None:
        """Build every row's request, record the job, upload and create it; rows that cannot be built (bad
        inputs, a template error) get their result at once. None when no row is left to submit."""
        requests: list[tuple[str, dict[str, Any]]] = []
        rows: list[int] = []
        for task in chunk:
            try:
                resolved = resolve_inputs(self.workflow.spec, task.inputs)
            except InputError as exc:
                error = f"inputs: {exc}".replace("\n", "; ")[:MAX_ERROR_CHARS]
                await self._emit(RowResult(task.row, "invalid", error=error, worker=self.worker))
                continue
            try:
                body = self._request_body(task.row, resolved)
            except (TemplateError, ModelyardError) as exc:
                error = f"template: {exc}"[:MAX_ERROR_CHARS]
                await self._emit(RowResult(task.row, "failed", error=error, worker=self.worker))
                continue
            inputs[task.row] = resolved
            rows.append(task.row)
            requests.append((self._custom_id(task.row), body))
        if not rows:
            return None
        dep = self.target.dep
        sub = Submission(self.batch_id, uuid.uuid4().hex, dep.name, self.target.fmt, rows)
        self._save(sub)  # before anything reaches the provider: a kill from here on finds this job again
        try:
            sub.job_id = await self.client.submit(sub, requests, self._save)
        except JobError as exc:
            found = await self._find_quietly(sub)
            if found is None:
                for row in rows:
                    reason = f"the provider refused the batch job: {exc}"[:MAX_ERROR_CHARS]
                    await self._emit(RowResult(row, "failed", error=reason, worker=self.worker))
                sub.state = "collected"
                self._save(sub)
                return None
            sub.job_id = found
        sub.state = "submitted"
        self._save(sub)
        return sub

    async def _find_quietly(self, sub: Submission) -> str | None:
        try:
            return await self.client.find(sub, self._claimed())
        except JobError:
            return None

    # ------------------------------------------------------------------ resume

    async def _resumed(self) -> list[Submission]:
        """This batch's jobs that a previous session submitted and did not collect (found again when the
        session died between recording a job and learning its id). Rows of a job never created are left to
        be pulled again."""
        kept: list[Submission] = []
        for sub in self.store.submissions(self.batch_id):
            if sub.state == "collected":
                continue
            if sub.job_id is None:
                sub.job_id = await self.client.find(sub, self._claimed())
                if sub.job_id is None:
                    sub.state = "collected"  # never created: nothing to collect, its rows run again
                    self._save(sub)
                    continue
                sub.state = "submitted"
                self._save(sub)
            kept.append(sub)
        return kept

    def _claimed(self) -> set[str]:
        return {s.job_id for s in self.store.submissions(self.batch_id) if s.job_id}

    async def _resumed_inputs(self, rows: list[int]) -> dict[int, dict[str, Any]]:
        """The inputs of a resumed job's rows, as the driver hands them again (the outputs' templates read
        them); rows it never hands again (it stopped feeding) are evaluated without."""
        wanted = set(rows)
        while not self._feed_done.is_set() and not wanted <= self._live_inputs.keys():
            self._live_changed.clear()
            await self._live_changed.wait()
        found: dict[int, dict[str, Any]] = {}
        for row in rows:
            raw = self._live_inputs.pop(row, None)
            if raw is None:
                continue
            try:
                found[row] = resolve_inputs(self.workflow.spec, raw)
            except InputError:
                found[row] = raw
        return found

    # ------------------------------------------------------------------ rows

    async def _emit(self, result: RowResult) -> None:
        """Save a row's result and hand it on (not again when an earlier session saved it already)."""
        if self.store.save_row(self.batch_id, result):
            await self._queue.put(result)

    def _save(self, sub: Submission) -> None:
        self.store.save_submission(sub)
        self.store.flush()

    def _custom_id(self, row: int) -> str:
        return f"{self._prefix}{row}"

    def _context(self, row: int, inputs: dict[str, Any]) -> dict[str, Any]:
        spec = self.workflow.spec
        workflow_vars = {"name": spec.name, "dir": str(spec.base_dir), "run_id": f"{self.batch_id}:{row}"}
        return {"inputs": inputs, "workflow": workflow_vars}

    def _request_body(self, row: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """The step's call for this row, as the engine renders it, in the deployment's wire format."""
        context = self._context(row, inputs)
        templates = self.workflow.templates
        call = step_call(
            self.step,
            lambda template: templates.render(template, context),
            workflow=self.workflow.name,
            key=self.step.id,
            run_id=f"{self.batch_id}:{row}",
        )
        raw = chat_body(call)
        req = msgspec.convert(raw, ChatRequest)
        http = self.target.adapter.chat_call(self.target.dep, req, raw, False)
        body = _decode(http.body)
        if not isinstance(body, dict):
            raise BatchEngineError("the adapter built a request body that is not a JSON object")
        return body

    def _row_result(self, row: int, inputs: dict[str, Any] | None, outcome: Outcome) -> RowResult:
        """A job's answer for one row as the row's result: parsed and priced as a live call's, schema-checked."""
        step, dep = self.step, self.target.dep
        totals = StepTotals(calls=1)
        if outcome.body is None:
            totals.failed = 1
            error = f"step '{step.id}' failed: {outcome.error}"[:MAX_ERROR_CHARS]
            return RowResult(row, "failed", error=error, steps={step.qualname: totals}, calls=1, worker=self.worker)
        req = msgspec.convert({"model": step.model, "messages": [{"role": "user", "content": ""}]}, ChatRequest)
        try:
            completion = self.target.adapter.parse_chat(dep, req, outcome.body)
        except ModelyardError as exc:
            totals.failed = 1
            error = f"step '{step.id}' failed: unreadable answer: {exc}"[:MAX_ERROR_CHARS]
            return RowResult(row, "failed", error=error, steps={step.qualname: totals}, calls=1, worker=self.worker)
        usage = completion.usage
        price = self.router.price(dep.name)
        cost = cost_usd(usage, price) * (price.batch if price is not None else 0.0)
        totals.cost_usd, totals.prompt_tokens, totals.completion_tokens = cost, usage.prompt, usage.completion
        message = ((completion.body.get("choices") or [{}])[0].get("message")) or {}
        text = str(message.get("content") or "")
        result = RowResult(row, "succeeded", cost_usd=cost, session_cost_usd=cost, calls=1, worker=self.worker)
        result.steps = {step.qualname: totals}
        output: Any = text
        if step.output_schema is not None:
            try:
                output = parse_structured(text, step.output_schema)
            except AnswerInvalid as problem:
                totals.failed = 1
                result.status = "failed"
                reason = f"step '{step.id}' failed: the answer did not match output.schema: {problem}"
                result.error = reason[:MAX_ERROR_CHARS]
                return result
        result.outputs, result.error = self._outputs(row, inputs, output)
        typed = unrepaired_problems(self.workflow.spec, result.outputs)
        if typed:  # checked as steps' schemas are here: without a repair call
            result.status, result.error = "failed", typed[0][:MAX_ERROR_CHARS]
        return result

    def _outputs(self, row: int, inputs: dict[str, Any] | None, output: Any) -> tuple[dict[str, Any], str | None]:
        """The workflow's `outputs:` for one row, evaluated as the engine evaluates them."""
        context = self._context(row, inputs or {})
        context[self.step.id] = output
        outputs: dict[str, Any] = {}
        errors: list[str] = []
        for name, template in self.workflow.spec.outputs.items():
            try:
                outputs[name] = self.workflow.templates.evaluate(template, context)
            except TemplateError as exc:
                errors.append(f"output '{name}': {exc.message}")
        return outputs, (errors[0][:MAX_ERROR_CHARS] if errors else None)


def _custom_prefix(batch_id: str) -> str:
    """`{batch_id}:` for OpenAI would do, but Anthropic's custom ids are `[A-Za-z0-9_-]{1,64}`: one safe form."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", batch_id)[:48] + "_"


def _missing(state: str) -> str:
    return f"no result for this row (the job ended {state})"


__all__ = ["ProviderEngine", "choose_target", "open_provider_engine", "single_model_step"]
