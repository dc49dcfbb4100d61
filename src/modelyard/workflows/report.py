"""Reading a run: totals, the context-scoping figures, per-step tables, a text timeline, JSON.

"Pass everything" is the chain that context scoping replaces: the steps run one after another in one
shared context, so every call is sent its own instructions plus the output of every call before it,
whether it needs it or not. Each call's counterfactual is therefore its instruction tokens (its messages
rendered with all step data left out, inputs kept) plus the output tokens of every earlier call, and at
least what it really sent. Siblings of one fan-out are not "earlier" than each other, and the prompts of
earlier calls are not counted: the figure is conservative.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from modelyard.workflows.checkpoint import StoredRun
from modelyard.workflows.graph import critical_path
from modelyard.workflows.keys import depth as key_depth
from modelyard.workflows.keys import nested_rows, top_key
from modelyard.workflows.planner import WorkflowPlan
from modelyard.workflows.records import RunResult, StepRecord, StepState

_STATE_STYLE = {
    StepState.SUCCEEDED: "green",
    StepState.FAILED: "red",
    StepState.BLOCKED: "red",
    StepState.SKIPPED: "dim",
    StepState.STOPPED: "yellow",
    StepState.CANCELLED: "yellow",
    StepState.INTERRUPTED: "yellow",
    StepState.RUNNING: "cyan",
    StepState.PENDING: "dim",
}


@dataclass
class Summary:
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    full_context_tokens: int
    saved_pct: float | None
    wall_s: float
    critical_path_s: float
    critical_path: list[str]
    sum_steps_s: float
    calls: int
    cached_calls: int
    per_step_full: dict[str, int] = field(default_factory=dict)


def full_context_tokens(leaves: list[StepRecord]) -> dict[str, int]:
    """Each call's prompt tokens in a pass-everything chain (see the module docstring)."""
    done = [r for r in leaves if r.state is StepState.SUCCEEDED]
    produced: dict[tuple[int, ...], int] = {}
    for record in done:
        produced[tuple(record.order)] = produced.get(tuple(record.order), 0) + record.output_tokens
    before: dict[tuple[int, ...], int] = {}
    running = 0
    for order in sorted(produced):
        before[order] = running
        running += produced[order]
    figures: dict[str, int] = {}
    for call in done:
        if call.kind != "model":
            continue
        instructions = call.instruction_tokens or call.prompt_tokens
        figures[call.key] = max(call.prompt_tokens, instructions + before[tuple(call.order)])
    return figures


def summarize(result: RunResult) -> Summary:
    leaves = result.leaves
    full = full_context_tokens(leaves)
    sent = sum(r.prompt_tokens for r in leaves if r.key in full)
    total_full = sum(full.values())
    per_step: dict[str, int] = {}
    for key, tokens in full.items():
        top = top_key(key)
        per_step[top] = per_step.get(top, 0) + tokens
    durations = {sid: r.duration_s for sid, r in result.steps.items()}
    length, path = critical_path(result.deps, durations) if result.deps else (0.0, [])
    return Summary(
        cost_usd=result.cost_usd,
        prompt_tokens=sum(r.prompt_tokens for r in leaves),
        completion_tokens=sum(r.completion_tokens for r in leaves),
        full_context_tokens=total_full,
        saved_pct=(1 - sent / total_full) * 100 if total_full else None,
        wall_s=result.wall_s,
        critical_path_s=length,
        critical_path=path,
        sum_steps_s=sum(durations.values()),
        calls=sum(1 for r in leaves if r.state is StepState.SUCCEEDED),
        cached_calls=sum(1 for r in leaves if r.cached),
        per_step_full=per_step,
    )


# --------------------------------------------------------------------------- JSON


def result_json(result: RunResult) -> dict[str, Any]:
    """The whole run as JSON: status, outputs, totals, comparison and every record."""
    summary = summarize(result)
    return {
        "run_id": result.run_id,
        "workflow": result.workflow,
        "status": result.status.value,
        "message": result.message,
        "errors": result.errors,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "sessions": result.sessions,
        "totals": {
            "cost_usd": summary.cost_usd,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "pass_everything_prompt_tokens": summary.full_context_tokens,
            "context_saved_pct": summary.saved_pct,
            "wall_s": summary.wall_s,
            "critical_path_s": summary.critical_path_s,
            "critical_path": summary.critical_path,
            "sum_of_steps_s": summary.sum_steps_s,
            "calls": summary.calls,
            "cached_calls": summary.cached_calls,
        },
        "comparison": result.comparison,
        "steps": [record.to_dict() for record in result.records.values()],
    }


