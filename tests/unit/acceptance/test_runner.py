"""The runner over a fake caller: concurrency bound, repeats, the answer cache ($0 on a rerun), the budget cap,
errors, and what the report, the HTML page and the quality file say."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.acceptance.cache import AnswerCache
from modelyard.acceptance.html import render_html
from modelyard.acceptance.outcome import Answer
from modelyard.acceptance.report import RESULTS_SCHEMA, build_report, quality_results
from modelyard.acceptance.runner import Runner, RunOptions
from modelyard.acceptance.spec import Suite, parse_suite
from modelyard.acceptance.targets import Target
from modelyard.config.model import Deployment
from modelyard.schema.errors import GatewayError

SUITE = """schema: modelyard.acceptance/v1
name: tiny
route: r
tasks:
  classify:
    min_pass_rate: 0.75
    cases:
      - {id: a, prompt: "q-a", reference: "yes", assert: [{equals: "yes"}]}
      - {id: b, prompt: "q-b", reference: "yes", assert: [{equals: "yes"}]}
      - {id: c, prompt: "q-c", reference: "yes", assert: [{equals: "yes"}]}
      - {id: d, prompt: "q-d", reference: "yes", assert: [{equals: "yes"}]}
  judged:
    cases:
      - {id: j, prompt: "q-j <script>", assert: [{judge: {rubric: "is yes", model: grader}}]}
