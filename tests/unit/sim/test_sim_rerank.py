"""The simulator's rerank routes: Cohere's `/v2/rerank`, Jina's and Voyage's `/v1/rerank`, each in its
vendor's shape, scored by word overlap, with the app's credentials, faults and request log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.sim import create_app
from modelyard.sim.app import SimApp
from modelyard.sim.media_rerank import claims, relevance
from tests.unit.sim.sim_helpers import Result, asgi_call, fleet

QUERY = "capital of France"
DOCS = ["Berlin is in Germany.", "Paris is the capital of France.", "France has many rivers."]


def app(api_key: str | None = None) -> SimApp:
    return create_app(
        fleet(
            {"name": "rr", "kind": "rerank", "faults": {"retry_after_s": 3}},
            {"name": "chatty"},
            api_key=api_key,
        )
    )


def call(sim: SimApp, path: str, body: Any, headers: dict[str, str] | None = None) -> Result:
    return asyncio.run(asgi_call(sim, "POST", path, body, headers))


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "rr", "query": QUERY, "documents": list(DOCS), **extra}


def test_claims_only_the_rerank_posts() -> None:
    assert claims("POST", "/v2/rerank") and claims("POST", "/v1/rerank")
    assert not claims("GET", "/v1/rerank")
    assert not claims("POST", "/v1/rerank/x")


def test_relevance_is_word_overlap() -> None:
    assert relevance(QUERY, "Paris is the capital of France.") == 0.95  # 0.9 * 3/3 + 0.1 * 3/6
    assert relevance(QUERY, "Berlin is in Germany.") == 0.0
    assert relevance(QUERY, "") == 0.0
    assert 0 < relevance(QUERY, "France has many rivers.") < relevance(QUERY, DOCS[1])


def test_cohere_v2_shape() -> None:
    r = call(app(), "/v2/rerank", body(top_n=2))
    assert r.status == 200
    data = r.json()
    assert [x["index"] for x in data["results"]] == [1, 2]
    assert set(data["results"][0]) == {"index", "relevance_score"}
    assert data["results"][0]["relevance_score"] == relevance(QUERY, DOCS[1])
    assert data["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert len(data["id"]) == 32


def test_cohere_bills_a_search_unit_per_hundred_documents() -> None:
    r = call(app(), "/v2/rerank", body(documents=[f"doc {i}" for i in range(201)]))
    assert r.json()["meta"]["billed_units"]["search_units"] == 3
    assert len(r.json()["results"]) == 201


def test_cohere_v2_refuses_v1_fields_and_objects() -> None:
    r = call(app(), "/v2/rerank", body(return_documents=True))
    assert r.status == 400
    assert r.json() == {"message": "return_documents is not a v2 rerank parameter"}
    r = call(app(), "/v2/rerank", body(documents=[{"text": "x"}]))
    assert r.status == 400
    assert "documents[0] must be a string" in r.json()["message"]


def test_jina_shape_returns_documents_by_default() -> None:
    r = call(app(), "/v1/rerank", body(top_n=1))
    data = r.json()
    assert r.status == 200
    assert data["results"] == [
        {"index": 1, "relevance_score": relevance(QUERY, DOCS[1]), "document": {"text": DOCS[1]}}
    ]
    assert data["model"] == "rr"
    query_tokens = (len(QUERY) + 3) // 4
    assert data["usage"] == {"total_tokens": query_tokens * 3 + sum((len(d) + 3) // 4 for d in DOCS)}


def test_jina_without_documents_and_with_object_documents() -> None:
    r = call(app(), "/v1/rerank", body(return_documents=False, documents=[{"text": "Paris"}, "capital"]))
    assert r.status == 200
    assert [set(x) for x in r.json()["results"]] == [{"index", "relevance_score"}] * 2


@pytest.mark.parametrize(
    ("extra", "headers"),
    [({"top_k": 2}, None), ({"truncation": True}, None), ({}, {"x-sim-wire": "Voyage"})],
)
def test_voyage_shape(extra: dict[str, Any], headers: dict[str, str] | None) -> None:
    r = call(app(), "/v1/rerank", body(**extra), headers)
    data = r.json()
    assert r.status == 200
    assert data["object"] == "list"
    assert "results" not in data
    assert data["data"][0] == {"index": 1, "relevance_score": relevance(QUERY, DOCS[1])}
    assert len(data["data"]) == extra.get("top_k", 3)
    assert data["usage"]["total_tokens"] > 0


def test_voyage_documents_are_strings() -> None:
    r = call(app(), "/v1/rerank", body(top_k=1, return_documents=True))
    assert r.json()["data"] == [{"index": 1, "relevance_score": relevance(QUERY, DOCS[1]), "document": DOCS[1]}]


def test_same_request_same_answer() -> None:
    sim = app()
    first = call(sim, "/v1/rerank", body()).json()
    second = call(sim, "/v1/rerank", body()).json()
    assert first == second


@pytest.mark.parametrize(
    ("path", "payload", "status", "key", "says"),
    [
        ("/v2/rerank", b"not json", 400, "message", "not valid JSON"),
        ("/v1/rerank", {"model": "rr", "documents": ["a"]}, 400, "detail", "query"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": []}, 400, "detail", "documents"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["a"], "top_k": 0}, 400, "detail", "top_k"),
        ("/v2/rerank", {"model": "rr", "query": "q", "documents": ["a"], "top_n": "3"}, 400, "message", "top_n"),
        ("/v2/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "message", "nope"),
        ("/v1/rerank", {"model": "chatty", "query": "q", "documents": ["a"]}, 400, "detail", "not a rerank model"),
        ("/v1/rerank", {"query": "q", "documents": ["a"]}, 400, "detail", "model"),
    ],
)
def test_bad_requests_in_the_vendors_error_shape(path: str, payload: Any, status: int, key: str, says: str) -> None:
    r = call(app(), path, payload)
    assert r.status == status
    assert says in r.json()[key]


@pytest.mark.parametrize(("path", "key"), [("/v2/rerank", "message"), ("/v1/rerank", "detail")])
def test_credentials_are_checked(path: str, key: str) -> None:
    sim = app(api_key="sk-sim")
    r = call(sim, path, body())
    assert r.status == 401
    assert r.json() == {key: "invalid api token"}
    assert call(sim, path, body(), {"authorization": "Bearer sk-sim"}).status == 200


@pytest.mark.parametrize(("fault", "status"), [("rate_limit", 429), ("server_error", 500), ("unavailable", 503)])
def test_status_faults(fault: str, status: int) -> None:
    r = call(app(), "/v2/rerank", body(), {"x-sim-fault": fault})
    assert r.status == status
    assert "message" in r.json()
    if fault == "rate_limit":
        assert r.headers["retry-after"] == "3"


def test_malformed_and_reset_faults() -> None:
    sim = app()
    r = call(sim, "/v1/rerank", body(), {"x-sim-fault": "malformed"})
    assert r.status == 200
    with pytest.raises(ValueError):
        r.json()
    r = call(sim, "/v1/rerank", body(), {"x-sim-fault": "reset"})
    assert r.aborted
    r = call(sim, "/v1/rerank", body(), {"x-sim-fault": "bogus"})
    assert r.status == 400
    assert "x-sim-fault" in r.json()["detail"]


def test_requests_are_recorded_without_credentials_and_counted() -> None:
    sim = app(api_key="sk-sim")
    call(sim, "/v1/rerank", body(top_k=1), {"authorization": "Bearer sk-sim", "x-team": "a"})
    log = sim.received.snapshot("rr")
    assert len(log) == 1
    assert log[0]["path"] == "/v1/rerank"
    assert '"top_k":1' in log[0]["body"]
    assert log[0]["headers"]["x-team"] == "a"
    assert "authorization" not in log[0]["headers"]
    stats = sim.stats.snapshot()
    model = stats["models"]["rr"] if "models" in stats else stats["rr"]
    assert model["requests"] == 1
    assert model["successes"] == 1
    assert model["by_wire"]["voyage"] == 1
