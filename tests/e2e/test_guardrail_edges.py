"""Guardrails at the gateway's edges, through the real server against the simulator on loopback:

- `/v1/messages/count_tokens` runs the same input checks as `/v1/messages` (a key's set, a model group's
  checks, the request's own): a block is Anthropic's 422 naming the check and nothing goes upstream; a
  redaction counts the redacted request and the client's bytes never go upstream;
- per-request specs are bounded (keywords in total, a json_schema's size): an oversized one is a fast 400;
- a `$ref` in a per-request or `response_format` schema is never fetched (a listener on loopback sees no
  connection).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer

MASTER = "sk-master-guardrail-edges"
CARD = "4111 1111 1111 1111"  # a test Visa number (Luhn-valid)
EMAIL = "alice.smith@example.com"
COUNT_PATH = "/v1/messages/count_tokens"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(Fleet(seed=9, models=[SimModel(name="sim-claude"), SimModel(name="sim-gpt")]), instant=True) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    store: Path = tmp_path_factory.mktemp("edges") / "spend.db"
    config = parse_config(
        f"""
deployments:
  - {{name: claude@anthropic, provider: anthropic, model: sim-claude, api_base: "{sim.url}", api_key: k1,
      price: {{input: 3, output: 15}}}}
  - {{name: gpt@openai, provider: openai, model: sim-gpt, api_base: "{sim.openai_base}", api_key: k2,
      price: {{input: 1, output: 2}}}}
guardrails:
  cards-in: [{{check: pii, stage: input, action: block, name: cards-in, kinds: [card]}}]
