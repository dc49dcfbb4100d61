"""The Python API: `Workflow.from_yaml(path)`, `await workflow.run(inputs, backend=...)`, events, resume.

```python
workflow = Workflow.from_yaml("examples/workflows/research.yaml")
result = await workflow.run({"goal": "..."}, backend=backend)      # RunResult, typed per-step records
async for event in (stream := workflow.stream({"goal": "..."}, backend=backend)):
    print(event.kind, event.key)
print(stream.result.status)
async for event in workflow.stream({"goal": "..."}, backend=backend, tokens=True):
    if event.kind == "step_token":                                   # a model step's text as it arrives
        print(event.step, event.item, event.message)
```
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.backend import ModelBackend
from modelyard.workflows.checkpoint import RunStore, load_run
from modelyard.workflows.engine import Engine, EngineOptions, Listener
from modelyard.workflows.event_queue import DEFAULT_LIMIT, EventQueue
from modelyard.workflows.inputs import resolve_inputs
from modelyard.workflows.planner import WorkflowPlan, plan_workflow
from modelyard.workflows.records import RunEvent, RunResult, RunStatus
from modelyard.workflows.spec import WorkflowSpec, load_workflow, parse_workflow
from modelyard.workflows.templates import TemplateEngine


class ResumeError(ModelyardError, RuntimeError):
    pass


class Workflow:
    """A validated workflow, ready to plan and run any number of times."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        #: Compiled templates, shared by every run of this workflow.
        self.templates = TemplateEngine()

    @classmethod
    def from_yaml(cls, path: str | Path) -> Workflow:
        """Read and validate a file; raises WorkflowError with every problem at file:line."""
        return cls(load_workflow(path))

    @classmethod
    def from_string(cls, text: str, name: str = "<string>") -> Workflow:
        return cls(parse_workflow(text, name))

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(
        self,
        inputs: dict[str, Any] | None = None,
        *,
        backend: ModelBackend | None = None,
        router: ModelBackend | None = None,
        store: RunStore | None = None,
        run_id: str | None = None,
        listener: Listener | None = None,
        options: EngineOptions | None = None,
    ) -> RunResult:
        """Run once. `router` is an alias of `backend`: anything that implements ModelBackend."""
        chosen = _backend(backend, router)
        engine = Engine(
            self.spec,
            chosen,
            inputs=resolve_inputs(self.spec, inputs),
            store=store,
            run_id=run_id,
            listener=listener,
            options=options,
            templates=self.templates,
        )
        return await engine.run()

    def stream(self, inputs: dict[str, Any] | None = None, *, tokens: bool = False, **kwargs: Any) -> RunStream:
        """The run's events as an async iterator; `.result` holds the RunResult once it is exhausted.

        `tokens`: model steps' text as it arrives too, as `step_token` events (see `streaming`); a reader
        that falls behind gets a call's waiting tokens merged into fewer events (see `event_queue`).
        """
        if tokens:
            kwargs["options"] = dataclasses.replace(kwargs.get("options") or EngineOptions(), stream=True)
        return RunStream(lambda listener: self.run(inputs, listener=listener, **kwargs))

    def plan(self, inputs: dict[str, Any] | None = None, *, backend: ModelBackend) -> WorkflowPlan:
        """Per-step estimates and the critical path, from the backend's prices and latencies; no calls."""
        return plan_workflow(self.spec, backend, resolve_inputs(self.spec, inputs))


async def resume_run(
    run_id: str,
    *,
    backend: ModelBackend,
    store: RunStore,
    spec: WorkflowSpec | None = None,
    listener: Listener | None = None,
    options: EngineOptions | None = None,
    force: bool = False,
) -> RunResult:
    """Continue a run from its log: finished calls are reused (not re-run, not paid), the rest run.

    The workflow is re-read from the text stored with the run unless `spec` is given; its inputs are the
    run's own. A run whose process still looks alive is refused unless `force`.
    """
    stored = load_run(store, run_id)
    if stored is None:
        raise ResumeError(f"no run {run_id!r} in the store")
    if stored.status is RunStatus.RUNNING and not force:
        raise ResumeError(f"run {run_id} still looks alive (its process is running); use force to resume")
    if spec is None:
        spec = parse_workflow(stored.header.text, stored.header.source)
    engine = Engine(
        spec,
        backend,
        inputs=resolve_inputs(spec, stored.header.inputs),
        store=store,
        resume=stored,
        listener=listener,
        options=options,
    )
    return await engine.run()


def _backend(backend: ModelBackend | None, router: ModelBackend | None) -> ModelBackend:
    chosen = backend if backend is not None else router
    if chosen is None:
        raise TypeError("run() needs backend= (or router=): the gateway that serves the model calls")
    return chosen


class RunStream:
    """Async iterator over a run's events; the run starts on the first `__anext__`.

    The run never waits for the reader; what it has not read yet is bounded (`event_queue`): past
    `limit` waiting events, a call's new tokens join its newest waiting token event instead of queueing.
    """

    def __init__(self, start: Callable[[Listener], Coroutine[Any, Any, RunResult]], limit: int = DEFAULT_LIMIT) -> None:
        self._start = start
        self._queue = EventQueue(limit)
        self._task: asyncio.Task[RunResult] | None = None
        self.result: RunResult | None = None

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> RunEvent:
        if self._task is None:
            self._task = asyncio.create_task(self._start(self._queue.put_nowait))
        while self._queue.empty():
            if self._task.done():
                self.result = self._task.result()
                raise StopAsyncIteration
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
        return self._queue.get_nowait()
