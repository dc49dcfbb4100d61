"""`modelyard plan`: what a run would cost and take, per step and on the critical path, calling no model.

Outputs of earlier steps do not exist yet, so each `{{ expression }}` in a prompt is replaced by filler
text the size of the data it reads: an input's actual (or default) value; a step's estimated answer
(`estimate.output_tokens`, else the backend's guess); an `item`, one element of its list. The backend's
`estimate` then gives the deployment the call would route to, its tokens, cost and latency. Fan-outs
multiply by `estimate.items` (else the literal list's length, else DEFAULT_ITEMS); loops by
`estimate.iterations` (else `max_iterations`: the worst case). Conditional steps are counted (worst case).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from modelyard.accounting.tokens import count_message_dicts, count_value, filler
from modelyard.workflows.backend import ModelBackend
from modelyard.workflows.graph import critical_path, topo_order
from modelyard.workflows.spec import StepSpec, WorkflowSpec
from modelyard.workflows.stepcall import step_call
from modelyard.workflows.templates import TemplateEngine, TemplateError

DEFAULT_ITEMS = 5
DEFAULT_OUTPUT_TOKENS = 200
DEFAULT_ITEM_TOKENS = 20
DEFAULT_INPUT_TOKENS = 20
#: An approval step's output as a later prompt sees it: {approved, comment, decided_by, decided_at}.
APPROVAL_OUTPUT_TOKENS = 40
_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_STATEMENT = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.DOTALL)


@dataclass
class PlanRow:
    step: str
    kind: str
    model: str | None = None
    deployment: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    conditional: bool = False
    critical: bool = False
    note: str = ""
    depth: int = 0


@dataclass
class WorkflowPlan:
    """What a run of a workflow would cost and take (named apart from routing.plan.Plan, one request's route)."""

    workflow: str
    rows: list[PlanRow]
    cost_usd: float
    prompt_tokens: int
    output_tokens: int
    critical_path_ms: float
    critical_path: list[str]
    sum_latency_ms: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "cost_usd": self.cost_usd,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "critical_path_ms": self.critical_path_ms,
            "critical_path": self.critical_path,
            "sum_latency_ms": self.sum_latency_ms,
            "warnings": self.warnings,
            "steps": [vars(row) for row in self.rows],
        }


