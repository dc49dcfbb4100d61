"""Streams under failure: a cut after some chunks ends with an error event (never a clean end); a failure
before any byte fails over to one clean stream; a client that goes away stops the upstream call."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import fleet_from_dict
from modelyard.sim.server import SimServer

FLEET = {
    "seed": 9,
    "models": [
        {"name": "quick", "ttft_ms": 0, "tokens_per_second": 0, "output_tokens": {"min": 30, "max": 40}},
        {"name": "slow", "ttft_ms": 0, "tokens_per_second": 40, "output_tokens": 400},
    ],
}

CONFIG = """
deployments:
  - {{name: cut, provider: openai, model: quick, api_base: "{sim}/v1", headers: {{x-sim-fault: cut_stream}}}}
  - {{name: cut-anthropic, provider: anthropic, model: quick, api_base: "{sim}", headers: {{x-sim-fault: cut_stream}}}}
  - {{name: dead, provider: openai, model: quick, api_base: "{sim}/v1", headers: {{x-sim-fault: unavailable}}}}
  - {{name: reset, provider: gemini, model: quick, api_base: "{sim}", headers: {{x-sim-fault: reset}}}}
  - {{name: good, provider: anthropic, model: quick, api_base: "{sim}"}}
  - {{name: slow, provider: openai, model: slow, api_base: "{sim}/v1"}}
models:
  cut-only: {{candidates: [cut]}}
  cut-anthropic: {{candidates: [cut-anthropic]}}
  failover: {{candidates: [dead, reset, good]}}
  slow: {{candidates: [slow]}}
routing: {{retries: 0, breaker: {{failures: 1000}}}}
"""


@pytest.fixture(scope="module")
def servers():
    with SimServer(fleet_from_dict(FLEET)) as sim:
        gateway = create_app(parse_config(CONFIG.format(sim=sim.url)))
        with BackgroundServer(gateway) as server:
            yield sim, gateway, server


@pytest.mark.parametrize("model", ["cut-only", "cut-anthropic"])
def test_a_cut_stream_never_ends_cleanly(servers, model):
    """The simulator cuts each stream after a random number of events. Cut before any content, the gateway
    has nothing committed and answers with an error status; cut after content reached the client, the
    stream ends with an OpenAI-shaped error event. Never with [DONE]."""
    _, _, server = servers
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    cut_mid_stream = 0
    for _ in range(12):
        received = []
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(
                model=model, stream=True, messages=[{"role": "user", "content": "talk"}]
            ):
                received.append(chunk)
        cut_mid_stream += bool(received)
    assert cut_mid_stream, "at least one stream was cut after its first chunks reached the client"
    for _ in range(12):
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "talk"}]},
        )
        if response.status_code != 200:
            assert response.json()["error"]["type"] in ("api_connection_error", "server_error")
            continue
        raw = response.text
        assert "data: [DONE]" not in raw  # never a clean end
        error = json.loads(raw.strip().splitlines()[-1].removeprefix("data: "))
        assert set(error["error"]) == {"message", "type", "param", "code"}
        break
    else:
        pytest.fail("no stream was cut after its first chunk in 12 tries")


def test_failure_before_any_byte_fails_over_to_one_clean_stream(servers):
    _, _, server = servers
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={
            "model": "failover",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Repeat: clean stream"}],
        },
    )
    assert response.status_code == 200
    assert response.headers["x-modelyard-model"] == "good"
    assert response.headers["x-modelyard-attempts"].startswith("3;")
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "clean stream"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("role")) == 1  # one stream
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_client_that_goes_away_stops_the_upstream_call(servers):
    _, gateway, server = servers
    started = time.monotonic()
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a long story"}]},
        timeout=10,
    ) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in seen)
    health = gateway.router.health.get("slow")
    deadline = time.monotonic() + 3
    while health.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health.in_flight == 0  # the gateway noticed and let go of the upstream stream
    assert time.monotonic() - started < 5  # the full answer (400 tokens at 40/s) would take 10 s
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="cancelled"' in metrics
