"""Rerank through the real gateway to Cohere, Jina and Voyage deployments on the simulator: the client speaks
Cohere's v2 shape (httpx, and Cohere's own Python SDK), each upstream gets its vendor's request, the answer
comes back in Cohere's shape, billed by search unit or by token, and nothing leaves loopback. Jina's and
Voyage's embeddings too, with the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.embedding import embed
from modelyard.sim.server import SimServer
from modelyard.testing.loopback import LoopbackGuard

MASTER = "sk-master-rerank-0123456789"
SECRETS = {p: f"sk-test-{p}-secret" for p in ("cohere", "jina", "voyage")}
QUERY = "capital of France"
DOCS = ["Berlin is in Germany.", "Paris is the capital of France.", "France has many rivers.", "Rome is old."]

CONFIG = """
deployments:
  - {{name: rr@cohere, provider: cohere, kind: rerank, model: sim-rerank, api_base: "{sim}",
     api_key: {cohere}, price: {{search_unit: 2.0}}, options: {{max_tokens_per_doc: 512}}}}
  - {{name: rr@jina, provider: jina, kind: rerank, model: sim-rerank, api_base: "{sim}",
     api_key: {jina}, price: {{input: 0.02}}}}
  - {{name: rr@voyage, provider: voyage, kind: rerank, model: sim-rerank, api_base: "{sim}/v1",
     api_key: {voyage}, price: {{input: 0.05}}}}
  - {{name: broken@cohere, provider: cohere, kind: rerank, model: sim-rerank, api_base: "{sim}",
     api_key: {cohere}, headers: {{x-sim-fault: server_error}}, price: {{search_unit: 2.0}}}}
  - {{name: small@openai, provider: openai, model: sim-small, api_base: "{sim}/v1"}}
  - {{name: emb@jina, provider: jina, kind: embedding, model: sim-embed, api_base: "{sim}", api_key: {jina},
     price: {{input: 0.02}}, options: {{task: retrieval.passage}}}}
  - {{name: emb@voyage, provider: voyage, kind: embedding, model: sim-embed, api_base: "{sim}", api_key: {voyage},
     price: {{input: 0.06}}, options: {{input_type: query}}}}
models:
  cohere: {{candidates: [rr@cohere]}}
  jina: {{candidates: [rr@jina]}}
  voyage: {{candidates: [rr@voyage]}}
  failover: {{candidates: [broken@cohere, rr@voyage]}}
  broken: {{candidates: [broken@cohere]}}
  chat: {{candidates: [small@openai]}}
  embed-jina: {{candidates: [emb@jina]}}
  embed-voyage: {{candidates: [emb@voyage]}}
access: {{master_key: {master}, refresh_s: 0}}
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    text = CONFIG.format(sim=sim.url.rstrip("/"), master=MASTER, **SECRETS)
    with BackgroundServer(create_app(parse_config(text, source="rerank.yaml"))) as server:
        yield server


def rerank(gateway: BackgroundServer, path: str = "/v2/rerank", **fields: Any) -> httpx.Response:
    body = {"query": QUERY, "documents": DOCS, **fields}
    return httpx.post(gateway.url + path, json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)


def upstream(sim: SimServer) -> dict[str, Any]:
    """The last request the simulator's rerank model received: its path, headers and decoded body."""
    log = httpx.get(f"{sim.url.rstrip('/')}/_sim/requests/sim-rerank", timeout=10).json()["requests"]
    assert log, "the simulator received no rerank request"
    last = log[-1]
    return {"path": last["path"], "headers": last["headers"], "body": json.loads(last["body"])}


@pytest.mark.parametrize("provider", ["cohere", "jina", "voyage"])
def test_each_provider_answers_in_cohere_v2_shape(gateway: BackgroundServer, provider: str) -> None:
    with LoopbackGuard() as guard:
        r = rerank(gateway, model=provider, top_n=2, return_documents=True)
    assert guard.outside() == []
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-modelyard-model"] == f"rr@{provider}"
    assert [x["index"] for x in body["results"]] == [1, 2]  # the simulator scores by word overlap
    assert body["results"][0]["document"] == {"text": DOCS[1]}
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[1] < scores[0] <= 1
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert isinstance(body["id"], str) and body["id"]
    for secret in SECRETS.values():
        assert secret not in r.text


def test_cohere_upstream_gets_v2_rerank_billed_by_search_unit(gateway: BackgroundServer, sim: SimServer) -> None:
    r = rerank(gateway, model="cohere", top_n=3)
    assert r.status_code == 200, r.text
    assert "document" not in r.json()["results"][0]  # not asked for
    assert float(r.headers["x-modelyard-cost-usd"]) == pytest.approx(1 * 2.0 / 1000)
    sent = upstream(sim)
    assert sent["path"] == "/v2/rerank"
    assert sent["body"] == {
        "model": "sim-rerank",
        "query": QUERY,
        "documents": DOCS,
        "top_n": 3,
        "max_tokens_per_doc": 512,
    }
    assert "authorization" not in sent["headers"]  # the simulator never keeps credentials