"""


def dep(name: str) -> Deployment:
    return Deployment(name=name, provider="openai", model=name, api_base="http://127.0.0.1:1/v1")


class FakeCaller:
    """Answers "yes" except for (model, prompt) pairs in `wrong`; each call costs $0.01 and takes `delay`."""

    def __init__(
        self, wrong: frozenset[tuple[str, str]] = frozenset(), delay: float = 0.0, fail: str | None = None
    ) -> None:
        self.sim_url: str | None = None
        self.sim_digest: str | None = None
        self.wrong = set(wrong)
        self.delay = delay
        self.fail = fail
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0

    async def complete(self, body: dict[str, Any]) -> Answer:
        self.calls.append(body)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            model, prompt = body["model"], body["messages"][-1]["content"]
            if model == self.fail:
                raise GatewayError(503, "upstream down")
            if model == "grader":
                text = "PASS" if "Answer:\nyes" in prompt else "FAIL"
            else:
                text = "no" if (model, prompt) in self.wrong else "yes"
            served = "strong@x" if model == "group" and prompt == "q-a" else f"{model}@dep"
            return Answer(text=text, deployment=served, latency_ms=10.0 + len(self.calls), cost_usd=0.01)
        finally:
            self.in_flight -= 1

    def estimate_usd(self, body: dict[str, Any], target: Target) -> float:
        return 0.01


def suite() -> Suite:
    return parse_suite(SUITE, "tiny.yaml")


TARGETS = [Target("cheap", "deployment", (dep("cheap"),)), Target("strong", "deployment", (dep("strong"),))]


async def run(caller: FakeCaller, cache: AnswerCache | None = None, **options: Any) -> Any:
    runner = Runner(suite(), caller, TARGETS, RunOptions(**options), cache)
    return await runner.run()


async def test_every_case_against_every_target_within_the_concurrency_bound() -> None:
    caller = FakeCaller(frozenset({("cheap", "q-a"), ("cheap", "q-b")}), delay=0.01)
    result = await run(caller, concurrency=3)
    assert len(result.runs) == 2 * 5
    assert caller.peak == 3
    report = build_report(suite(), result)
    assert report.cell("cheap", "classify").pass_rate == 0.5
    assert report.cell("strong", "classify").pass_rate == 1.0
    assert not report.cell("cheap", "classify").accepted and report.cell("strong", "classify").accepted
    assert report.accepted("strong") and not report.accepted("cheap")


async def test_repeats_send_the_repeat_index_as_seed_and_count_as_samples() -> None:
    caller = FakeCaller()
    result = await run(caller, repeat=3)
    seeds = sorted({body["seed"] for body in caller.calls if body["model"] != "grader"})
    assert seeds == [0, 1, 2]
    assert build_report(suite(), result, 3).cell("cheap", "classify").samples == 12


async def test_a_rerun_of_unchanged_cases_is_served_from_the_cache_at_no_cost(tmp_path: Path) -> None:
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        first = await run(FakeCaller(), cache)
    assert first.spent_usd > 0 and first.cache_hits == 0
    again = FakeCaller()
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        second = await run(again, cache)
    assert again.calls == []  # nothing sent, judge calls included
    assert second.spent_usd == 0.0
    assert second.cache_hits == len(second.runs)
    report = build_report(suite(), second)
    assert report.cell("cheap", "classify").cost_usd == 0.0
    assert report.cell("cheap", "classify").cached == 4
    assert [r.status for r in second.runs] == [r.status for r in first.runs]
    changed = FakeCaller()
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        await run(changed, cache, repeat=2)  # repeat 1 is new: only it is sent
    assert changed.calls and {body["seed"] for body in changed.calls} == {1}


async def test_the_budget_stops_launching_and_the_report_says_so() -> None:
    caller = FakeCaller()
    result = await run(caller, concurrency=1, budget_usd=0.045)
    sent = [body for body in caller.calls]
    assert result.spent_usd <= 0.045 + 1e-9
    assert len(sent) == 4  # four $0.01 cases fit, the fifth would pass the cap
    assert result.budget_skipped == len(result.runs) - 4
    report = build_report(suite(), result)
    assert report.to_dict()["totals"]["budget_skipped"] == result.budget_skipped
    assert "not run" in render_html(report)
    skipped = [r for r in result.runs if r.status == "skipped"]
    assert skipped and all(not r.counted for r in skipped)


async def test_in_flight_estimates_count_against_the_budget() -> None:
    caller = FakeCaller(delay=0.01)
    result = await run(caller, concurrency=8, budget_usd=0.03)
    assert len(caller.calls) == 3  # 3 launched at once fill the budget with what is in flight
    assert result.spent_usd <= 0.03 + 1e-9


async def test_an_upstream_error_is_a_failed_sample_not_a_crash() -> None:
    result = await run(FakeCaller(fail="cheap"))
    cell = build_report(suite(), result).cell("cheap", "classify")
    assert cell.errors == 4 and cell.samples == 4 and cell.pass_rate == 0.0
    assert "upstream down" in (cell.failures[0].error or "")


async def test_judge_cost_is_counted_in_the_cell_and_the_totals() -> None:
    result = await run(FakeCaller())
    report = build_report(suite(), result)
    judged = report.cell("cheap", "judged")
    assert judged.passed == 1
    assert judged.cost_usd == pytest.approx(0.02)  # the answer and its grading
    assert result.judge_usd == pytest.approx(0.02)  # one grading per target
    assert report.to_dict()["totals"]["judge_cost_usd"] == pytest.approx(0.02)


async def test_json_report_and_quality_file_shapes() -> None:
    result = await run(FakeCaller(frozenset({("cheap", "q-a")})))
    report = build_report(suite(), result)
    data = json.loads(json.dumps(report.to_dict()))
    cell = data["models"]["cheap"]["tasks"]["classify"]
    assert cell["pass_rate"] == 0.75 and cell["accepted"] is True
    low, high = cell["ci95"]
    assert low < 0.75 < high
    assert cell["failures"][0]["case"] == "a"
    quality = quality_results(report, suite())
    assert quality["schema"] == RESULTS_SCHEMA and quality["suite"] == "tiny"
    assert quality["deployments"]["cheap"]["classify"] == {
        "pass_rate": 0.75,
        "accepted": True,
        "cases": 4,
        "min_pass_rate": 0.75,
        "complete": True,
    }
    assert set(quality["deployments"]) == {"cheap", "strong"}


async def test_a_model_groups_answers_count_for_the_deployment_that_served_them() -> None:
    group = Target("group", "model", (dep("cheap"), dep("strong")))
    runner = Runner(suite(), FakeCaller(), [group], RunOptions())
    report = build_report(suite(), await runner.run())
    deployments = quality_results(report, suite())["deployments"]
    assert deployments["strong@x"]["classify"]["cases"] == 1
    assert deployments["group@dep"]["classify"]["cases"] == 3


async def test_html_is_self_contained_and_escapes_suite_text() -> None:
    result = await run(FakeCaller(frozenset({("cheap", "q-a")})))
    failed = next(r for r in result.runs if r.status == "failed")
    assert failed.answer is not None
    failed.answer.text = "<script>alert(1)</script>"
    page = render_html(build_report(suite(), result))
    assert "<style>" in page and "http://" not in page and "https://" not in page
    assert "<script" not in page and "&lt;script&gt;alert(1)" in page
    assert "cheap" in page and "75%" in page


async def test_cached_answers_are_used_even_when_the_budget_allows_nothing(tmp_path: Path) -> None:
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        await run(FakeCaller(), cache, repeat=1)
        caller = FakeCaller()
        result = await run(caller, cache, repeat=2, budget_usd=0.0)
    assert caller.calls == []
    assert result.cache_hits == 10 and result.budget_skipped == 10
    assert {r.repeat for r in result.runs if r.status == "skipped"} == {1}