models:
  claude: {{candidates: [claude@anthropic]}}
  gpt: {{candidates: [gpt@openai]}}
  guarded-in: {{candidates: [claude@anthropic], guardrails: [cards-in]}}
  redact-in: {{candidates: [claude@anthropic], guardrails: [{{check: pii, stage: input, action: redact}}]}}
  schema-out: {{candidates: [gpt@openai], guardrails: [{{check: json_schema}}]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
""",
        source="edges.yaml",
    )
    with BackgroundServer(create_app(config)) as server:
        yield server


def new_key(gateway: BackgroundServer, metadata: dict[str, str]) -> str:
    made = httpx.post(
        gateway.url + "/admin/keys",
        json={"name": "edges", "metadata": metadata},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


def count(gateway: BackgroundServer, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gateway.url + COUNT_PATH, json=body, headers={"x-api-key": key}, timeout=10)


def upstream_counts(sim: SimServer) -> list[str]:
    """The bodies of the count_tokens calls the simulated Anthropic model received, oldest first."""
    seen = httpx.get(f"{sim.url}/_sim/requests/sim-claude").json()["requests"]
    return [str(e["body"]) for e in seen if e["path"] == COUNT_PATH]


def card_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"my card is {CARD}"}], **extra}


# ---------------------------------------------------------------------------- count_tokens


def assert_blocked(answer: httpx.Response, label: str) -> None:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # Anthropic's shape
    assert label in body["error"]["message"] and CARD not in answer.text
    assert f"{label}:input:block fired" in answer.headers["x-modelyard-guardrails"]


def test_count_tokens_runs_a_keys_input_checks(gateway: BackgroundServer, sim: SimServer) -> None:
    key = new_key(gateway, {"guardrails": "cards-in"})
    before = len(upstream_counts(sim))
    assert_blocked(count(gateway, key, card_body("claude")), "cards-in")
    assert len(upstream_counts(sim)) == before  # nothing was sent upstream
    fine = count(gateway, key, {"model": "claude", "messages": [{"role": "user", "content": "no card here"}]})
    assert fine.status_code == 200 and fine.headers["x-modelyard-token-count"] == "provider"
    assert len(upstream_counts(sim)) == before + 1  # the same key counts when nothing fires
    assert count(gateway, MASTER, card_body("claude")).status_code == 200  # another key: no set


def test_count_tokens_runs_a_model_groups_and_the_requests_own_input_checks(
    gateway: BackgroundServer, sim: SimServer
) -> None:
    before = len(upstream_counts(sim))
    assert_blocked(count(gateway, MASTER, card_body("guarded-in")), "cards-in")
    own = {"guardrails": [{"check": "pii", "stage": "input", "action": "block", "name": "mine", "kinds": ["card"]}]}
    assert_blocked(count(gateway, MASTER, card_body("claude", modelyard=own)), "mine")
    assert len(upstream_counts(sim)) == before


def test_count_tokens_counts_the_redacted_request_never_the_clients_bytes(
    gateway: BackgroundServer, sim: SimServer
) -> None:
    prompt = f"Please write to {EMAIL} about the invoice"
    body = {"model": "redact-in", "messages": [{"role": "user", "content": prompt}]}
    answer = count(gateway, MASTER, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modelyard-token-count"] == "provider" and answer.json()["input_tokens"] > 0
    assert "input:redact fired" in answer.headers["x-modelyard-guardrails"]
    sent = upstream_counts(sim)[-1]
    assert "about the invoice" in sent and EMAIL not in sent and "alice" not in sent


# ---------------------------------------------------------------------------- bounded per-request specs


def chat(gateway: BackgroundServer, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=timeout
    )


def test_oversized_keyword_lists_are_a_fast_400(gateway: BackgroundServer, sim: SimServer) -> None:
    """32 checks x 1000 words x 200 characters once took 18 s of event-loop CPU per request to compile."""
    words = [f"{i:04d}" + "w" * 196 for i in range(1000)]
    specs = [{"check": "keywords", "words": words, "name": f"k{n}"} for n in range(32)]
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "modelyard": {"guardrails": specs}}
    before = sim.stats()["models"].get("sim-gpt", {}).get("requests", 0)
    start = time.perf_counter()
    answer = chat(gateway, body)
    elapsed = time.perf_counter() - start
    assert answer.status_code == 400, answer.text[:500]
    error = answer.json()["error"]
    assert error["param"] == "modelyard.guardrails" and "20000" in error["message"].replace(",", "")
    assert elapsed < 0.5, elapsed
    assert sim.stats()["models"].get("sim-gpt", {}).get("requests", 0) == before
    small = [{"check": "keywords", "words": ["forbidden", "banned"]}]
    ok = chat(gateway, {**body, "modelyard": {"guardrails": small}})
    assert ok.status_code == 200, ok.text  # a usual list is untouched


def test_an_oversized_per_request_schema_is_a_400(gateway: BackgroundServer) -> None:
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "d" * 100} for i in range(800)},
    }
    spec = [{"check": "json_schema", "json_schema": schema}]
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "modelyard": {"guardrails": spec}}
    answer = chat(gateway, body)
    assert answer.status_code == 400, answer.text[:500]
    assert answer.json()["error"]["param"] == "modelyard.guardrails" and "KiB" in answer.json()["error"]["message"]


# ---------------------------------------------------------------------------- $ref never fetched


class Listener:
    """A TCP listener on loopback that records whether anything connected to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    seen = Listener()
    yield seen
    seen.close()


def test_a_per_request_schema_ref_is_a_400_and_never_fetched(gateway: BackgroundServer, listener: Listener) -> None:
    ref = {"$ref": f"http://127.0.0.1:{listener.port}/x"}
    spec = [{"check": "json_schema", "json_schema": ref}]
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "modelyard": {"guardrails": spec}}
    answer = chat(gateway, body, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith("modelyard.guardrails")
    time.sleep(0.2)
    assert listener.connections == 0


def test_a_response_format_schema_ref_is_never_fetched(gateway: BackgroundServer, listener: Listener) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": f"http://127.0.0.1:{listener.port}/x"}}}
    body = {
        "model": "schema-out",
        "messages": [{"role": "user", "content": 'Repeat: {"a": 1}'}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    answer = chat(gateway, body, timeout=10)
    assert 400 <= answer.status_code < 500, answer.text  # refused, or (as now) the check fails closed: 422
    message = json.loads(answer.text)["error"]["message"]
    assert "json_schema" in message and "Traceback" not in answer.text
    time.sleep(0.2)
    assert listener.connections == 0
