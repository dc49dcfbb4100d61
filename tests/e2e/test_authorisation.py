"""A key restricted to some models reaches nothing else, and its budget holds, through every door.

The gateway runs as a real process (`modelyard serve`); the simulator serves each deployment under its own
model name, so its per-model counters are per-deployment counts of the upstream calls actually made.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

MASTER = "sk-master-authorisation-test"
PROMPT = [{"role": "user", "content": "Say something short."}]
DEAR_IN, DEAR_OUT = 30.0, 60.0  # USD per 1M tokens


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    fleet = Fleet(
        models=[
            SimModel(name="sim-cheap", output_tokens=10),
            SimModel(name="sim-mid", output_tokens=10),
            SimModel(name="sim-dear", output_tokens=10),
            SimModel(name="sim-long", output_tokens=400),
            SimModel(name="sim-embed", kind="embedding"),
            SimModel(name="sim-embed-dear", kind="embedding"),
        ]
    )
    with SimServer(fleet) as server:
        yield server


def write_config(sim: SimServer, path: Path, extra: str = "") -> Path:
    base = sim.openai_base
    path.write_text(f"""
deployments:
  - {{name: cheap-a, provider: openai, model: sim-cheap, api_base: "{base}", price: {{input: 0.1, output: 0.4}}}}
  - {{name: mid-a, provider: openai, model: sim-mid, api_base: "{base}", price: {{input: 1, output: 2}}}}
  - {{name: dear-a, provider: openai, model: sim-dear, api_base: "{base}",
      price: {{input: {DEAR_IN}, output: {DEAR_OUT}}}}}
  - {{name: dear-anthropic, provider: anthropic, model: sim-dear, api_base: "{sim.url}",
      price: {{input: {DEAR_IN}, output: {DEAR_OUT}}}}}
  - {{name: long-a, provider: openai, model: sim-long, api_base: "{base}", max_output_tokens: 400,
      price: {{input: {DEAR_IN}, output: {DEAR_OUT}}}}}
  - {{name: embed-a, provider: openai, kind: embedding, model: sim-embed, api_base: "{base}",
      price: {{input: 0.02, output: 0}}}}
  - {{name: embed-dear, provider: openai, kind: embedding, model: sim-embed-dear, api_base: "{base}",
      price: {{input: 20, output: 0}}}}
models:
  cheap: {{candidates: [cheap-a], fallbacks: [mid]}}
  mid: {{candidates: [mid-a]}}
  dear: {{candidates: [dear-a, dear-anthropic]}}
  long: {{candidates: [long-a]}}
  embed: {{candidates: [embed-a]}}
  embed-dear: {{candidates: [embed-dear]}}
access:
  master_key: {MASTER}
