"""Offline policy replay: totals are the recorded costs of the chosen answers; per-policy shares add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.lab.datasets import load_labelled
from modelyard.lab.replay import baselines, premium, replay

CONFIG = """
deployments:
  - {name: big, provider: openai, model: big-model, price: {input: 10, output: 30}, quality: 0.9}
  - {name: small, provider: openai, model: small-model, price: {input: 0.1, output: 0.3}, quality: 0.6}
  - {name: other, provider: openai, model: not-in-the-data, quality: 0.95}
models:
  premium: {candidates: [big]}
  cheap: {candidates: [small]}
  smart:
    strategy: cost
    candidates: [small, big]
    constraints: {min_quality: 0.8}
  triage:
    strategy: rules
    candidates: [small, big]
    rules:
      - when: {prompt_tokens: {gt: 12}}
        use: [big]
      - use: [small]
  ghost: {candidates: [other]}
"""

ROWS = [
    # prompt, big score, big cost, small score, small cost
    ("short one", 1.0, 0.010, 1.0, 0.0001),
    ("short two", 1.0, 0.020, 0.0, 0.0002),
    ("a much longer prompt that goes on and on about many things", 1.0, 0.030, 0.0, 0.0003),
    ("another long prompt which also keeps going for quite a while", 0.0, 0.040, 1.0, 0.0004),
]


@pytest.fixture
def data(tmp_path: Path):
    path = tmp_path / "traffic.jsonl"
    with path.open("w") as fh:
        for prompt, bs, bc, ss, sc in ROWS:
            fh.write(json.dumps({"prompt": prompt, "model": "big-model", "score": bs, "cost": bc}) + "\n")
            fh.write(json.dumps({"prompt": prompt, "model": "small-model", "score": ss, "cost": sc}) + "\n")
    return path


def test_totals_equal_the_recorded_costs_of_the_chosen_answers(data):
    config = parse_config(CONFIG)
    results = {r.name: r for r in replay(config, load_labelled(data))}
    assert results["premium"].total_cost == pytest.approx(0.010 + 0.020 + 0.030 + 0.040)
    assert results["premium"].mean_quality == pytest.approx(0.75)
    assert results["cheap"].total_cost == pytest.approx(0.0001 + 0.0002 + 0.0003 + 0.0004)
    assert results["cheap"].accuracy == pytest.approx(0.5)
    assert results["smart"].shares == {"big-model": 4}  # small's configured quality 0.6 < 0.8
    triage = results["triage"]  # long prompts to big, short to small
    assert triage.shares == {"small-model": 2, "big-model": 2}
    assert triage.total_cost == pytest.approx(0.0001 + 0.0002 + 0.030 + 0.040)
    assert triage.total_score == pytest.approx(1.0 + 0.0 + 1.0 + 0.0)
    assert results["ghost"].routed == 0 and results["ghost"].unlabelled == 4  # no recorded answers for it
    assert sum(results["triage"].shares.values()) == results["triage"].routed


def test_baselines_and_premium(data):
    single = {r.name: r for r in baselines(load_labelled(data))}
    assert single["big-model"].cost_per(1000) == pytest.approx(0.1 / 4 * 1000)
    assert premium(list(single.values())).name == "big-model"


def test_cli_prints_every_policy_and_the_all_premium_comparison(data, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "replay", "--config", str(config), "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["premium"] == "big-model" and out["prompts"] == 4
    assert {p["policy"] for p in out["policies"]} == {"premium", "cheap", "smart", "triage", "ghost"}
    table = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "replay", "--config", str(config), "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", **__import__("os").environ},
    )
    assert "cost per 1000 tasks: all-premium (big-model) $25.0000 vs triage" in table.stdout
