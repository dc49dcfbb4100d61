"""Claude on Vertex AI (`provider: vertex_anthropic`): `:rawPredict` / `:streamRawPredict` URLs, the Messages
body without `model` and with `anthropic_version: vertex-2023-10-16` (as Anthropic's own Vertex client sends
it), native pass-through byte for byte, Vertex's count-tokens endpoint, and errors in both shapes Vertex
answers with (Google's front end, Anthropic's model)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.config.providers import AdapterConfigError, bind_options
from modelyard.providers.anthropic import NATIVE_FORMAT, AnthropicAdapter
from modelyard.providers.base import SSEEvent
from modelyard.providers.vertex import VERTEX_ANTHROPIC_VERSION, VertexAnthropicAdapter, native_vertex_body
from modelyard.schema.chat import EmbeddingRequest, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError

ADAPTER = VertexAnthropicAdapter()
BASE = "https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models"

CLIENT_BODY: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Fix it", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look at the file.", "signature": "EqQBCgIYAhIMsig=="},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"}]},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 4096},
    "stream": True,
}


def dep(model: str = "claude-sonnet-4-5@20250929", **options: Any) -> Deployment:
    opts = {"project": "my-proj", "location": "us-east5", **options}
    return Deployment(name="c@vertex", provider="vertex_anthropic", model=model, options=opts)


def chat(**fields: Any) -> tuple[Any, dict[str, Any]]:
    raw = {"model": "m", "messages": [{"role": "user", "content": "Hello"}], **fields}
    return chat_request_from_dict(raw), raw


# ----------------------------------------------------------------------------- translated requests


@pytest.mark.parametrize(("stream", "method"), [(False, "rawPredict"), (True, "streamRawPredict")])
def test_chat_url_and_body(stream: bool, method: str) -> None:
    req, raw = chat(max_tokens=64, temperature=0.5)
    call = ADAPTER.chat_call(dep(), req, raw, stream=stream)
    assert call.method == "POST" and call.url == f"{BASE}/claude-sonnet-4-5@20250929:{method}"
    body = json.loads(call.body)
    assert "model" not in body and next(iter(body)) == "anthropic_version"
    assert body["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    assert body["max_tokens"] == 64 and body["temperature"] == 0.5
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body.get("stream") is (True if stream else None)


def test_body_is_anthropics_less_model() -> None:
    req, raw = chat(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi"}], stop="X")
    vertex = json.loads(ADAPTER.chat_call(dep(), req, raw, stream=False).body)
    first_party = Deployment(name="a", provider="anthropic", model="claude-sonnet-4-5@20250929", api_key="k")
    anthropic = json.loads(AnthropicAdapter().chat_call(first_party, req, raw, stream=False).body)
    anthropic.pop("model")
    assert {k: v for k, v in vertex.items() if k != "anthropic_version"} == anthropic


def test_headers_carry_no_key_and_no_version_header_but_betas() -> None:
    req, raw = chat()
    headers = ADAPTER.chat_call(dep(beta=["context-1m-2025-08-07"]), req, raw, stream=False).headers
    assert headers == {"content-type": "application/json", "anthropic-beta": "context-1m-2025-08-07"}


def test_global_location_and_version_option() -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(location="global", anthropic_version="vertex-2099-01-01"), req, raw, stream=False)
    assert call.url.startswith("https://aiplatform.googleapis.com/v1/projects/my-proj/locations/global/")
    assert json.loads(call.body)["anthropic_version"] == "vertex-2099-01-01"


def test_options_are_checked_at_load() -> None:
    with pytest.raises(AdapterConfigError) as info:
        bind_options("vertex_anthropic", {"project": "p", "api_key": "x"})
    assert info.value.key == "options.api_key"
    assert bind_options("vertex_anthropic", {"project": "p"}).location == "us-central1"  # type: ignore[attr-defined]


def test_embeddings_are_a_clear_400() -> None:
    with pytest.raises(GatewayError) as info:
        ADAPTER.embeddings_call(dep(), EmbeddingRequest(model="e", input="x"), {})
    assert info.value.status == 400 and "embeddings" in info.value.message


# ----------------------------------------------------------------------------- native pass-through


def test_native_body_is_the_clients_bytes_with_model_swapped_for_the_version() -> None:
    raw = json.dumps(CLIENT_BODY, indent=1).encode()  # json.dumps' own spacing: kept as the client wrote it
    call = ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, True, {}, raw=raw)
    expected = raw.replace(b'"model": "claude"', b'"anthropic_version":"vertex-2023-10-16"', 1)
    assert call.body == expected
    sent = json.loads(call.body)
    assert "model" not in sent and sent["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    assert sent["messages"] == CLIENT_BODY["messages"] and sent["system"] == CLIENT_BODY["system"]
    assert call.url == f"{BASE}/claude-sonnet-4-5@20250929:streamRawPredict"
    assert CLIENT_BODY["model"] == "claude"  # the caller's dict is untouched


def test_native_body_reencoded_when_the_splice_is_ambiguous() -> None:
    body = {**CLIENT_BODY, "metadata": {"note": {"model": "claude"}}}
    raw = json.dumps(body).encode()  # `"model": "claude"` appears twice
    sent = json.loads(native_vertex_body(body, raw, VERTEX_ANTHROPIC_VERSION, True))
    assert sent == {"anthropic_version": VERTEX_ANTHROPIC_VERSION, **{k: v for k, v in body.items() if k != "model"}}
    assert next(iter(sent)) == "anthropic_version" and sent["metadata"] == {"note": {"model": "claude"}}


def test_native_stream_flag_follows_the_attempt() -> None:
    body = {k: v for k, v in CLIENT_BODY.items() if k != "stream"}
    raw = json.dumps(body).encode()
    streamed = ADAPTER.native_call(dep(), NATIVE_FORMAT, body, True, {}, raw=raw)
    assert json.loads(streamed.body)["stream"] is True and streamed.url.endswith(":streamRawPredict")
    plain = ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, False, {}, raw=json.dumps(CLIENT_BODY).encode())
    assert "stream" not in json.loads(plain.body) and plain.url.endswith(":rawPredict")


def test_native_body_with_its_own_version_keeps_ours() -> None:
    body = {**CLIENT_BODY, "anthropic_version": "bedrock-2023-05-31"}
    sent = json.loads(native_vertex_body(body, json.dumps(body).encode(), VERTEX_ANTHROPIC_VERSION, True))
    assert sent["anthropic_version"] == VERTEX_ANTHROPIC_VERSION and "model" not in sent


@pytest.mark.parametrize(
    ("client", "beta", "expected"),
    [
        ({}, None, None),
        ({"anthropic-beta": "interleaved-thinking-2025-05-14"}, None, "interleaved-thinking-2025-05-14"),
        ({"anthropic-beta": " a , b,,"}, ["b", "c"], "b,c,a"),
    ],
)
def test_native_headers_forward_betas_never_credentials(client: dict[str, str], beta: Any, expected: Any) -> None:
    options = {"beta": beta} if beta else {}
    headers = {**client, "x-api-key": "client-key", "anthropic-version": "2023-06-01"}
    call = ADAPTER.native_call(dep(**options), NATIVE_FORMAT, CLIENT_BODY, True, headers)
    assert call.headers.get("anthropic-beta") == expected
    assert "x-api-key" not in call.headers and "anthropic-version" not in call.headers


def test_native_answer_and_stream_are_anthropics() -> None:
    answer = (
        b'{"id":"msg_vrtx_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",'
        b'"content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,'
        b'"usage":{"input_tokens":10,"output_tokens":2}}'
    )
    completion = ADAPTER.parse_native(dep(), NATIVE_FORMAT, answer)
    assert completion.native == answer and completion.usage.prompt == 10 and completion.usage.completion == 2
    stream = ADAPTER.native_stream(dep(), NATIVE_FORMAT)
    start = b'{"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":7}}}'
    stream.feed(SSEEvent(start, "message_start"))
    stream.feed(SSEEvent(b'{"type":"message_stop"}', "message_stop"))
    assert stream.done and stream.usage.prompt == 7


def test_translated_answer_parses() -> None:
    answer = {
        "id": "msg_vrtx_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hello there"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3},
    }
    req, _ = chat()
    completion = ADAPTER.parse_chat(dep(), req, json.dumps(answer).encode())
    assert completion.body["choices"][0]["message"]["content"] == "Hello there"
    assert completion.body["choices"][0]["finish_reason"] == "stop" and completion.usage.total == 8


# ----------------------------------------------------------------------------- token counting


def test_count_tokens_calls_use_vertexs_endpoint() -> None:
    req, _ = chat()
    call = ADAPTER.count_tokens_call(dep(), req)
    assert call.url == f"{BASE}/count-tokens:rawPredict"
    body = json.loads(call.body)
    assert body["model"] == "claude-sonnet-4-5@20250929" and body["anthropic_version"] == VERTEX_ANTHROPIC_VERSION
    assert "max_tokens" not in body
    native = ADAPTER.native_count_tokens_call(dep(), {"model": "claude", "messages": []}, {"anthropic-beta": "x"})
    assert json.loads(native.body)["model"] == "claude-sonnet-4-5@20250929"
    assert native.headers["anthropic-beta"] == "x" and native.url == call.url
    assert ADAPTER.parse_count_tokens(dep(), b'{"input_tokens": 42}') == 42


# ----------------------------------------------------------------------------- errors


def _google(code: int, status: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}).encode()


def _anthropic(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, _google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), ErrorKind.AUTH),
        (403, _google(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied"), ErrorKind.AUTH),
        (
            429,
            _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded for online_prediction_requests_per_base_model"),
            ErrorKind.RATE_LIMITED,
        ),
        (404, _google(404, "NOT_FOUND", "Publisher Model `claude-9` not found."), ErrorKind.BAD_REQUEST),
        (503, _google(503, "UNAVAILABLE", "The service is currently unavailable."), ErrorKind.OVERLOADED),
        (400, _anthropic("invalid_request_error", "messages: at least one message is required"), ErrorKind.BAD_REQUEST),
        (
            400,
            _anthropic("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (
            429,
            _anthropic("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
            ErrorKind.RATE_LIMITED,
        ),
        (500, _anthropic("api_error", "Internal server error"), ErrorKind.SERVER),
        (529, _anthropic("overloaded_error", "Overloaded"), ErrorKind.OVERLOADED),
        (502, b"upstream connect error", ErrorKind.SERVER),
    ],
)
def test_error_kinds_in_both_shapes(status: int, body: bytes, kind: ErrorKind) -> None:
    error = ADAPTER.error(status, {}, body)
    assert error.kind is kind and error.status == status


def test_in_stream_error_event_is_anthropics() -> None:
    req, _ = chat()
    translator = ADAPTER.stream_translator(dep(), req)
    with pytest.raises(Exception) as info:
        translator.feed(SSEEvent(_anthropic("overloaded_error", "Overloaded"), "error"))
    assert getattr(info.value, "kind", None) is ErrorKind.OVERLOADED
