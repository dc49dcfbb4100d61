"""`plan` estimates without calling a model; the report's totals, context figures, comparison, timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.workflows import Workflow, load_workflow
from modelyard.workflows.backend import ModelCall
from modelyard.workflows.planner import DEFAULT_ITEMS, plan_workflow
from modelyard.workflows.records import RunResult, RunStatus, StepRecord, StepState
from modelyard.workflows.report import full_context_tokens, result_json, summarize, timeline
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow


class CountingBackend(ScriptedBackend):
    """Refuses to be called: plan must only estimate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.estimates: list[ModelCall] = []

    async def call(self, call: ModelCall) -> Any:
        raise AssertionError("plan called a model")

    def estimate(self, call: ModelCall) -> Any:
        self.estimates.append(call)
        return super().estimate(call)


def test_plan_of_the_research_example(examples_dir: Path) -> None:
    spec = load_workflow(examples_dir / "research.yaml")
    backend = CountingBackend(delays={"smart": 2.0, "fast": 0.5})
    plan = Workflow(spec).plan({"goal": "gateways"}, backend=backend)
    rows = {row.step: row for row in plan.rows}
    assert list(rows) == ["plan", "search", "analyze", "synthesize"]
    assert rows["plan"].deployment == "smart@scripted" and rows["plan"].calls == 1
    assert rows["search"].calls == 4 and "fan-out x4" in rows["search"].note  # estimate.items: 4
    assert rows["search"].latency_ms == pytest.approx(500.0)  # 4 items, max_parallel 5: one wave
    assert rows["synthesize"].conditional
    assert plan.critical_path == ["plan", "search", "analyze", "synthesize"]
    assert plan.critical_path_ms == pytest.approx(2000 + 500 + 500 + 2000)
    assert plan.cost_usd == pytest.approx(sum(r.cost_usd for r in plan.rows))
    assert rows["analyze"].prompt_tokens > rows["search"].output_tokens  # it reads every search answer
    assert rows["search"].output_tokens == 4 * 250
    assert len(backend.estimates) == 4


def test_plan_fan_out_width_waves_and_default_items() -> None:
    spec = workflow(
        """
        max_parallel: 4
        steps:
          src: {model: m, prompt: list things}
          each: {model: m, needs: [src], foreach: "{{ src }}", max_parallel: 2, prompt: "{{ item }}"}
          lit: {model: m, foreach: [a, b, c], prompt: "{{ item }}"}
        """
    )
    plan = plan_workflow(spec, ScriptedBackend(delay_s=1.0))
    rows = {row.step: row for row in plan.rows}
    assert rows["each"].calls == DEFAULT_ITEMS and "(assumed)" in rows["each"].note
    assert rows["each"].latency_ms == pytest.approx(1000.0 * 3)  # 5 items two at a time: 3 waves
    assert rows["lit"].calls == 3
    assert plan.critical_path == ["src", "each"] and plan.critical_path_ms == pytest.approx(4000)
    assert plan.sum_latency_ms == pytest.approx(5000)


def test_plan_of_a_loop_counts_its_rounds(examples_dir: Path) -> None:
    plan = plan_workflow(load_workflow(examples_dir / "code_review.yaml"), ScriptedBackend(delay_s=1.0))
    rows = {row.step: row for row in plan.rows}
    assert rows["build"].kind == "loop" and "x2 rounds" in rows["build"].note
    assert rows["build.code"].calls == 2 and rows["build.review"].calls == 2
    inner_cost = rows["build.code"].cost_usd + rows["build.review"].cost_usd
    assert rows["build"].cost_usd == pytest.approx(inner_cost)
    assert rows["build"].latency_ms == pytest.approx(4000)  # 2 rounds x (code -> review)
    assert plan.critical_path == ["architect", "build"] and plan.critical_path_ms == pytest.approx(5000)
    assert plan.cost_usd == pytest.approx(rows["architect"].cost_usd + rows["build"].cost_usd)


def test_plan_warns_over_budget_and_without_estimates() -> None:
    spec = workflow("budget: {max_cost_usd: 0.000001}\nsteps:\n  a: {model: m, prompt: hello}\n")
    plan = plan_workflow(spec, ScriptedBackend())
    assert any("over the $1e-06 budget" in w for w in plan.warnings)

    class Blind(ScriptedBackend):
        def estimate(self, call: ModelCall) -> Any:
            raise NotImplementedError

    plan = plan_workflow(spec, Blind())
    assert plan.rows[0].deployment is None and plan.rows[0].prompt_tokens > 0
    assert any("cannot estimate" in w for w in plan.warnings)
    assert json.loads(json.dumps(plan.to_json()))["steps"][0]["step"] == "a"