def test_jina_upstream_and_token_billing(gateway: BackgroundServer, sim: SimServer) -> None:
    r = rerank(gateway, "/v1/rerank", model="jina", top_n=1)
    assert r.status_code == 200, r.text
    sent = upstream(sim)
    assert sent["path"] == "/v1/rerank"
    assert sent["body"] == {
        "model": "sim-rerank",
        "query": QUERY,
        "documents": DOCS,
        "return_documents": False,
        "top_n": 1,
    }
    tokens = r.json()["meta"]["billed_units"]["input_tokens"]
    query_tokens = (len(QUERY) + 3) // 4
    assert tokens == query_tokens * len(DOCS) + sum((len(d) + 3) // 4 for d in DOCS)
    assert float(r.headers["x-modelyard-cost-usd"]) == pytest.approx(tokens * 0.02 / 1e6)


def test_voyage_upstream_uses_top_k_and_truncation(gateway: BackgroundServer, sim: SimServer) -> None:
    r = rerank(gateway, model="voyage", top_n=2, return_documents=True)
    assert r.status_code == 200, r.text
    sent = upstream(sim)
    assert sent["path"] == "/v1/rerank"
    assert sent["body"] == {
        "query": QUERY,
        "documents": DOCS,
        "model": "sim-rerank",
        "return_documents": False,
        "truncation": True,
        "top_k": 2,
    }
    tokens = r.json()["meta"]["tokens"]["input_tokens"]
    assert tokens > 0
    assert float(r.headers["x-modelyard-cost-usd"]) == pytest.approx(tokens * 0.05 / 1e6)


def test_object_documents_reach_each_provider_as_text(gateway: BackgroundServer, sim: SimServer) -> None:
    docs = [{"text": "Paris is the capital of France."}, {"title": "Rivers", "body": "France has many rivers."}]
    r = rerank(gateway, model="voyage", documents=docs, return_documents=True)
    assert r.status_code == 200, r.text
    assert upstream(sim)["body"]["documents"] == [docs[0]["text"], "title: Rivers\nbody: France has many rivers."]
    assert r.json()["results"][0]["document"] == {"text": "Paris is the capital of France."}


def test_a_failing_provider_fails_over_to_the_next(gateway: BackgroundServer) -> None:
    r = rerank(gateway, model="failover", top_n=1)
    assert r.status_code == 200, r.text
    assert r.headers["x-modelyard-model"] == "rr@voyage"
    assert r.json()["results"][0]["index"] == 1


def test_a_provider_error_alone_is_the_gateways_error(gateway: BackgroundServer) -> None:
    r = rerank(gateway, model="broken")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "server"
    assert "broken@cohere" in r.json()["error"]["message"]
    assert SECRETS["cohere"] not in r.text


def test_a_chat_model_cannot_rerank(gateway: BackgroundServer) -> None:
    r = rerank(gateway, model="chat")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "wrong_model_kind"
    assert "serves chat, request is rerank" in r.json()["error"]["message"]


def test_a_bad_request_is_a_400_before_any_provider_call(gateway: BackgroundServer, sim: SimServer) -> None:
    before = len(httpx.get(f"{sim.url.rstrip('/')}/_sim/requests/sim-rerank", timeout=10).json()["requests"])
    r = rerank(gateway, model="cohere", top_n=0)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "top_n"
    after = len(httpx.get(f"{sim.url.rstrip('/')}/_sim/requests/sim-rerank", timeout=10).json()["requests"])
    assert after == before


def test_cohere_sdk_client(gateway: BackgroundServer, sim: SimServer) -> None:
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key=MASTER, base_url=gateway.url, timeout=30, max_retries=0)
    with LoopbackGuard() as guard:
        answer = client.rerank(model="jina", query=QUERY, documents=DOCS, top_n=2)
    assert guard.outside() == []
    assert [r.index for r in answer.results] == [1, 2]
    assert answer.results[0].relevance_score > answer.results[1].relevance_score
    assert answer.meta is not None and answer.meta.billed_units is not None
    assert answer.meta.billed_units.search_units == 1
    assert upstream(sim)["body"]["top_n"] == 2


@pytest.mark.parametrize("provider", ["jina", "voyage"])
def test_embeddings_through_jina_and_voyage(gateway: BackgroundServer, provider: str) -> None:
    """The upstream bodies (`task`, `input_type`, `truncation`) are the unit tests' business: the simulator
    does not log embedding requests. Here: the round trip, the vectors the simulator made, usage and cost."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=30)
    texts = ["hello world", "goodbye"]
    with LoopbackGuard() as guard:
        raw = client.embeddings.with_raw_response.create(model=f"embed-{provider}", input=texts)
    assert guard.outside() == []
    assert raw.headers["x-modelyard-model"] == f"emb@{provider}"
    answer = raw.parse()
    assert [d.index for d in answer.data] == [0, 1]
    for item, text in zip(answer.data, texts, strict=True):
        assert item.embedding == pytest.approx(embed(text, 384))
    assert answer.model == "sim-embed"
    assert answer.usage.prompt_tokens > 0
    assert float(raw.headers["x-modelyard-cost-usd"]) > 0
