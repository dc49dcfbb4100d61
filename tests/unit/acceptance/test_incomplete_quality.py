"""A run the budget cut short: every (deployment, task) cell with fewer samples than planned is written to
the quality file as `complete: false, accepted: false` (never accepted on what little ran), untested
deployments included, and the gateway's `quality_from:` reader keeps it out of `accepted: true` routes."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.acceptance.report import build_report, incomplete_cells, quality_results, write_json
from modelyard.acceptance.runner import Runner, RunOptions
from modelyard.acceptance.targets import Target
from modelyard.config.loader import parse_config
from modelyard.config.quality_file import apply_results, read_results
from tests.unit.acceptance.test_runner import TARGETS, FakeCaller, dep, suite


async def cut_run(budget_usd: float | None) -> dict[str, object]:
    runner = Runner(suite(), FakeCaller(), TARGETS, RunOptions(concurrency=1, budget_usd=budget_usd))
    return quality_results(build_report(suite(), await runner.run()), suite())


async def test_a_cell_cut_short_is_not_accepted_and_untested_deployments_are_written() -> None:
    quality = await cut_run(0.015)  # one $0.01 case runs: cheap/classify, 1 of 4 samples, all passed
    deployments = quality["deployments"]
    assert isinstance(deployments, dict)
    cheap = deployments["cheap"]["classify"]
    assert cheap["pass_rate"] == 1.0 and cheap["cases"] == 1
    assert cheap["accepted"] is False and cheap["complete"] is False
    strong = deployments["strong"]["classify"]  # never run: written, not left out
    assert strong == {"pass_rate": 0.0, "accepted": False, "cases": 0, "min_pass_rate": 0.75, "complete": False}
    assert ("cheap", "classify", 1) in incomplete_cells(quality)
    whole = await cut_run(None)
    assert whole["deployments"]["cheap"]["classify"]["accepted"] is True  # type: ignore[index]
    assert incomplete_cells(whole) == []


async def test_a_model_groups_deployments_are_incomplete_when_its_runs_were_cut() -> None:
    group = Target("group", "model", (dep("cheap"), dep("strong")))
    runner = Runner(suite(), FakeCaller(), [group], RunOptions(concurrency=1, budget_usd=0.015))
    deployments = quality_results(build_report(suite(), await runner.run()), suite())["deployments"]
    assert {"cheap", "strong"} <= set(deployments)  # the group's deployments, tested or not
    assert all(
        not cell["accepted"] and not cell["complete"] for name in deployments for cell in deployments[name].values()
    )


async def test_the_gateway_reads_an_incomplete_cell_as_not_accepted(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, await cut_run(0.015))
    assert json.loads(path.read_text())["deployments"]["cheap"]["classify"]["complete"] is False
    config = parse_config(
        """
deployments:
  - {name: cheap, provider: openai, model: cheap, api_base: "http://127.0.0.1:1/v1"}
  - {name: strong, provider: openai, model: strong, api_base: "http://127.0.0.1:1/v1"}
""",
        source="q.yaml",
    )
    assert apply_results(config, read_results(path)) == []  # `complete` is read without complaint
    for name in ("cheap", "strong"):
        found = config.deployment(name)
        assert found is not None and found.acceptance is not None
        assert found.acceptance["classify"].accepted is False
