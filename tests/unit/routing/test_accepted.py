"""Acceptance results in routing: `accepted: true`, per-task `min_quality` for `cost`, the `learned` floor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard.config.loader import load_config
from modelyard.config.model import Deployment
from modelyard.routing.features import RequestFeatures
from modelyard.routing.plan import Plan, no_deployment_error
from modelyard.routing.router import Router
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.constraints import Constraints

CONFIG = """\
deployments:
  - {name: cheap, provider: openai, model: small, price: {input: 0.1, output: 0.4}}
  - {name: strong, provider: openai, model: large, price: {input: 5, output: 15}}
  - {name: fresh, provider: openai, model: new, price: {input: 1, output: 3}, quality: 0.99}
models:
  desk:       {strategy: cost, candidates: [cheap, strong], constraints: {min_quality: 0.8}}
  strict:     {strategy: cost, candidates: [cheap, strong, fresh], constraints: {accepted: true}}
  open:       {strategy: cost, candidates: [cheap, strong, fresh]}
  smart:      {strategy: learned, candidates: [cheap, strong], constraints: {min_quality: 0.8}}
  cheap-only: {strategy: priority, candidates: [cheap], constraints: {accepted: true}}
quality_from: results.json
"""

RESULTS: dict[str, Any] = {
    "schema": "modelyard.acceptance-results/v1",
    "suite": "desk",
    "generated_at": "2026-12-04T16:00:00Z",
    "deployments": {
        "cheap": {
            "classification": {"pass_rate": 0.97, "accepted": True, "cases": 30, "min_pass_rate": 0.9},
            "extraction": {"pass_rate": 0.4, "accepted": False, "cases": 30, "min_pass_rate": 0.9},
        },
        "strong": {
            "classification": {"pass_rate": 1.0, "accepted": True, "cases": 30},
            "extraction": {"pass_rate": 0.93, "accepted": True, "cases": 30},
        },
    },
}


@pytest.fixture
def router(tmp_path: Path) -> Router:
    (tmp_path / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    (tmp_path / "modelyard.yaml").write_text(CONFIG, encoding="utf-8")
    return Router(load_config(tmp_path / "modelyard.yaml"), seed=1)


def plan(router: Router, model: str, task: str | None, **kw: Any) -> Plan:
    return router.plan(model, RequestFeatures(prompt_tokens=50, max_output_tokens=50, task=task), explain=True, **kw)


def order(p: Plan) -> list[str]:
    return [d.name for d in p.order]


def reasons(p: Plan) -> dict[str, str]:
    return {c["deployment"]: c["reason"] for c in p.explain()["candidates"]}


def test_cost_min_quality_reads_the_suite_pass_rate_per_task(router: Router) -> None:
    assert order(plan(router, "desk", "classification"))[0] == "cheap"
    extraction = plan(router, "desk", "extraction")
    assert order(extraction) == ["strong"]
    assert reasons(extraction)["cheap"] == "quality 0.400 < min_quality 0.8"


def test_accepted_true_filters_the_rejected_with_the_reason_and_keeps_the_untested(router: Router) -> None:
    extraction = plan(router, "strict", "extraction")
    assert order(extraction) == ["fresh", "strong"]  # cheapest accepted-or-untested first
    why = reasons(extraction)
    assert why["cheap"] == "not accepted for extraction (pass rate 0.40 < 0.90)"
    assert "untested for extraction: kept" in why["fresh"]
    assert "accepted for extraction (pass rate 0.93, 30 cases)" in why["strong"]
    assert "estimated cost" in why["strong"]  # the strategy's own note stays first
    assert order(plan(router, "strict", "classification"))[0] == "cheap"


def test_without_a_task_acceptance_cannot_be_checked_and_nothing_is_filtered(router: Router) -> None:
    p = plan(router, "strict", None)
    assert order(p) == ["cheap", "fresh", "strong"]
    assert all("no task: acceptance not checked" in r for r in reasons(p).values())


def test_a_request_can_ask_for_accepted_and_the_model_cache_is_not_poisoned(router: Router) -> None:
    asked = ModelyardOptions(constraints=Constraints(accepted=True))
    assert order(plan(router, "open", "extraction")) == ["cheap", "fresh", "strong"]
    assert order(plan(router, "open", "extraction", overrides=asked)) == ["fresh", "strong"]
    assert order(plan(router, "open", "extraction")) == ["cheap", "fresh", "strong"]  # same task, no accepted
    assert order(plan(router, "open", "classification", overrides=asked))[0] == "cheap"


def test_learned_routes_use_the_suite_pass_rate_as_a_floor(router: Router) -> None:
    def predicted(dep: Deployment) -> float:
        return 0.99  # the learned router thinks every deployment is excellent

    extraction = plan(router, "smart", "extraction", quality=predicted)
    assert order(extraction) == ["strong"]
    assert reasons(extraction)["cheap"] == "acceptance pass rate 0.40 for extraction < min_quality 0.8"
    assert order(plan(router, "smart", "classification", quality=predicted))[0] == "cheap"


def test_nothing_accepted_is_a_client_error_naming_the_reason(router: Router) -> None:
    p = plan(router, "cheap-only", "extraction")
    assert p.order == []
    error = no_deployment_error(p)
    assert error.status == 400 and error.code == "not_accepted"
    assert "not accepted for extraction (pass rate 0.40 < 0.90)" in error.message
    assert order(plan(router, "cheap-only", "classification")) == ["cheap"]


def test_without_explain_no_notes_are_formatted(router: Router) -> None:
    p = router.plan("strict", RequestFeatures(task="extraction"))
    assert [d.name for d in p.order] == ["fresh", "strong"]
    assert p.ctx.notes == {}
