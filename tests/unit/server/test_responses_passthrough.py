"""The OpenAI adapter's Responses pass-through (NativePassthrough, `openai-responses`): the client's body with
only `model` rewritten, the upstream's bytes back unchanged, usage read for accounting, errors typed."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from modelyard.config.model import Deployment
from modelyard.providers.base import SSEEvent, discover
from modelyard.providers.openai import RESPONSES_FORMAT, NativeResponsesStream, OpenAIAdapter
from modelyard.providers.sse import SSEParser
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

ADAPTER = OpenAIAdapter()


def dep(responses_api: bool = True) -> Deployment:
    return Deployment(
        name="gpt@oai",
        provider="openai",
        model="gpt-upstream",
        api_key="sk-test-000000",
        api_base="http://127.0.0.1:9/v1",
        options={"responses_api": responses_api},
    )


def test_discovered_as_native_passthrough() -> None:
    native = discover(ADAPTER).native
    assert native is not None and RESPONSES_FORMAT in native.native_formats


def test_native_call_rewrites_only_the_model() -> None:
    body = {
        "model": "client-name",
        "input": [{"type": "reasoning", "encrypted_content": "ENC", "summary": []}],
        "tools": [{"type": "web_search"}],
        "previous_response_id": "resp_1",
        "include": ["reasoning.encrypted_content"],
        "modelyard": {"explain": True},
    }
    call = ADAPTER.native_call(dep(), RESPONSES_FORMAT, body, False, {})
    assert call.url == "http://127.0.0.1:9/v1/responses"
    assert call.headers["Authorization"] == "Bearer sk-test-000000"
    sent = msgspec.json.decode(call.body)
    expected = {k: v for k, v in body.items() if k != "modelyard"}
    assert sent == {**expected, "model": "gpt-upstream"}
    assert list(sent) == list(expected)  # key order kept
    assert body["model"] == "client-name"  # the client's dict is not changed
    streamed = msgspec.json.decode(ADAPTER.native_call(dep(), RESPONSES_FORMAT, body, True, {}).body)
    assert streamed["stream"] is True


def test_a_deployment_without_the_responses_api_refuses() -> None:
    with pytest.raises(GatewayError):
        ADAPTER.native_call(dep(responses_api=False), RESPONSES_FORMAT, {"model": "m", "input": "x"}, False, {})
    with pytest.raises(GatewayError):
        ADAPTER.native_call(dep(), "anthropic-messages", {"model": "m"}, False, {})


def test_parse_native_keeps_the_bytes_and_reads_usage() -> None:
    body = msgspec.json.encode(
        {
            "id": "resp_9",
            "object": "response",
            "status": "completed",
            "model": "gpt-upstream-2026",
            "output": [],
            "tool_usage": {"web_search": {"num_requests": 3}, "image_gen": {}},
            "usage": {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 60},
                "output_tokens": 20,
                "output_tokens_details": {"reasoning_tokens": 5},
                "total_tokens": 120,
            },
        }
    )
    completion = ADAPTER.parse_native(dep(), RESPONSES_FORMAT, body)
    assert completion.native is body
    assert (completion.usage.prompt, completion.usage.completion) == (100, 20)
    assert (completion.usage.cached, completion.usage.reasoning) == (60, 5)
    assert completion.model == "gpt-upstream-2026"
    assert completion.usage.web_searches == 3  # priced per search (Price.web_search)
    with pytest.raises(ProviderError):
        ADAPTER.parse_native(dep(), RESPONSES_FORMAT, b'{"object": "chat.completion"}')


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode({"type": kind, **data}) + b"\n\n"


STREAM = [
    _frame(
        "response.created",
        {"sequence_number": 0, "response": {"id": "resp_up", "model": "gpt-x", "status": "in_progress"}},
    ),
    _frame("response.output_item.added", {"sequence_number": 1, "output_index": 0, "item": {"type": "message"}}),
    _frame(
        "response.output_text.delta",
        {"sequence_number": 2, "item_id": "m", "output_index": 0, "content_index": 0, "delta": "Hi"},
    ),
    _frame(
        "response.output_text.delta",
        {"sequence_number": 3, "item_id": "m", "output_index": 0, "content_index": 0, "delta": " there"},
    ),
    _frame(
        "response.completed",
        {
            "sequence_number": 4,
            "response": {"id": "resp_up", "model": "gpt-x", "usage": {"input_tokens": 7, "output_tokens": 2}},
        },
    ),
]


def _feed(stream: NativeResponsesStream, frames: list[bytes]) -> bytes:
    parser = SSEParser()
    out = b""
    for frame in frames:
        for event in parser.feed(frame):
            out += b"".join(bytes(chunk) for chunk in stream.feed(event) if isinstance(chunk, msgspec.Raw))
    return out


def test_native_stream_is_byte_for_byte_and_accounted() -> None:
    stream = ADAPTER.native_stream(dep(), RESPONSES_FORMAT)
    assert _feed(stream, STREAM[:2]) == b"".join(STREAM[:2])
    assert not stream.answered  # created + an empty item added: still free to fail over
    assert _feed(stream, STREAM[2:]) == b"".join(STREAM[2:])
    assert stream.answered and stream.done and stream.response_id == "resp_up"
    assert (stream.usage.prompt, stream.usage.completion) == (7, 2) and stream.model == "gpt-x"
    assert stream.finish() == []


def test_native_stream_cut_or_failed() -> None:
    cut = ADAPTER.native_stream(dep(), RESPONSES_FORMAT)
    _feed(cut, STREAM[:3])
    with pytest.raises(ProviderError) as caught:
        cut.finish()
    assert caught.value.after_first_byte
    failed = ADAPTER.native_stream(dep(), RESPONSES_FORMAT)
    with pytest.raises(ProviderError) as caught:
        _feed(
            failed,
            [
                _frame(
                    "response.failed", {"response": {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}}
                )
            ],
        )
    assert caught.value.kind is ErrorKind.RATE_LIMITED and not caught.value.after_first_byte
    errored = ADAPTER.native_stream(dep(), RESPONSES_FORMAT)
    with pytest.raises(ProviderError) as caught:
        errored.feed(SSEEvent(b'{"type":"error","code":"server_error","message":"boom"}', "error"))
    assert caught.value.kind is ErrorKind.SERVER