spend:
  store: {path.parent / "spend.db"}
  flush_interval_s: 0.05
{extra}
""")
    return path


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = write_config(sim, tmp_path_factory.mktemp("authz") / "gateway.yaml")
    with GatewayProcess(config) as process:
        yield process


def new_key(url: str, **body: Any) -> str:
    response = httpx.post(
        url + "/admin/keys",
        json={"name": f"k-{uuid.uuid4().hex[:8]}", **body},
        headers={"Authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


def upstream_calls(sim: SimServer, model: str) -> int:
    return int(sim.stats()["models"].get(model, {}).get("requests", 0))


def chat(url: str, key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=20)


ESCAPES: list[tuple[str, str, dict[str, Any]]] = [
    ("model names another model", "/v1/chat/completions", {"model": "dear"}),
    ("model names a deployment", "/v1/chat/completions", {"model": "dear-a"}),
    ("override candidates", "/v1/chat/completions", {"model": "cheap", "modelyard": {"candidates": ["dear-a"]}}),
    ("override fallbacks (model)", "/v1/chat/completions", {"model": "cheap", "modelyard": {"fallbacks": ["dear"]}}),
    (
        "override fallbacks (deployment)",
        "/v1/chat/completions",
        {"model": "cheap", "modelyard": {"fallbacks": ["dear-anthropic"]}},
    ),
    (
        "streamed override",
        "/v1/chat/completions",
        {"model": "cheap", "stream": True, "modelyard": {"candidates": ["cheap-a", "dear-a"]}},
    ),
    ("anthropic ingress, model", "/v1/messages", {"model": "dear", "max_tokens": 10}),
    # The Messages ingress takes no routing overrides: it is served inside the key's scope.
    (
        "anthropic ingress, override",
        "/v1/messages",
        {"model": "cheap", "max_tokens": 10, "modelyard": {"candidates": ["dear-anthropic"]}},
    ),
]
SERVED_IN_SCOPE = {"anthropic ingress, override"}


@pytest.mark.parametrize(("what", "path", "body"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_a_restricted_key_cannot_reach_another_deployment(
    gateway: GatewayProcess, sim: SimServer, what: str, path: str, body: dict[str, Any]
) -> None:
    key = new_key(gateway.url, models=["cheap", "embed"])
    before = upstream_calls(sim, "sim-dear")
    response = chat(gateway.url, key, {"messages": PROMPT, **body}, path)
    assert upstream_calls(sim, "sim-dear") == before
    if what in SERVED_IN_SCOPE:
        assert response.status_code == 200 and response.headers["x-modelyard-model"] == "cheap-a"
        return
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["type"] == "permission_error"
    if path == "/v1/messages":
        assert response.json()["type"] == "error"  # the Anthropic error shape on the Anthropic ingress
    assert upstream_calls(sim, "sim-dear") == before


def test_embeddings_are_authorised_too(gateway: GatewayProcess, sim: SimServer) -> None:
    key = new_key(gateway.url, models=["cheap", "embed"])
    before = upstream_calls(sim, "sim-embed-dear")
    refused = chat(gateway.url, key, {"model": "embed-dear", "input": "hi"}, "/v1/embeddings")
    assert refused.status_code == 403
    served = chat(gateway.url, key, {"model": "embed", "input": "hi"}, "/v1/embeddings")
    assert served.status_code == 200 and served.headers["x-modelyard-model"] == "embed-a"
    assert upstream_calls(sim, "sim-embed-dear") == before


def test_overrides_inside_the_scope_stay_allowed(gateway: GatewayProcess) -> None:
    """The workflow HTTP backend relies on overrides: a configured fallback of an allowed model is in scope."""
    key = new_key(gateway.url, models=["cheap"])
    response = chat(gateway.url, key, {"model": "cheap", "messages": PROMPT, "modelyard": {"candidates": ["mid-a"]}})
    assert response.status_code == 200, response.text
    assert response.headers["x-modelyard-model"] == "mid-a"


def test_models_lists_only_what_the_key_may_use(gateway: GatewayProcess) -> None:
    key = new_key(gateway.url, models=["cheap", "embed"])
    auth = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(gateway.url + "/v1/models", headers=auth).json()
    assert sorted(m["id"] for m in listed["data"]) == ["cheap", "embed"]
    assert httpx.get(gateway.url + "/v1/models/cheap", headers=auth).json()["id"] == "cheap"
    assert httpx.get(gateway.url + "/v1/models/dear", headers=auth).status_code == 404
    assert httpx.get(gateway.url + "/v1/models/cheap").status_code == 401
    master = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert {m["id"] for m in master["data"]} >= {"cheap", "dear", "long"}


def test_the_reservation_counts_n_and_the_dearest_reachable_deployment(gateway: GatewayProcess, sim: SimServer) -> None:
    """$0.01 buys one answer of 100 tokens at $60/M ($0.006), not 16 choices of it: refused before any call."""
    key = new_key(gateway.url, models=["dear"], budget_usd=0.01)
    before = upstream_calls(sim, "sim-dear")
    refused = chat(gateway.url, key, {"model": "dear", "messages": PROMPT, "max_tokens": 100, "n": 16})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert upstream_calls(sim, "sim-dear") == before
    one = chat(gateway.url, key, {"model": "dear", "messages": PROMPT, "max_tokens": 100})
    assert one.status_code == 200, one.text


async def _spend_concurrently(urls: list[str], key: str, body: dict[str, Any], total: int) -> tuple[int, float]:
    """`total` requests, 50 at a time, spread over `urls`: (answers, summed cost headers)."""
    limit = asyncio.Semaphore(50)
    served = 0
    cost = 0.0
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(i: int) -> None:
            nonlocal served, cost
            async with limit:
                response = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body)
            if response.status_code == 200:
                served += 1
                cost += float(response.headers["x-modelyard-cost-usd"])
            else:
                assert response.status_code == 429, response.text

        await asyncio.gather(*(one(i) for i in range(total)))
    return served, cost


def test_200_concurrent_requests_never_overspend(gateway: GatewayProcess) -> None:
    budget = 0.03
    key = new_key(gateway.url, models=["dear"], budget_usd=budget)
    served, cost = asyncio.run(
        _spend_concurrently([gateway.url], key, {"model": "dear", "messages": PROMPT, "max_tokens": 20}, 200)
    )
    assert 0 < served < 200  # the budget ran out part-way, and refused the rest
    assert cost <= budget


def test_without_max_tokens_reserve_max_output_never_overspends(sim: SimServer, tmp_path: Path) -> None:
    """The deployment answers 400 tokens; a reservation of the default estimate (256) would overshoot."""
    config = write_config(sim, tmp_path / "gateway.yaml")
    config.write_text(config.read_text().replace("access:\n", "access:\n  reserve_output: max_output\n"))
    with GatewayProcess(config) as process:
        budget = 0.2
        key = new_key(process.url, models=["long"], budget_usd=budget)
        served, cost = asyncio.run(_spend_concurrently([process.url], key, {"model": "long", "messages": PROMPT}, 60))
    assert 0 < served < 60
    assert cost <= budget


@pytest.mark.redis
def test_two_gateways_on_one_redis_never_overspend(sim: SimServer, tmp_path: Path) -> None:
    prefix = f"authz-{uuid.uuid4().hex[:8]}"
    extra = f'state: {{redis_url: "redis://127.0.0.1:6379/0", prefix: {prefix}}}\n'
    config = write_config(sim, tmp_path / "gateway.yaml", extra)
    with GatewayProcess(config) as first, GatewayProcess(config, log=tmp_path / "second.log") as second:
        budget = 0.03
        key = new_key(first.url, models=["dear"], budget_usd=budget)
        served, cost = asyncio.run(
            _spend_concurrently(
                [first.url, second.url], key, {"model": "dear", "messages": PROMPT, "max_tokens": 20}, 200
            )
        )
    assert 0 < served < 200
    assert cost <= budget


# --------------------------------------------------------------------------- authenticate first


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(gateway: GatewayProcess) -> None:
    """8 MB of prompt with no key: a 401 at once, no row in the spend log, no label from the client."""
    before = httpx.get(gateway.url + "/admin/spend?by=model", headers={"Authorization": f"Bearer {MASTER}"}).json()
    body = {"model": "bogus-\u0000-" + "x" * 20_000, "messages": [{"role": "user", "content": "word " * 1_600_000}]}
    for credential in ({}, {"Authorization": "Bearer sk-wrong-key-0123456789"}):
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=credential, timeout=20)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    after = httpx.get(gateway.url + "/admin/spend?by=model", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert after["total_requests"] == before["total_requests"]
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "bogus" not in metrics and 'model="-"' in metrics


def test_a_client_chosen_model_name_is_not_a_metric_label(gateway: GatewayProcess) -> None:
    key = new_key(gateway.url)
    response = chat(gateway.url, key, {"model": "made-up-" + uuid.uuid4().hex, "messages": PROMPT})
    assert response.status_code == 404
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "made-up-" not in metrics and 'model="other"' in metrics
