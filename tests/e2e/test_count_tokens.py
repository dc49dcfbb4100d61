"""POST /v1/messages/count_tokens through the gateway, with the official `anthropic` SDK.

Anthropic targets answer the provider's own count (the simulator's count_tokens endpoint, which agrees with
the usage of a real request); other targets, or an Anthropic target that cannot be reached, the gateway's
estimate; the header says which. A key restricted to some models cannot count for another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer

MASTER = "sk-master-count-tokens"
MESSAGES: Any = [{"role": "user", "content": "How many tokens does this question take, roughly?"}]
SYSTEM: Any = [{"type": "text", "text": "Answer briefly.", "cache_control": {"type": "ephemeral"}}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(Fleet(seed=3, models=[SimModel(name="sim-claude"), SimModel(name="sim-gpt")]), instant=True) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    store: Path = tmp_path_factory.mktemp("count") / "spend.db"
    config = parse_config(
        f"""
deployments:
  - {{name: claude@anthropic, provider: anthropic, model: sim-claude, api_base: "{sim.url}", api_key: k1,
      price: {{input: 3, output: 15}}}}
  - {{name: gpt@openai, provider: openai, model: sim-gpt, api_base: "{sim.openai_base}", api_key: k2,
      price: {{input: 1, output: 2}}}}
  - {{name: gone@anthropic, provider: anthropic, model: sim-claude, api_base: "http://127.0.0.1:9", api_key: k3,
      price: {{input: 3, output: 15}}, timeouts: {{connect: 1, first_token: 2, total: 3}}}}
models:
  claude: {{candidates: [claude@anthropic]}}
  gpt: {{candidates: [gpt@openai]}}
  gone: {{candidates: [gone@anthropic]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
""",
        source="count.yaml",
    )
    with BackgroundServer(create_app(config)) as server:
        yield server


def new_key(url: str, **body: Any) -> str:
    answer = httpx.post(
        url + "/admin/keys", json={"name": "counting", **body}, headers={"Authorization": f"Bearer {MASTER}"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["key"])


@pytest.fixture
def client(gateway: BackgroundServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0) as c:
        yield c


def count(gateway: BackgroundServer, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": key}, timeout=10)


def test_anthropic_target_answers_the_providers_count(
    client: anthropic.Anthropic, gateway: BackgroundServer, sim: SimServer
) -> None:
    sim.reset()
    counted = client.messages.count_tokens(model="claude", system=SYSTEM, messages=MESSAGES)
    answered = client.messages.create(model="claude", max_tokens=16, system=SYSTEM, messages=MESSAGES)
    assert counted.input_tokens == answered.usage.input_tokens > 0
    raw = count(gateway, MASTER, {"model": "claude", "system": SYSTEM, "messages": MESSAGES})
    assert raw.headers["x-modelyard-token-count"] == "provider"
    assert raw.headers["x-modelyard-model"] == "claude@anthropic"
    assert raw.headers["request-id"].startswith("req_")
    # The upstream got the client's body (model rewritten, no max_tokens), cache_control intact.
    seen = httpx.get(f"{sim.url}/_sim/requests/sim-claude").json()["requests"]
    counts = [json.loads(e["body"]) for e in seen if e["path"] == "/v1/messages/count_tokens"]
    assert counts[-1] == {"model": "sim-claude", "system": SYSTEM, "messages": MESSAGES}


def test_other_targets_answer_the_estimate(gateway: BackgroundServer) -> None:
    for model in ("gpt", "gone"):  # not a token counter; a counter that cannot be reached
        answer = count(gateway, MASTER, {"model": model, "messages": MESSAGES})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-modelyard-token-count"] == "estimate"
        assert answer.json()["input_tokens"] > 0


def test_a_restricted_key_cannot_count_for_another_model(gateway: BackgroundServer) -> None:
    key = new_key(gateway.url, models=["gpt"])
    refused = count(gateway, key, {"model": "claude", "messages": MESSAGES})
    assert refused.status_code == 403
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "permission_error"
    assert count(gateway, key, {"model": "gpt", "messages": MESSAGES}).status_code == 200
    assert count(gateway, "sk-wrong", {"model": "gpt", "messages": MESSAGES}).status_code == 401


def test_bad_count_requests_are_anthropic_shaped_400s(client: anthropic.Anthropic, gateway: BackgroundServer) -> None:
    robot: Any = [{"role": "robot", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="claude", messages=robot)
    answer = count(gateway, MASTER, {"messages": MESSAGES})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    web_search = {"type": "web_search_20250305", "name": "web_search"}
    refused = count(gateway, MASTER, {"model": "claude", "messages": MESSAGES, "tools": [web_search]})
    assert refused.status_code == 400 and "tools.0.type" in refused.text
