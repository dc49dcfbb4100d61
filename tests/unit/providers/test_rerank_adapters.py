"""The Cohere, Jina and Voyage rerank adapters, table-tested: requests as each vendor documents them (Cohere v2
`/v2/rerank`, Jina `/v1/rerank`, Voyage `/v1/rerank` with `top_k` and `truncation`), answers back in
Cohere's v2 shape with their usage, and every error status and body as an ErrorKind."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.providers.base import Adapter, discover
from modelyard.providers.rerank import CohereAdapter, JinaAdapter, VoyageAdapter, rerank_error
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

KEY = "sk-test-rerank-secret"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany.", "The capital of Italy is Rome."]
COHERE, JINA, VOYAGE = CohereAdapter(), JinaAdapter(), VoyageAdapter()


def dep(provider: str, model: str = "rerank-model", **kw: Any) -> Deployment:
    return Deployment(name=f"{provider}-rr", provider=provider, model=model, api_key=KEY, kind="rerank", **kw)


def request(units: int = 1, **fields: Any) -> EndpointRequest:
    base: dict[str, Any] = {"model": "rr", "query": "capital of France", "documents": list(DOCS)}
    base.update(fields)
    return EndpointRequest(endpoint="rerank", model="rr", fields=base, units=Usage(search_units=units))


def sent(adapter: Any, d: Deployment, req: EndpointRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
    call = adapter.endpoint_call(d, req)
    assert call.method == "POST"
    return call.url, call.headers, json.loads(call.body)


# ============================================================================ capability and contract


@pytest.mark.parametrize("adapter", [COHERE, JINA, VOYAGE])
def test_each_serves_rerank_through_the_endpoints_capability(adapter: Any) -> None:
    caps = discover(adapter)
    assert caps.endpoints is adapter
    assert adapter.endpoints == frozenset({"rerank"})
    assert caps.names == ("endpoints",)


@pytest.mark.parametrize(
    ("adapter", "provider", "serves"),
    [
        (COHERE, "cohere", "rerank only"),
        (JINA, "jina", "rerank and embeddings"),
        (VOYAGE, "voyage", "rerank and embeddings"),
    ],
)
def test_chat_is_a_400_naming_what_is_served(adapter: Adapter, provider: str, serves: str) -> None:
    d = dep(provider)
    chat = ChatRequest(model="m", messages=[])
    with pytest.raises(GatewayError) as caught:
        adapter.chat_call(d, chat, {}, False)
    assert caught.value.status == 400
    assert f"provider {provider!r} serves {serves}" in caught.value.message
    with pytest.raises(GatewayError):
        adapter.stream_translator(d, chat)
    with pytest.raises(ProviderError):
        adapter.parse_chat(d, chat, b"{}")


def test_cohere_embeddings_are_a_400() -> None:
    with pytest.raises(GatewayError) as caught:
        COHERE.embeddings_call(dep("cohere"), EmbeddingRequest(model="m", input="x"), {})
    assert caught.value.status == 400
    assert "rerank only" in caught.value.message


@pytest.mark.parametrize("adapter", [COHERE, JINA, VOYAGE])
def test_other_endpoints_are_refused(adapter: Any) -> None:
    req = EndpointRequest(endpoint="audio/speech", model="rr", fields={"input": "hi"})
    with pytest.raises(GatewayError) as caught:
        adapter.endpoint_call(dep(adapter.name), req)
    assert caught.value.status == 400
    assert "/v1/audio/speech" in caught.value.message


# ============================================================================ requests


@pytest.mark.parametrize(
    ("adapter", "api_base", "url"),
    [
        (COHERE, None, "https://api.cohere.com/v2/rerank"),
        (COHERE, "http://127.0.0.1:9/", "http://127.0.0.1:9/v2/rerank"),
        (COHERE, "http://127.0.0.1:9/v2", "http://127.0.0.1:9/v2/rerank"),
        (JINA, None, "https://api.jina.ai/v1/rerank"),
        (JINA, "http://127.0.0.1:9", "http://127.0.0.1:9/v1/rerank"),
        (JINA, "http://127.0.0.1:9/v1/", "http://127.0.0.1:9/v1/rerank"),
        (VOYAGE, None, "https://api.voyageai.com/v1/rerank"),
        (VOYAGE, "http://127.0.0.1:9/proxy", "http://127.0.0.1:9/proxy/v1/rerank"),
    ],
)
def test_urls(adapter: Any, api_base: str | None, url: str) -> None:
    got, headers, _ = sent(adapter, dep(adapter.name, api_base=api_base), request())
    assert got == url
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Content-Type"] == "application/json"


def test_deployment_headers_are_added_and_no_key_sends_no_authorization() -> None:
    d = Deployment(name="j", provider="jina", model="m", kind="rerank", headers={"X-Team": "search"})
    _, headers, _ = sent(JINA, d, request())
    assert headers["X-Team"] == "search"
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("adapter", "fields", "options", "body"),
    [
        (
            COHERE,
            {"top_n": 2},
            None,
            {"model": "rerank-model", "query": "capital of France", "documents": DOCS, "top_n": 2},
        ),
        (
            COHERE,
            {"max_tokens_per_doc": 512, "return_documents": True},
            None,
            {"model": "rerank-model", "query": "capital of France", "documents": DOCS, "max_tokens_per_doc": 512},
        ),
        (
            COHERE,
            {},
            {"max_tokens_per_doc": 1024},
            {"model": "rerank-model", "query": "capital of France", "documents": DOCS, "max_tokens_per_doc": 1024},
        ),
        (
            JINA,
            {"top_n": 1, "return_documents": True},
            None,
            {
                "model": "rerank-model",
                "query": "capital of France",
                "documents": DOCS,
                "return_documents": False,
                "top_n": 1,
            },
        ),
        (
            VOYAGE,
            {"top_n": 2},
            None,
            {
                "query": "capital of France",
                "documents": DOCS,
                "model": "rerank-model",
                "return_documents": False,
                "truncation": True,
                "top_k": 2,
            },
        ),
        (
            VOYAGE,
            {},
            {"truncation": False},
            {
                "query": "capital of France",
                "documents": DOCS,
                "model": "rerank-model",
                "return_documents": False,
                "truncation": False,
            },
        ),
    ],
)
def test_request_bodies(adapter: Any, fields: dict[str, Any], options: Any, body: dict[str, Any]) -> None:
    _, _, got = sent(adapter, dep(adapter.name, options=options), request(**fields))
    assert got == body


def test_cohere_relevant_spans_and_priority_pass_through() -> None:
    spans = {"mode": "enabled", "threshold": 0.2, "max_spans": 2}
    _, _, got = sent(COHERE, dep("cohere"), request(relevant_spans=spans, priority=3))
    assert got["relevant_spans"] == spans
    assert got["priority"] == 3
    answer = {
        "results": [
            {"index": 0, "relevance_score": 0.9, "relevant_spans": [{"start": 0, "end": 5, "relevance_score": 0.8}]}
        ]
    }
    done = parse(COHERE, answer)
    assert done.body["results"][0]["relevant_spans"] == [{"start": 0, "end": 5, "relevance_score": 0.8}]


@pytest.mark.parametrize(("field", "value"), [("relevant_spans", "on"), ("priority", "high"), ("priority", True)])
def test_cohere_bad_spans_or_priority_are_a_400(field: str, value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        COHERE.endpoint_call(dep("cohere"), request(**{field: value}))
    assert caught.value.param == field


@pytest.mark.parametrize("adapter", [JINA, VOYAGE])
def test_enabled_relevant_spans_are_a_400_where_the_provider_has_none(adapter: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        adapter.endpoint_call(dep(adapter.name), request(relevant_spans={"mode": "enabled"}))
    assert caught.value.param == "relevant_spans"
    _, _, got = sent(adapter, dep(adapter.name), request(relevant_spans={"mode": "disabled"}, priority=1))
    assert "relevant_spans" not in got
    assert "priority" not in got


def test_cohere_v1_document_objects_go_out_as_strings() -> None:
    req = request(documents=[{"text": "a"}, "b"])
    _, _, got = sent(COHERE, dep("cohere"), req)
    assert got["documents"] == ["a", "b"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"query": ""}, "query"),
        ({"query": 3}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": "one doc"}, "documents"),
        ({"documents": ["ok", {"title": "no text"}]}, "documents[1]"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
    ],
)
@pytest.mark.parametrize("adapter", [COHERE, JINA, VOYAGE])
def test_bad_fields_are_a_400_naming_the_field(adapter: Any, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        adapter.endpoint_call(dep(adapter.name), request(**fields))
    assert caught.value.status == 400
    assert caught.value.param == param


def test_cohere_max_tokens_per_doc_must_be_positive() -> None:
    with pytest.raises(GatewayError) as caught:
        COHERE.endpoint_call(dep("cohere"), request(max_tokens_per_doc=0))
    assert caught.value.param == "max_tokens_per_doc"


def test_options_reject_unknown_fields() -> None:
    with pytest.raises(Exception, match="sampling"):
        dep("voyage", options={"sampling": 1})


# ============================================================================ answers

COHERE_ANSWER = {
    "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
    "results": [{"index": 2, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.98}],
    "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 3}},
}
JINA_ANSWER = {
    "model": "jina-reranker-v2-base-multilingual",
    "usage": {"total_tokens": 57},
    "results": [
        {"index": 0, "document": {"text": DOCS[0]}, "relevance_score": 0.91},
        {"index": 2, "document": {"text": DOCS[2]}, "relevance_score": 0.33},
    ],
}
VOYAGE_ANSWER = {
    "object": "list",
    "data": [{"relevance_score": 0.4, "index": 1}, {"relevance_score": 0.87, "index": 0}],
    "model": "rerank-2.5",
    "usage": {"total_tokens": 41},
}


def parse(adapter: Any, answer: Any, req: EndpointRequest | None = None) -> Any:
    raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    return adapter.parse_endpoint(dep(adapter.name), req or request(), raw, {})


def test_cohere_answer_keeps_its_id_sorts_and_bills_its_search_units() -> None:
    done = parse(COHERE, COHERE_ANSWER)
    assert done.body == {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "results": [{"index": 0, "relevance_score": 0.98}, {"index": 2, "relevance_score": 0.2}],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 3}},
    }
    assert done.usage == Usage(search_units=3)
    assert done.model == "rerank-model"


def test_cohere_answer_without_billed_units_is_charged_the_measured_units() -> None:
    answer = {"id": "x", "results": [{"index": 1, "relevance_score": 0.5}]}
    done = parse(COHERE, answer, request(units=2))
    assert done.usage == Usage(search_units=2)
    assert done.body["meta"]["billed_units"] == {"search_units": 2}


def test_documents_come_back_from_the_request_when_asked() -> None:
    done = parse(COHERE, COHERE_ANSWER, request(return_documents=True))
    assert [r["document"] for r in done.body["results"]] == [{"text": DOCS[0]}, {"text": DOCS[2]}]


def test_jina_answer_in_cohere_shape_with_tokens() -> None:
    done = parse(JINA, JINA_ANSWER, request(units=1, return_documents=True))
    assert done.body["results"] == [
        {"index": 0, "relevance_score": 0.91, "document": {"text": DOCS[0]}},
        {"index": 2, "relevance_score": 0.33, "document": {"text": DOCS[2]}},
    ]
    assert done.body["meta"]["billed_units"] == {"search_units": 1, "input_tokens": 57}
    assert done.body["meta"]["tokens"] == {"input_tokens": 57, "output_tokens": 0}
    assert done.body["id"].startswith("rerank-")
    assert done.usage == Usage(prompt=57, search_units=1)


def test_voyage_data_sorted_top_n_applied_and_tokens_billed() -> None:
    done = parse(VOYAGE, VOYAGE_ANSWER, request(top_n=1))
    assert done.body["results"] == [{"index": 0, "relevance_score": 0.87}]
    assert done.usage == Usage(prompt=41, search_units=1)


def test_equal_scores_keep_document_order() -> None:
    answer = {"data": [{"index": 2, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.5}]}
    done = parse(VOYAGE, answer)
    assert [r["index"] for r in done.body["results"]] == [0, 2]


@pytest.mark.parametrize(
    ("adapter", "answer", "says"),
    [
        (COHERE, b"<html>", "not JSON"),
        (COHERE, [1, 2], "not an object"),
        (COHERE, {"id": "x"}, "no results list"),
        (JINA, {"results": [{"index": 7, "relevance_score": 0.1}]}, "index is out of range"),
        (JINA, {"results": [{"index": -1, "relevance_score": 0.1}]}, "index is out of range"),
        (JINA, {"results": [{"index": 0}]}, "no relevance_score"),
        (VOYAGE, {"results": []}, "no data list"),
        (VOYAGE, {"data": [{"index": "0", "relevance_score": 0.1}]}, "index is out of range"),
    ],
)
def test_malformed_answers_are_server_errors(adapter: Any, answer: Any, says: str) -> None:
    with pytest.raises(ProviderError) as caught:
        parse(adapter, answer)
    assert caught.value.kind is ErrorKind.SERVER
    assert says in str(caught.value)


# ============================================================================ errors


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after", "text"),
    [
        (
            400,
            {},
            {"id": "1", "message": "invalid request: query must not be empty"},
            ErrorKind.BAD_REQUEST,
            None,
            "query",
        ),
        (401, {}, {"message": "invalid api token"}, ErrorKind.AUTH, None, None),
        (402, {}, {"message": "please add a payment method"}, ErrorKind.AUTH, None, None),
        (403, {}, {"detail": "Forbidden"}, ErrorKind.AUTH, None, None),
        (498, {}, {"message": "invalid token"}, ErrorKind.AUTH, None, None),
        (404, {}, {"message": "model 'x' not found"}, ErrorKind.BAD_REQUEST, None, "not found"),
        (
            422,
            {},
            {"detail": [{"loc": ["body", "query"], "msg": "field required"}]},
            ErrorKind.BAD_REQUEST,
            None,
            "field required",
        ),
        (
            400,
            {},
            {"detail": "Input is too long: exceeds the maximum number of tokens"},
            ErrorKind.CONTEXT_LENGTH,
            None,
            "too long",
        ),
        (429, {"retry-after": "7"}, {"message": "too many requests"}, ErrorKind.RATE_LIMITED, 7.0, None),
        (429, {"Retry-After": "2"}, {"detail": "Rate limit exceeded"}, ErrorKind.RATE_LIMITED, 2.0, None),
        (499, {}, {"message": "request cancelled"}, ErrorKind.CONNECTION, None, None),
        (500, {}, {"message": "internal server error"}, ErrorKind.SERVER, None, None),
        (502, {}, b"<html>bad gateway</html>", ErrorKind.SERVER, None, None),
        (503, {}, {"detail": "Service Unavailable"}, ErrorKind.OVERLOADED, None, None),
        (504, {}, {"error": {"message": "timeout"}}, ErrorKind.TIMEOUT, None, None),
    ],
)
def test_errors(
    status: int, headers: dict[str, str], body: Any, kind: ErrorKind, retry_after: float | None, text: str | None
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    for adapter in (COHERE, JINA, VOYAGE):
        err = adapter.error(status, headers, raw)
        assert err.kind is kind
        assert err.status == status
        assert err.retry_after == retry_after
        if text is not None:  # client-actionable: the provider's words reach the client
            assert text in err.message
    assert rerank_error(status, headers, raw).kind is kind


def test_an_auth_error_keeps_the_providers_text_out_of_the_client_message() -> None:
    err = rerank_error(401, {}, json.dumps({"message": f"invalid api token {KEY}"}).encode())
    assert KEY not in err.message
    assert "invalid api token" not in err.message


# ============================================================================ embeddings (Jina, Voyage)


def embed_dep(provider: str, **kw: Any) -> Deployment:
    return Deployment(name=f"{provider}-emb", provider=provider, model="emb-v3", api_key=KEY, kind="embedding", **kw)


@pytest.mark.parametrize(
    ("adapter", "req", "options", "url", "body"),
    [
        (
            JINA,
            EmbeddingRequest(model="e", input="hello"),
            None,
            "https://api.jina.ai/v1/embeddings",
            {"model": "emb-v3", "input": ["hello"]},
        ),
        (
            JINA,
            EmbeddingRequest(model="e", input=["a", "b"], dimensions=256, encoding_format="base64"),
            {"task": "retrieval.query"},
            "https://api.jina.ai/v1/embeddings",
            {
                "model": "emb-v3",
                "input": ["a", "b"],
                "dimensions": 256,
                "embedding_type": "base64",
                "task": "retrieval.query",
            },
        ),
        (
            VOYAGE,
            EmbeddingRequest(model="e", input="hello"),
            None,
            "https://api.voyageai.com/v1/embeddings",
            {"input": ["hello"], "model": "emb-v3", "truncation": True},
        ),
        (
            VOYAGE,
            EmbeddingRequest(model="e", input=["a"], dimensions=512, encoding_format="base64"),
            {"input_type": "document", "truncation": False},
            "https://api.voyageai.com/v1/embeddings",
            {
                "input": ["a"],
                "model": "emb-v3",
                "truncation": False,
                "output_dimension": 512,
                "encoding_format": "base64",
                "input_type": "document",
            },
        ),
    ],
)
def test_embedding_requests(adapter: Any, req: EmbeddingRequest, options: Any, url: str, body: dict[str, Any]) -> None:
    call = adapter.embeddings_call(embed_dep(adapter.name, options=options), req, {})
    assert call.url == url
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(call.body) == body


@pytest.mark.parametrize("adapter", [JINA, VOYAGE])
@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2]], []])
def test_token_id_input_is_a_400(adapter: Any, value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        adapter.embeddings_call(embed_dep(adapter.name), EmbeddingRequest(model="e", input=value), {})
    assert caught.value.param == "input"


def test_input_type_must_be_voyages() -> None:
    with pytest.raises(Exception, match="input_type"):
        embed_dep("voyage", options={"input_type": "passage"})


@pytest.mark.parametrize(
    ("adapter", "answer", "prompt"),
    [
        (
            JINA,
            {
                "model": "jina-embeddings-v3",
                "object": "list",
                "usage": {"total_tokens": 8, "prompt_tokens": 8},
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            },
            8,
        ),
        (
            VOYAGE,
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": [0.5, 0.25], "index": 0}],
                "model": "voyage-3.5",
                "usage": {"total_tokens": 5},
            },
            5,
        ),
        (VOYAGE, {"data": [{"embedding": "AAAAPw=="}]}, 0),
    ],
)
def test_embedding_answers_in_openai_shape(adapter: Any, answer: dict[str, Any], prompt: int) -> None:
    done = adapter.parse_embeddings(
        embed_dep(adapter.name), EmbeddingRequest(model="e", input="x"), json.dumps(answer).encode()
    )
    assert done.body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": answer["data"][0]["embedding"]}],
        "model": "emb-v3",
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    assert done.usage == Usage(prompt=prompt)


@pytest.mark.parametrize("answer", [{"embeddings": []}, {"data": [{"index": 0}]}, {"data": [{"embedding": 3}]}])
def test_malformed_embedding_answers_are_server_errors(answer: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        VOYAGE.parse_embeddings(
            embed_dep("voyage"), EmbeddingRequest(model="e", input="x"), json.dumps(answer).encode()
        )
    assert caught.value.kind is ErrorKind.SERVER
