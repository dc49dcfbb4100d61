"""Suite results steer routing (issue 13, Done-when): on the simulator, a cheap model that passes classification
and fails extraction; after `modelyard accept --write-quality`, a `cost` route with `min_quality` sends
classification to the cheap deployment and extraction to the strong one, through the real gateway, with the
official OpenAI SDK. An `accepted: true` route does the same on the suite's verdict alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from modelyard.config.loader import load_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

FLEET = {
    "seed": 5,
    "models": [
        {"name": "sim-cheap", "quality": {"default": 0.6, "classification": 0.97, "extraction": 0.3}},
        {"name": "sim-strong", "quality": {"default": 0.95, "classification": 0.99, "extraction": 0.98}},
    ],
}

ACCEPT = [sys.executable, "-m", "modelyard.cli.main", "accept"]
LABELS = ["refund", "shipping", "account", "technical", "refund"]
NAMES = [
    ("Ada Lovelace", "A-1001"),
    ("Grace Hopper", "B-2042"),
    ("Alan Turing", "C-3310"),
    ("Edsger Dijkstra", "E-5123"),
]
ORDER_SCHEMA = {
    "type": "object",
    "required": ["name", "order_id"],
    "properties": {"name": {"type": "string"}, "order_id": {"type": "string", "pattern": "^[A-Z]-[0-9]{4}$"}},
}


def classification_prompt(i: int) -> str:
    return f"Classify ticket {i} as refund, shipping, account or technical. Answer with the category only."


def extraction_prompt(name: str) -> str:
    return f"Extract the customer name and order id as JSON. Message: this is {name} about my order."


SUITE = {
    "schema": "modelyard.acceptance/v1",
    "name": "desk",
    "route": "support",
    "config": "accept.yaml",
    "simulator": "fleet.yaml",
    "tasks": {
        "classification": {
            "min_pass_rate": 0.9,
            "cases": [
                {"id": f"c{i}", "prompt": classification_prompt(i), "reference": label, "assert": [{"equals": label}]}
                for i, label in enumerate(LABELS)
            ],
        },
        "extraction": {
            "min_pass_rate": 0.9,
            "cases": [
                {
                    "id": f"e{i}",
                    "prompt": extraction_prompt(name),
                    "response_format": {"type": "json_object"},
                    "reference": json.dumps({"name": name, "order_id": order}),
                    "assert": [{"json_schema": ORDER_SCHEMA}, {"contains": [name, order]}],
                }
                for i, (name, order) in enumerate(NAMES)
            ],
        },
    },
}

CONFIG = """\
deployments:
  - {name: cheap@sim, provider: openai, model: sim-cheap, api_base: "${SIM_URL}/v1", api_key: k,
     price: {input: 0.15, output: 0.6}}
  - {name: strong@sim, provider: openai, model: sim-strong, api_base: "${SIM_URL}/v1", api_key: k,
     price: {input: 3.0, output: 15.0}}
models:
  support: {strategy: cost, candidates: [cheap@sim, strong@sim], constraints: {min_quality: 0.8}}
  strict:  {strategy: priority, candidates: [cheap@sim, strong@sim], constraints: {accepted: true}}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite run once: its fleet, suite and config written, `modelyard accept --write-quality` run."""
    root = tmp_path_factory.mktemp("accept-routing")
    (root / "fleet.yaml").write_text(yaml.safe_dump(FLEET), encoding="utf-8")
    (root / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False), encoding="utf-8")
    (root / "accept.yaml").write_text(CONFIG, encoding="utf-8")
    (root / "gateway.yaml").write_text(CONFIG + "quality_from: results.json\n", encoding="utf-8")
    run = subprocess.run(
        [*ACCEPT, "suite.yaml", "--write-quality", "results.json", "--repeat", "10", "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root


def test_the_suite_finds_the_cheap_model_good_at_classification_only(workdir: Path) -> None:
    results = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
    assert results["schema"] == "modelyard.acceptance-results/v1"
    cheap, strong = results["deployments"]["cheap@sim"], results["deployments"]["strong@sim"]
    assert cheap["classification"]["accepted"] and cheap["classification"]["pass_rate"] >= 0.9
    assert not cheap["extraction"]["accepted"] and cheap["extraction"]["pass_rate"] < 0.8
    assert strong["extraction"]["accepted"] and strong["extraction"]["pass_rate"] >= 0.9
    assert cheap["extraction"]["cases"] == len(NAMES) * 10  # every case, every repeat


@pytest.fixture(scope="module")
def client(workdir: Path) -> Any:
    with SimServer(workdir / "fleet.yaml", instant=True) as sim:
        config = load_config(workdir / "gateway.yaml", env={**os.environ, "SIM_URL": sim.url.rstrip("/")})
        with BackgroundServer(create_app(config)) as gateway:
            yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="any", max_retries=0)


def served(client: Any, model: str, prompt: str, task: str, *, header: bool = False) -> tuple[str, dict[str, Any]]:
    """Which deployment served the request, and the gateway's explanation (the task by body or by header)."""
    extra_headers = {"x-modelyard-explain": "1"}
    extra_body: dict[str, Any] = {}
    if header:
        extra_headers["x-modelyard-task"] = task
    else:
        extra_body = {"modelyard": {"task": task}}
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        extra_headers=extra_headers,
        extra_body=extra_body,
    )
    assert raw.parse().choices[0].message.content
    return raw.headers["x-modelyard-model"], raw.http_response.json()["modelyard"]["explain"]


def skipped(explain: dict[str, Any]) -> dict[str, str]:
    return {c["deployment"]: c["reason"] for c in explain["candidates"] if c["decision"] == "skipped"}


def test_cost_route_sends_classification_to_cheap_and_extraction_to_strong(client: Any) -> None:
    model, explain = served(client, "support", classification_prompt(0), "classification")
    assert model == "cheap@sim" and explain["features"]["task"] == "classification"
    model, explain = served(client, "support", extraction_prompt("Ada Lovelace"), "extraction", header=True)
    assert model == "strong@sim"
    assert (
        skipped(explain)["cheap@sim"].startswith("quality 0.") and "< min_quality 0.8" in skipped(explain)["cheap@sim"]
    )


def test_accepted_route_filters_the_rejected_deployment_with_the_reason(client: Any) -> None:
    model, _ = served(client, "strict", classification_prompt(1), "classification")
    assert model == "cheap@sim"
    model, explain = served(client, "strict", extraction_prompt("Grace Hopper"), "extraction")
    assert model == "strong@sim"
    assert skipped(explain)["cheap@sim"].startswith("not accepted for extraction (pass rate 0.")


def test_a_task_the_suite_did_not_test_keeps_the_usual_routing(client: Any) -> None:
    model, explain = served(client, "strict", "Say hello.", "greeting")
    assert model == "cheap@sim" and not skipped(explain)
    assert any("untested for greeting" in c["reason"] for c in explain["candidates"])