def result_from_stored(run: StoredRun) -> RunResult:
    """A RunResult rebuilt from the store, for `runs show` and `--resume` of a finished run."""
    records = dict(run.records)
    ends = [r.finished_at for r in records.values() if r.finished_at is not None]
    return RunResult(
        run_id=run.header.run_id,
        workflow=run.header.workflow,
        status=run.status,
        inputs=run.header.inputs,
        outputs=run.outputs,
        records=records,
        started_at=min((r.started_at for r in records.values() if r.started_at), default=run.started_at),
        finished_at=max(ends, default=run.updated_at),
        cost_usd=run.cost_usd,
        message=run.message,
        errors=run.errors,
        deps=run.header.deps,
        sessions=run.sessions,
        comparison=run.comparison,
    )


# --------------------------------------------------------------------------- tables


def _money(value: float) -> str:
    return f"${value:.4f}" if value < 10 else f"${value:,.2f}"


def _display_rows(result: RunResult) -> list[tuple[int, StepRecord]]:
    """Top-level steps, each loop followed by its rounds' steps (indented); fan-out items folded."""
    rows: list[tuple[int, StepRecord]] = []
    for key, record in result.steps.items():
        rows.append((0, record))
        rows += [(key_depth(k), result.records[k]) for k in nested_rows(result.records, key, record.kind)]
    return rows


def step_table(result: RunResult, summary: Summary) -> Table:
    full = full_context_tokens(result.leaves)
    table = Table(title=f"{result.workflow} - run {result.run_id}", title_justify="left")
    left = ("step", "state", "model", "served by", "note")
    names = ("step", "state", "model", "served by", "calls", "tokens sent", "pass-everything", "out")
    for name in (*names, "cost", "time", "note"):
        table.add_column(name, justify="left" if name in left else "right", overflow="fold")
    for depth, record in _display_rows(result):
        label = ("  " * depth) + (record.key[len(top_key(record.key)) + 1 :] if depth else record.key)
        sent_full = _record_full(record, full)
        calls = {"foreach": record.items, "loop": record.iterations}.get(record.kind, 1)
        note = record.error or record.note or ("reused from the store" if record.cached else "")
        if record.repaired:
            note = (note + "; " if note else "") + "repaired once"
        style = _STATE_STYLE.get(record.state, "")
        table.add_row(
            label,
            f"[{style}]{record.state.value}[/{style}]" if style else record.state.value,
            record.model or ("tool" if record.kind == "tool" else ""),
            record.deployment or "",
            str(calls) if record.state not in (StepState.SKIPPED, StepState.BLOCKED) else "",
            f"{record.prompt_tokens:,}",
            f"{sent_full:,}" if sent_full else "",
            f"{record.completion_tokens:,}",
            _money(record.cost_usd),
            f"{record.duration_s:.2f}s",
            note,
        )
    return table


def _record_full(record: StepRecord, full: dict[str, int]) -> int:
    if record.key in full:
        return full[record.key]
    return sum(v for k, v in full.items() if k.startswith((record.key + "[", record.key + "#", record.key + "/")))


def totals_lines(result: RunResult, summary: Summary) -> list[str]:
    cached = summary.cached_calls
    reused = f" ({cached} reused from the store, not paid again)" if cached else ""
    lines = [
        f"status: {result.status.value}" + (f" - {result.message}" if result.message else ""),
        f"cost: {_money(summary.cost_usd)} over {summary.calls} calls{reused}",
        f"tokens: {summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} completion",
    ]
    if summary.saved_pct is not None:
        lines.append(
            f"context scoping: {summary.prompt_tokens:,} prompt tokens sent vs "
            f"{summary.full_context_tokens:,} in a pass-everything chain ({summary.saved_pct:.0f}% saved)"
        )
    path = " -> ".join(summary.critical_path) or "-"
    lines.append(
        f"time: {summary.wall_s:.2f}s wall; critical path {summary.critical_path_s:.2f}s ({path});"
        f" sum of steps {summary.sum_steps_s:.2f}s"
    )
    lines.extend(comparison_lines(result.comparison))
    return lines


