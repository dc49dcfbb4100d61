"""Every request's route and attempts in its spend row, against the real server over the simulator: a failover
keeps both attempts (the first with its error), an explained plan keeps its notes, and `ui.explain_sample`
decides which other requests are explained in the row, never in the answer's headers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.accounting.spend import SpendRecord
from modelyard.config.loader import parse_config
from modelyard.routing.trace import read_attempts, read_route
from modelyard.server.app import Gateway
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

CONFIG = """
deployments:
  - {{name: down, provider: openai, model: sim-small, api_base: "{sim}/v1", headers: {{x-sim-fault: unavailable}},
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: up, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
  - {{name: spare, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.2, output: 0.8}}}}
models:
  failover: {{candidates: [down, up]}}
  pair: {{candidates: [up, spare], strategy: cost}}
routing: {{retries: 0, breaker: {{failures: 1000}}}}
spend: {{store: "sqlite:///{store}", flush_interval_s: 0.05}}
ui: {{explain_sample: {sample}}}
cache: {{enabled: true, ttl_s: 60}}
"""

Served = tuple[BackgroundServer, Gateway]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, instant=True) as server:
        yield server


def _serve(sim: SimServer, store: Path, sample: float) -> Iterator[Served]:
    gateway = create_app(parse_config(CONFIG.format(sim=sim.url, store=store, sample=sample), source="trace.yaml"))
    with BackgroundServer(gateway) as server:
        yield server, gateway


@pytest.fixture(scope="module")
def unsampled(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(sim, tmp_path_factory.mktemp("trace") / "spend.db", 0)


@pytest.fixture(scope="module")
def sampled(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(sim, tmp_path_factory.mktemp("trace") / "spend.db", 1.0)


def chat(server: BackgroundServer, model: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Repeat: traced"}], **extra},
        headers=headers or {},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def spend_row(served: Served, response: httpx.Response) -> SpendRecord:
    """The request's row, read through the gateway's store once its spend writer has flushed."""
    server, gateway = served
    services = gateway.services
    assert services is not None and services.spend is not None and server.loop is not None

    async def read() -> SpendRecord | None:
        assert services.spend is not None
        assert await services.spend.flush(10)
        return await services.store.get_spend(response.headers["x-request-id"])

    row = asyncio.run_coroutine_threadsafe(read(), server.loop).result(timeout=20)
    assert row is not None, "no spend row for the request"
    return row


def test_a_failed_over_request_keeps_both_attempts_with_the_first_ones_error(unsampled: Served) -> None:
    server, _ = unsampled
    response = chat(server, "failover")
    assert response.headers["x-modelyard-model"] == "up"
    row = spend_row(unsampled, response)
    attempts: list[dict[str, Any]] = read_attempts(row.attempt_detail)
    assert [(a["deployment"], a["outcome"]) for a in attempts] == [("down", "overloaded"), ("up", "ok")]
    first, second = attempts
    assert first["error"] and first["status"] == 503 and first["cost_usd"] == 0.0
    assert second["error"] == "" and second["cost_usd"] > 0
    assert 0.0 <= first["start_ms"] <= second["start_ms"] <= row.latency_ms
    assert first["start_ms"] + first["ms"] <= second["start_ms"] + 0.5  # one after the other, no hedge
    route = read_route(row.route)
    assert route["ranked"] == ["down", "up"] and route["strategy"] == "priority"
    assert route["explained"] is False and route["notes"] == {}
    assert row.attempts == 2 and row.attempt_log.startswith("2; down overloaded")


def test_a_client_asking_for_the_explanation_has_it_in_the_header_and_the_row(unsampled: Served) -> None:
    server, _ = unsampled
    response = chat(server, "pair", {"x-modelyard-explain": "1"})
    assert "x-modelyard-explain" in response.headers
    route = read_route(spend_row(unsampled, response).route)
    assert route["explained"] is True and set(route["notes"]) == {"up", "spare"}
    assert route["ranked"] == ["up", "spare"] and route["strategy"] == "cost"


def test_explain_sample_0_stores_no_notes(unsampled: Served) -> None:
    server, _ = unsampled
    for _ in range(3):
        response = chat(server, "pair")
        assert "x-modelyard-explain" not in response.headers
        route = read_route(spend_row(unsampled, response).route)
        assert route["ranked"] == ["up", "spare"] and route["features"]["prompt_tokens"] > 0
        assert route["explained"] is False and route["notes"] == {}


def test_explain_sample_1_stores_notes_without_the_header(sampled: Served) -> None:
    server, _ = sampled
    for _ in range(3):
        response = chat(server, "pair")
        assert "x-modelyard-explain" not in response.headers  # only a client that asked gets it
        route = read_route(spend_row(sampled, response).route)
        assert route["explained"] is True and set(route["notes"]) == {"up", "spare"}


def test_a_response_cache_hit_has_no_route(unsampled: Served) -> None:
    """A hit is answered before any routing: its row says so (no route, no attempts), the miss's row does not."""
    server, _ = unsampled
    miss = chat(server, "pair", temperature=0)
    hit = chat(server, "pair", temperature=0)
    assert (miss.headers["x-modelyard-cache"], hit.headers["x-modelyard-cache"]) == ("miss", "hit")
    assert read_route(spend_row(unsampled, miss).route)["ranked"] == ["up", "spare"]
    row = spend_row(unsampled, hit)
    assert row.route is None and row.attempt_detail is None and row.cost_usd == 0.0
