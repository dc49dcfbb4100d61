"""The pass-rate matrix (target x task) of a run, as data: JSON, and the quality file routing reads.

A cell counts every case run of its target and task that was run (a case the budget skipped is not a
sample; an error is a failure). Accepted: pass rate ≥ the task's `min_pass_rate`, with at least one sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.acceptance.outcome import CaseRun
from modelyard.acceptance.runner import RunResult
from modelyard.acceptance.spec import Suite
from modelyard.acceptance.stats import median, wilson_interval

RESULTS_SCHEMA = "modelyard.acceptance-results/v1"
REPORT_SCHEMA = "modelyard.acceptance-report/v1"
#: Failed runs kept per cell for the report (the first ones, in job order).
FAILURES_KEPT = 5


@dataclass(slots=True)
class Cell:
    """One target x one task."""

    target: str
    task: str
    min_pass_rate: float
    passed: int = 0
    samples: int = 0
    errors: int = 0
    skipped: int = 0
    cached: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[CaseRun] = field(default_factory=list)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.samples if self.samples else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.passed, self.samples)

    @property
    def accepted(self) -> bool:
        rate = self.pass_rate
        return rate is not None and rate >= self.min_pass_rate

    @property
    def p50_ms(self) -> float | None:
        return median(self.latencies)

    def add(self, run: CaseRun) -> None:
        if not run.counted:
            self.skipped += 1
            return
        self.samples += 1
        self.passed += run.passed
        self.errors += run.status == "error"
        self.cost_usd += run.cost_usd
        if run.answer is not None:
            self.cached += run.answer.cached
            self.latencies.append(run.answer.latency_ms)
        if not run.passed and len(self.failures) < FAILURES_KEPT:
            self.failures.append(run)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {
            "pass_rate": self.pass_rate,
            "ci95": [round(low, 4), round(high, 4)],
            "passed": self.passed,
            "samples": self.samples,
            "accepted": self.accepted,
            "min_pass_rate": self.min_pass_rate,
            "errors": self.errors,
            "skipped": self.skipped,
            "cached": self.cached,
            "cost_usd": round(self.cost_usd, 8),
            "p50_latency_ms": None if self.p50_ms is None else round(self.p50_ms, 1),
            "failures": [_failure(run) for run in self.failures],
        }


def _failure(run: CaseRun) -> dict[str, Any]:
    failed = [f"{check.kind}: {check.detail}" for check in run.checks if not check.passed]
    return {
        "case": run.case,
        "repeat": run.repeat,
        "status": run.status,
        "why": run.error or "; ".join(failed),
        "answer": None if run.answer is None else run.answer.text[:500],
        "deployment": None if run.answer is None else run.answer.deployment,
    }


@dataclass(slots=True)
class Report:
    suite: str
    source: str
    tasks: list[str]
    targets: list[str]
    cells: dict[tuple[str, str], Cell]
    result: RunResult
    repeat: int
    generated_at: str

    def cell(self, target: str, task: str) -> Cell:
        return self.cells[(target, task)]

    def accepted(self, target: str) -> bool:
        """Accepted for every task of the suite."""
        return all(self.cell(target, task).accepted for task in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "schema": REPORT_SCHEMA,
            "suite": self.suite,
            "source": self.source,
            "generated_at": self.generated_at,
            "repeat": self.repeat,
            "tasks": self.tasks,
            "models": {
                target: {
                    "accepted": self.accepted(target),
                    "tasks": {task: self.cell(target, task).to_dict() for task in self.tasks},
                }
                for target in self.targets
            },
            "totals": {
                "case_runs": len(r.runs),
                "cost_usd": round(r.spent_usd, 8),
                "judge_cost_usd": round(r.judge_usd, 8),
                "cache_hits": r.cache_hits,
                "budget_usd": r.budget_usd,
                "budget_skipped": r.budget_skipped,
                "elapsed_s": round(r.elapsed_s, 3),
            },
        }


def build_report(suite: Suite, result: RunResult, repeat: int = 1) -> Report:
    tasks = list(suite.spec.tasks)
    targets = [target.name for target in result.targets]
    cells = {
        (target, task): Cell(target, task, suite.spec.tasks[task].min_pass_rate) for target in targets for task in tasks
    }
    for run in result.runs:
        cells[(run.model, run.task)].add(run)
    return Report(
        suite=suite.spec.name,
        source=suite.source,
        tasks=tasks,
        targets=targets,
        cells=cells,
        result=result,
        repeat=repeat,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def quality_results(report: Report, suite: Suite) -> dict[str, Any]:
    """The file `quality_from:` reads: per deployment and task, the pass rate and whether it is accepted.

    A pinned target's runs count for its deployment (errors as failures); a model group's answers count for
    the deployment that served each (a run that failed before any deployment answered is left out).

    A cell the run did not finish (the budget skipped some of its planned runs) is written with
    `complete: false` and `accepted: false` whatever its pass rate, so an `accepted: true` route keeps it out;
    a deployment none of whose runs for a task took place is written too (`cases: 0`, `pass_rate: 0`), rather
    than left out, where it would keep whatever an earlier file said."""
    counts: dict[str, dict[str, list[int]]] = {}
    short: set[tuple[str, str]] = set()  # (deployment, task) cells some of whose planned runs were skipped
    targets = {target.name: target for target in report.result.targets}
    cut = {(run.model, run.task) for run in report.result.runs if not run.counted}
    for run in report.result.runs:
        target = targets.get(run.model)
        pinned = target.pinned if target is not None else None
        if not run.counted:
            for dep in target.deployments if target is not None else ():
                short.add((dep.name, run.task))
                counts.setdefault(dep.name, {}).setdefault(run.task, [0, 0])
            continue
        name = pinned.name if pinned is not None else (run.answer.deployment if run.answer is not None else None)
        if name is None:
            continue
        tally = counts.setdefault(name, {}).setdefault(run.task, [0, 0])
        tally[0] += run.passed
        tally[1] += 1
        if (run.model, run.task) in cut:  # whichever deployment of a cut target served it
            short.add((name, run.task))
    deployments: dict[str, dict[str, Any]] = {}
    for name, tasks in counts.items():
        deployments[name] = {}
        for task, (passed, total) in tasks.items():
            rate = passed / total if total else 0.0
            floor = suite.spec.tasks[task].min_pass_rate
            complete = (name, task) not in short
            deployments[name][task] = {
                "pass_rate": round(rate, 4),
                "accepted": complete and total > 0 and rate >= floor,
                "cases": total,
                "min_pass_rate": floor,
                "complete": complete,
            }
    return {
        "schema": RESULTS_SCHEMA,
        "suite": report.suite,
        "generated_at": report.generated_at,
        "deployments": deployments,
    }


def incomplete_cells(quality: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(deployment, task, samples) of the cells a quality file marks `complete: false`."""
    return [
        (name, task, int(cell["cases"]))
        for name, tasks in quality["deployments"].items()
        for task, cell in tasks.items()
        if not cell.get("complete", True)
    ]


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