def comparison_lines(comparison: dict[str, Any] | None) -> list[str]:
    if not comparison:
        return []
    if "error" in comparison:
        return [f"cost comparison unavailable: {comparison['error']}"]
    per = comparison["per_tasks"]
    saving = comparison.get("saving_pct")
    return [
        f"cost per {per:,} tasks ({comparison['tasks']} measured): "
        f"all-premium ({comparison['premium_model']}) {_money(comparison['premium_per_tasks_usd'])}"
        f" vs smart routing {_money(comparison['routed_per_tasks_usd'])}"
        + (f" ({saving:.0f}% less)" if saving is not None else "")
    ]


def print_run(result: RunResult, console: Console) -> None:
    summary = summarize(result)
    console.print(step_table(result, summary))
    for line in totals_lines(result, summary):
        console.print(line, highlight=False, markup=False)
    if result.outputs:
        console.print("outputs:", highlight=False)
        for name, value in result.outputs.items():
            text = value if isinstance(value, str) else repr(value)
            console.print(f"  {name}: {_short(text, 300)}", highlight=False, markup=False)
    for error in result.errors:
        console.print(f"  ! {error}", style="red", highlight=False, markup=False)


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def timeline(result: RunResult, width: int = 50) -> list[str]:
    """One line per step: a bar from its start to its end on the run's time axis."""
    rows = [(depth, r) for depth, r in _display_rows(result) if r.started_at and r.finished_at]
    if not rows:
        return ["(no step ran)"]
    start = min(r.started_at for _, r in rows if r.started_at is not None)
    end = max(r.finished_at for _, r in rows if r.finished_at is not None)
    span = max(end - start, 1e-6)
    label_width = max(len(("  " * d) + r.key) for d, r in rows)
    lines = [f"{'':{label_width}}  0s{'':{width - 4}}{span:.2f}s"]
    for depth, record in rows:
        assert record.started_at is not None and record.finished_at is not None
        left = int((record.started_at - start) / span * width)
        length = max(1, round((record.finished_at - record.started_at) / span * width))
        bar = " " * left + ("#" if record.state is StepState.SUCCEEDED else "x") * min(length, width - left)
        label = ("  " * depth) + record.key
        lines.append(f"{label:{label_width}}  |{bar:{width}}| {record.duration_s:.2f}s {record.state.value}")
    return lines


def runs_table(rows: list[Any]) -> Table:
    table = Table(title="workflow runs", title_justify="left")
    for name in ("run id", "workflow", "status", "started", "calls done", "cost"):
        table.add_column(name, justify="right" if name in ("calls done", "cost") else "left")
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.created_at))
        done = str(row.steps_done)
        table.add_row(row.run_id, row.workflow, row.status.value, started, done, _money(row.cost_usd))
    return table


def plan_table(plan: WorkflowPlan) -> Table:
    table = Table(title=f"plan: {plan.workflow} (no model is called)", title_justify="left")
    left = ("step", "model", "would route to", "note")
    names = ("step", "model", "would route to", "calls", "prompt tok", "output tok", "cost", "latency")
    for name in (*names, "critical", "note"):
        table.add_column(name, justify="left" if name in left else "right")
    for row in plan.rows:
        table.add_row(
            ("  " * row.depth) + row.step,
            row.model or row.kind,
            row.deployment or "",
            str(row.calls),
            f"{row.prompt_tokens:,}",
            f"{row.output_tokens:,}",
            _money(row.cost_usd),
            f"{row.latency_ms / 1000:.2f}s",
            "*" if row.critical else "",
            row.note,
        )
    return table


def plan_lines(plan: WorkflowPlan) -> list[str]:
    path = " -> ".join(plan.critical_path) or "-"
    lines = [
        f"estimated cost: {_money(plan.cost_usd)}; tokens: {plan.prompt_tokens:,} prompt + "
        f"{plan.output_tokens:,} output",
        f"estimated time: critical path {plan.critical_path_ms / 1000:.2f}s ({path}); "
        f"sum of steps {plan.sum_latency_ms / 1000:.2f}s",
    ]
    return lines + [f"warning: {w}" for w in plan.warnings]