# --------------------------------------------------------------------------- report


def _leaf(key: str, order: list[int], prompt: int, instructions: int, out: int, kind: str = "model") -> StepRecord:
    record = StepRecord(key, key.split("[")[0], kind, StepState.SUCCEEDED, order=order)
    record.prompt_tokens, record.instruction_tokens, record.output_tokens = prompt, instructions, out
    return record


def test_pass_everything_counts_every_earlier_output() -> None:
    leaves = [
        _leaf("load", [0], 0, 0, 1000, kind="tool"),
        _leaf("each[0]", [1], 60, 50, 10),
        _leaf("each[1]", [1], 60, 50, 10),
        _leaf("sum", [2], 100, 40, 30),
    ]
    figures = full_context_tokens(leaves)
    assert figures == {"each[0]": 50 + 1000, "each[1]": 50 + 1000, "sum": 40 + 1000 + 20}
    # never less than what was really sent
    assert full_context_tokens([_leaf("a", [0], 500, 10, 1)]) == {"a": 500}


async def test_summary_json_and_timeline_of_a_real_run(examples_dir: Path) -> None:
    spec = load_workflow(examples_dir / "research.yaml")
    result = await Workflow(spec).run(backend=ScriptedBackend(delay_s=0.02))
    summary = summarize(result)
    assert summary.prompt_tokens == sum(r.prompt_tokens for r in result.leaves)
    assert summary.full_context_tokens > summary.prompt_tokens
    assert summary.saved_pct is not None and 0 < summary.saved_pct < 100
    assert summary.critical_path == ["plan", "search", "analyze", "synthesize"]
    assert summary.critical_path_s <= summary.wall_s + 0.01
    data = json.loads(json.dumps(result_json(result)))
    assert data["status"] == "succeeded" and data["totals"]["calls"] == len(result.leaves)
    assert {s["key"] for s in data["steps"]} == set(result.records)
    lines = timeline(result, width=40)
    assert len(lines) == 1 + 4 and all("|" in line for line in lines[1:])
    assert lines[1].startswith("plan") and "#" in lines[1]


async def test_all_premium_comparison(examples_dir: Path) -> None:
    spec = load_workflow(examples_dir / "classify.yaml")
    backend = ScriptedBackend(prices={"fast": (0.15, 0.60), "smart": (3.0, 15.0)})
    result = await Workflow(spec).run(backend=backend)
    assert result.status is RunStatus.SUCCEEDED
    comparison = result.comparison
    assert comparison is not None and comparison["tasks"] == 100 and comparison["per_tasks"] == 1000
    calls = [r for r in result.records.values() if r.kind == "model"]
    assert len(calls) == 100
    premium = sum((r.prompt_tokens * 3.0 + r.completion_tokens * 15.0) / 1e6 for r in calls)
    assert comparison["premium_cost_usd"] == pytest.approx(premium)
    assert comparison["routed_per_tasks_usd"] == pytest.approx(result.cost_usd * 10)
    assert comparison["premium_per_tasks_usd"] == pytest.approx(premium * 10)
    assert comparison["saving_pct"] == pytest.approx((1 - result.cost_usd / premium) * 100)
    assert result.outputs["counts"] == {"billing": 100}


def test_comparison_falls_back_to_estimates() -> None:
    from modelyard.schema.chat import Usage
    from modelyard.workflows.pricing import price_usage

    class EstimatesOnly:
        def estimate(self, call: ModelCall) -> Any:
            return ScriptedBackend().estimate(call)

    priced = price_usage(EstimatesOnly(), "smart", Usage(prompt=1000, completion=100))  # type: ignore[arg-type]
    assert priced == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6, rel=0.01)


def test_result_round_trips_through_records() -> None:
    record = StepRecord("a", "a", "model", StepState.FAILED, output={"x": 1}, error="boom", order=[0])
    again = StepRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    result = RunResult("r", "wf", RunStatus.PARTIAL, {}, {}, {"a": record}, 0.0, 1.0, deps={"a": []})
    assert result.steps == {"a": record} and result.wall_s == 1.0
