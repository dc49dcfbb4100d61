"""What a batch session did, summed over its rows: per-step calls, tokens and cost; failures grouped by error.

Memory is bounded whatever the row count: steps are keyed by the workflow's step names, and failure groups
by the error text with digits and ids normalised away (at most `MAX_GROUPS` groups, the rest counted as one).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from modelyard.batch.model import BatchTotals, RowResult, StepTotals

MAX_GROUPS = 1_000
TOP_GROUPS = 10
EXAMPLES = 3
_OTHER = "(other errors)"
#: Ids first (uuids, long hex, quoted strings of digits), then any number: the same error groups together.
_NORMALISE = (
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", re.I), "<id>"),
    (re.compile(r"\b[A-Za-z]+[-_](?=[A-Za-z0-9]*\d)[A-Za-z0-9]{6,}\b"), "<id>"),
    (re.compile(r"\d+(?:\.\d+)?"), "#"),
)


def error_group(error: str | None) -> str:
    """The error with its variable parts replaced: `row 12 timed out after 30.5s` -> `row # timed out after #s`."""
    text = (error or "(no message)").strip()
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    return text[:200]


@dataclass
class FailureGroup:
    count: int = 0
    examples: list[int] = field(default_factory=list)
    sample: str = ""


@dataclass
class BatchSummary:
    """Accumulates results as they come (one session); `render` prints the tables."""

    steps: dict[str, StepTotals] = field(default_factory=dict)
    failures: dict[str, FailureGroup] = field(default_factory=dict)
    by_status: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    reused: int = 0

    def add(self, result: RowResult) -> None:
        self.rows += 1
        self.by_status[result.status] += 1
        self.cost_usd += result.session_cost_usd
        self.calls += result.calls
        self.reused += result.reused
        for name, totals in result.steps.items():
            self.steps.setdefault(name, StepTotals()).add(totals)
        if result.status != "succeeded":
            self._failure(result)

    def _failure(self, result: RowResult) -> None:
        key = error_group(result.error)
        group = self.failures.get(key)
        if group is None:
            if len(self.failures) >= MAX_GROUPS:
                key = _OTHER
                group = self.failures.setdefault(_OTHER, FailureGroup(sample=_OTHER))
            else:
                group = self.failures[key] = FailureGroup(sample=(result.error or "(no message)")[:300])
        group.count += 1
        if len(group.examples) < EXAMPLES:
            group.examples.append(result.row)

    def top_failures(self, n: int = TOP_GROUPS) -> list[tuple[str, FailureGroup]]:
        return sorted(self.failures.items(), key=lambda item: (-item[1].count, item[0]))[:n]

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "cost_usd": self.cost_usd,
            "calls": self.calls,
            "reused": self.reused,
            "by_status": dict(self.by_status),
            "steps": {name: vars(totals) for name, totals in self.steps.items()},
            "failures": [
                {"error": key, "count": g.count, "example_rows": g.examples, "sample": g.sample}
                for key, g in self.top_failures()
            ],
        }


def steps_table(summary: BatchSummary) -> Table:
    table = Table(title="per step (this session)", title_justify="left")
    for column in ("step", "calls", "failed", "tokens in", "tokens out", "cost $"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for name, t in summary.steps.items():
        table.add_row(name, *_step_cells(t))
    total = StepTotals()
    for t in summary.steps.values():
        total.add(t)
    table.add_row("total", *_step_cells(total), style="bold")
    return table


def _step_cells(t: StepTotals) -> list[str]:
    return [f"{t.calls:,}", f"{t.failed:,}", f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}", _usd(t.cost_usd)]


def failures_table(summary: BatchSummary) -> Table | None:
    if not summary.failures:
        return None
    table = Table(title="failures by error (top 10)", title_justify="left")
    table.add_column("rows", justify="right")
    table.add_column("error")
    table.add_column("example rows")
    for _, group in summary.top_failures():
        table.add_row(f"{group.count:,}", group.sample, ", ".join(str(r) for r in group.examples))
    return table


def states_line(totals: BatchTotals, rows: int) -> str:
    parts = [f"{state} {count:,}" for state, count in sorted(totals.by_status.items())]
    left = max(0, rows - totals.done)
    if left:
        parts.append(f"not run {left:,}")
    return "rows: " + (", ".join(parts) or "none")


def _usd(value: float) -> str:
    return f"{value:.4f}" if value < 100 else f"{value:,.2f}"


def print_tables(summary: BatchSummary, console: Console) -> None:
    console.print(steps_table(summary))
    failures = failures_table(summary)
    if failures is not None:
        console.print(failures)


@dataclass
class BatchReport:
    """One session of a batch, as the driver ends it: the summary, the store's totals and how to continue."""

    batch_id: str
    workflow: str
    rows: int
    #: Rows that had a result before this session.
    done_before: int
    totals: BatchTotals
    summary: BatchSummary
    wall_s: float
    out: str | None
    limit_usd: float | None = None
    #: Every session's spend, and the budget's part of it (this session's rows, plus what was spent before).
    spent_usd: float = 0.0
    stopped_by_budget: bool = False
    interrupted: bool = False

    @property
    def left(self) -> int:
        return max(0, self.rows - self.totals.done)

    @property
    def rows_per_s(self) -> float:
        return self.summary.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def all_succeeded(self) -> bool:
        return self.left == 0 and self.totals.by_status.get("succeeded", 0) == self.rows

    def resume_command(self) -> str:
        """The exact command that continues this batch (with room in the budget when the budget stopped it)."""
        command = f"modelyard batch --resume {self.batch_id}"
        if self.stopped_by_budget and self.limit_usd is not None:
            per_row = self.spent_usd / max(1, self.totals.done)
            command += f" --max-cost-usd {_raise_to(self.spent_usd + per_row * self.left * 1.1)}"
        return command

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "workflow": self.workflow,
            "rows": self.rows,
            "done_before": self.done_before,
            "left": self.left,
            "by_status": dict(self.totals.by_status),
            "cost_usd": self.totals.cost_usd,
            "spent_usd": self.spent_usd,
            "max_cost_usd": self.limit_usd,
            "stopped_by_budget": self.stopped_by_budget,
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
            "rows_per_s": self.rows_per_s,
            "out": self.out,
            "resume": self.resume_command() if self.left else None,
            "session": self.summary.to_json(),
        }