class WorkflowPlanner:
    def __init__(self, spec: WorkflowSpec, backend: ModelBackend, inputs: dict[str, Any]) -> None:
        self.spec = spec
        self.backend = backend
        self.inputs = inputs
        self.templates = TemplateEngine()
        self.rows: list[PlanRow] = []
        self.warnings: list[str] = []
        self._no_estimate = False
        self._item_tokens = DEFAULT_ITEM_TOKENS

    def plan(self) -> WorkflowPlan:
        latencies = self._graph(self.spec.steps, {}, depth=0)
        length, path = critical_path(self.spec.deps(), latencies)
        for row in self.rows:
            row.critical = row.step in path
        budget = self.spec.budget
        cost = sum(r.cost_usd for r in self.rows if r.calls and r.kind in ("model", "tool"))
        if budget.max_cost_usd is not None and cost > budget.max_cost_usd:
            self.warnings.append(
                f"estimated cost ${cost:.4f} is over the ${budget.max_cost_usd:g} budget: the run would stop"
            )
        if budget.max_seconds is not None and length / 1000 > budget.max_seconds:
            over = f"estimated critical path {length / 1000:.1f}s is over the {budget.max_seconds:g}s budget"
            self.warnings.append(over)
        leaves = [r for r in self.rows if r.kind in ("model", "tool")]
        return WorkflowPlan(
            workflow=self.spec.name,
            rows=self.rows,
            cost_usd=cost,
            prompt_tokens=sum(r.prompt_tokens for r in leaves),
            output_tokens=sum(r.output_tokens for r in leaves),
            critical_path_ms=length,
            critical_path=path,
            sum_latency_ms=sum(latencies.values()),
            warnings=self.warnings,
        )

    def _graph(self, steps: dict[str, StepSpec], sizes: dict[str, int], depth: int) -> dict[str, float]:
        """Plan each step in dependency order; returns each step's estimated wall time (ms)."""
        latencies: dict[str, float] = {}
        deps = {sid: [d for d in s.needs if d in steps] for sid, s in steps.items()}
        for sid in topo_order(deps):
            latencies[sid] = self._step(steps[sid], sizes, depth)
        return latencies

    def _step(self, step: StepSpec, sizes: dict[str, int], depth: int) -> float:
        if step.loop is not None:
            return self._loop(step, sizes, depth)
        if step.approve is not None:  # no call, no money; the time a person takes is not estimated
            row = PlanRow(step.qualname, "approval", depth=depth, conditional=step.when is not None)
            row.note = "approval: waits for a person (not in the time estimate)"
            self.rows.append(row)
            sizes[step.id] = APPROVAL_OUTPUT_TOKENS
            return 0.0
        if step.workflow is not None:
            return self._subworkflow(step, sizes, depth)
        items = self._items(step) if step.foreach is not None else 1
        row = PlanRow(step.qualname, "model" if step.kind == "model" else "tool", step.model, depth=depth)
        row.conditional = step.when is not None
        row.calls = items
        if step.kind == "tool":
            output = step.estimate.output_tokens or DEFAULT_OUTPUT_TOKENS
            row.output_tokens = output * items
            row.note = "tool: time and output not estimated" if not step.estimate.output_tokens else "tool"
            self.rows.append(row)
            sizes[step.id] = output * items
            return 0.0
        if isinstance(step.foreach, str):
            self._item_tokens = max(1, self._expression_tokens(step.foreach, sizes) // max(1, items))
        per_call = self._estimate_call(step, sizes, row)
        row.prompt_tokens *= items
        row.output_tokens *= items
        row.cost_usd *= items
        width = min(step.max_parallel or self.spec.max_parallel, self.spec.max_parallel)
        waves = math.ceil(items / max(1, width))
        row.latency_ms = per_call * waves
        if step.foreach is not None:
            row.note = f"fan-out x{items}" + (" (estimate.items)" if step.estimate.items else " (assumed)")
        if row.conditional:
            row.note = (row.note + "; " if row.note else "") + "conditional (counted)"
        self.rows.append(row)
        sizes[step.id] = row.output_tokens
        self._item_tokens = DEFAULT_ITEM_TOKENS
        return row.latency_ms

    def _loop(self, step: StepSpec, sizes: dict[str, int], depth: int) -> float:
        assert step.loop is not None
        rounds = step.estimate.iterations or step.loop.max_iterations
        row = PlanRow(step.qualname, "loop", depth=depth, conditional=step.when is not None)
        why = " (estimate.iterations)" if step.estimate.iterations else " (worst case)"
        row.note = f"x{rounds} rounds{why}"
        self.rows.append(row)
        first = len(self.rows)
        inner_sizes = {name: sizes[name] for name in step.needs if name in sizes}
        inner_latency = self._graph(step.loop.steps, inner_sizes, depth + 1)
        inner_deps = {sid: [d for d in s.needs if d in step.loop.steps] for sid, s in step.loop.steps.items()}
        round_ms, _ = critical_path(inner_deps, inner_latency)
        for inner in self.rows[first:]:
            inner.calls *= rounds
            inner.prompt_tokens *= rounds
            inner.output_tokens *= rounds
            inner.cost_usd *= rounds
            inner.latency_ms *= rounds
        parts = [r for r in self.rows[first:] if r.kind in ("model", "tool")]  # each call once
        row.calls = sum(r.calls for r in parts)
        row.prompt_tokens = sum(r.prompt_tokens for r in parts)
        row.output_tokens = sum(r.output_tokens for r in parts)
        row.cost_usd = sum(r.cost_usd for r in parts)
        row.latency_ms = round_ms * rounds
        sizes[step.id] = sum(inner_sizes[s] for s in step.loop.steps if s in inner_sizes)
        return row.latency_ms

    def _subworkflow(self, step: StepSpec, sizes: dict[str, int], depth: int) -> float:
        """The included workflow planned as its own graph (its inputs sized like a prompt's data), its rows
        listed under this step as `step/child`, times the step's fan-out."""
        assert step.workflow is not None
        child = step.workflow.spec
        items = self._items(step) if step.foreach is not None else 1
        row = PlanRow(step.qualname, "workflow", depth=depth, conditional=step.when is not None)
        self.rows.append(row)
        if isinstance(step.foreach, str):
            self._item_tokens = max(1, self._expression_tokens(step.foreach, sizes) // max(1, items))
        given = {n: self._sized(v, sizes) if isinstance(v, str) else v for n, v in step.workflow.inputs.items()}
        defaults = {n: d.default for n, d in child.inputs.items() if not d.required}
        nested = WorkflowPlanner(child, self.backend, {**defaults, **given})
        child_sizes: dict[str, int] = {}
        round_ms, _ = critical_path(child.deps(), nested._graph(child.steps, child_sizes, depth + 1))
        width = min(step.max_parallel or self.spec.max_parallel, self.spec.max_parallel)
        waves = math.ceil(items / max(1, width))
        for inner in nested.rows:
            inner.step = f"{step.qualname}/{inner.step}"
            inner.calls *= items
            inner.prompt_tokens *= items
            inner.output_tokens *= items
            inner.cost_usd *= items
            inner.latency_ms *= waves
        self.rows.extend(nested.rows)
        self.warnings.extend(w for w in nested.warnings if w not in self.warnings)
        self._no_estimate = self._no_estimate or nested._no_estimate
        parts = [r for r in nested.rows if r.kind in ("model", "tool")]
        row.calls = sum(r.calls for r in parts)
        row.prompt_tokens = sum(r.prompt_tokens for r in parts)
        row.output_tokens = sum(r.output_tokens for r in parts)
        row.cost_usd = sum(r.cost_usd for r in parts)
        row.latency_ms = round_ms * waves
        row.note = f"sub-workflow {step.workflow.path}" + (f", fan-out x{items}" if step.foreach is not None else "")
        sizes[step.id] = step.estimate.output_tokens or sum(child_sizes.values()) * items
        self._item_tokens = DEFAULT_ITEM_TOKENS
        return row.latency_ms

    def _items(self, step: StepSpec) -> int:
        if step.estimate.items:
            return step.estimate.items
        if isinstance(step.foreach, list):
            return len(step.foreach)
        return DEFAULT_ITEMS

    def _estimate_call(self, step: StepSpec, sizes: dict[str, int], row: PlanRow) -> float:
        """Fill one call's row from the backend's estimate; returns its latency (ms)."""
        call = step_call(
            step, lambda template: self._sized(template, sizes), workflow=self.spec.name, key=step.qualname
        )
        try:
            estimate = self.backend.estimate(call)
        except NotImplementedError:
            if not self._no_estimate:
                self.warnings.append("the backend cannot estimate: deployments, cost and latency are unknown")
            self._no_estimate = True
            row.prompt_tokens = count_message_dicts(call.messages)
            row.output_tokens = step.estimate.output_tokens or step.max_tokens or DEFAULT_OUTPUT_TOKENS
            row.note = "no estimate"
            return 0.0
        row.deployment = estimate.deployment
        row.prompt_tokens = estimate.prompt_tokens
        row.output_tokens = estimate.output_tokens
        row.cost_usd = estimate.cost_usd
        return estimate.latency_ms

    def _sized(self, template: str, sizes: dict[str, int]) -> str:
        """The template with each expression replaced by filler as large as the data it reads."""
        text = _STATEMENT.sub("", template)
        return _EXPRESSION.sub(lambda m: filler(self._expression_tokens(m.group(1), sizes)), text)

    def _expression_tokens(self, expression: str, sizes: dict[str, int]) -> int:
        try:
            refs = self.templates.references("{{" + expression + "}}")
        except TemplateError:
            return DEFAULT_ITEM_TOKENS
        total = 0
        for name in refs.names:
            if name == "inputs":
                fields = refs.input_fields or {n: 0 for n in self.inputs}
                total += sum(self._input_tokens(f) for f in fields)
            elif name in sizes:
                total += sizes[name]
            elif name == "item":
                total += self._item_tokens
            elif name == "iteration":
                total += DEFAULT_OUTPUT_TOKENS // 2
        return total or 5

    def _input_tokens(self, name: str) -> int:
        value = self.inputs.get(name)
        return count_value(value) if value is not None else DEFAULT_INPUT_TOKENS


def plan_workflow(spec: WorkflowSpec, backend: ModelBackend, inputs: dict[str, Any] | None = None) -> WorkflowPlan:
    return WorkflowPlanner(spec, backend, dict(inputs or {})).plan()