def _raise_to(value: float) -> str:
    """A budget figure a person would type: rounded up to 2 significant digits."""
    if value <= 0:
        return "0.01"
    digits = max(0, 1 - math.floor(math.log10(value)))
    scale = 10**digits
    return f"{math.ceil(value * scale) / scale:.{digits}f}"


def print_report(report: BatchReport, console: Console) -> None:
    """The end-of-batch summary: the step and failure tables, then totals, speed, output and how to resume."""
    print_tables(report.summary, console)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(states_line(report.totals, report.rows))
    cost = f"cost: ${report.totals.cost_usd:.4f} in results"
    if report.spent_usd > report.totals.cost_usd + 1e-12:
        cost += f", ${report.spent_usd:.4f} spent in all (steps of unfinished rows included)"
    if report.limit_usd is not None:
        cost += f"; budget ${report.limit_usd:g}"
    say(cost)
    say(
        f"this session: {report.summary.rows:,} rows in {report.wall_s:.1f}s ({report.rows_per_s:.1f} rows/s), "
        f"{report.summary.calls:,} calls, {report.summary.reused:,} steps reused, ${report.summary.cost_usd:.4f}"
    )
    if report.out:
        say(f"output: {report.out}")
    say(f"batch id: {report.batch_id}  (modelyard batches show {report.batch_id})")
    if report.stopped_by_budget:
        say(f"the budget stopped the batch: {report.left:,} rows left. Continue with: {report.resume_command()}")
    elif report.interrupted and report.left:
        say(f"interrupted: {report.left:,} rows left. Continue with: {report.resume_command()}")
    elif report.left:
        say(f"{report.left:,} rows left. Continue with: {report.resume_command()}")
