"""AnthropicAdapter's native pass-through, token counting and signed thinking on the translated path.

Pass-through must be faithful: the upstream gets the client's body with only `model` changed, and the client
gets the upstream's events byte for byte; everything parsed is only for usage, the model and failover.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from modelyard.accounting.prices import cost_usd
from modelyard.config.model import Deployment, Price
from modelyard.providers.anthropic import NATIVE_FORMAT, AnthropicAdapter, NativeAnthropicStream
from modelyard.providers.base import SSEEvent, discover
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import Usage, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

KEY = "sk-ant-api03-deployment-key"
ADAPTER = AnthropicAdapter()

CLIENT_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Fix it", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look at the file.", "signature": "EqQBCgIYAhIMsig=="},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"}]},
    ],
    "tools": [
        {"name": "Read", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 4096},
    "metadata": {"user_id": '{"session": "abc"}'},
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "stream": True,
}


def dep(**kw: Any) -> Deployment:
    fields: dict[str, Any] = {
        "name": "sonnet@anthropic",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5-20250929",
        "api_key": KEY,
        "api_base": "http://127.0.0.1:9/v1",
    }
    fields.update(kw)
    return Deployment(**fields)


def test_discovered_as_native_passthrough_and_token_counter() -> None:
    caps = discover(ADAPTER)
    assert caps.native is ADAPTER and caps.count_tokens is ADAPTER
    assert NATIVE_FORMAT in ADAPTER.native_formats


def test_native_call_is_the_client_body_with_only_model_rewritten() -> None:
    call = ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, True, {})
    sent = json.loads(call.body)
    assert sent["model"] == "claude-sonnet-4-5-20250929"
    assert {**sent, "model": CLIENT_BODY["model"]} == CLIENT_BODY
    assert list(sent) == list(CLIENT_BODY)  # key order kept
    assert call.url == "http://127.0.0.1:9/v1/messages" and call.method == "POST"
    assert call.headers["x-api-key"] == KEY
    assert CLIENT_BODY["model"] == "claude-sonnet-4-5"  # the caller's dict is not modified


def test_native_call_stream_flag_follows_the_attempt() -> None:
    body = {k: v for k, v in CLIENT_BODY.items() if k != "stream"}
    assert json.loads(ADAPTER.native_call(dep(), NATIVE_FORMAT, body, True, {}).body)["stream"] is True
    assert "stream" not in json.loads(ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, False, {}).body)


@pytest.mark.parametrize(
    ("client", "deployment_beta", "expected"),
    [
        ({}, None, None),
        ({"anthropic-beta": "interleaved-thinking-2025-05-14"}, None, "interleaved-thinking-2025-05-14"),
        ({"anthropic-beta": " a , b,,"}, ["b", "c"], "b,c,a"),
        ({}, "c", "c"),
    ],
)
def test_native_headers_version_from_client_betas_merged(
    client: dict[str, str], deployment_beta: Any, expected: str | None
) -> None:
    options = {"beta": deployment_beta} if deployment_beta else {}
    call = ADAPTER.native_call(dep(options=options), NATIVE_FORMAT, CLIENT_BODY, True, client)
    assert call.headers.get("anthropic-beta") == expected
    assert call.headers["anthropic-version"] == "2023-06-01"
    call = ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, True, {"anthropic-version": "2026-10-21"})
    assert call.headers["anthropic-version"] == "2026-10-21"


def test_native_call_never_takes_the_clients_credential() -> None:
    call = ADAPTER.native_call(dep(), NATIVE_FORMAT, CLIENT_BODY, True, {"x-api-key": "client-key"})
    assert call.headers["x-api-key"] == KEY


def test_unknown_native_format_is_refused() -> None:
    with pytest.raises(GatewayError):
        ADAPTER.native_call(dep(), "openai-responses", CLIENT_BODY, True, {})


ANSWER = (
    b'{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",'
    b'"content":[{"type":"thinking","thinking":"hm","signature":"c2ln"},{"type":"text","text":"Hi \\u00e9",'
    b'"citations":null}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,'
    b'"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":7,'
    b'"server_tool_use":{"web_search_requests":1}}}'
)


def test_parse_native_keeps_the_bytes_and_reads_usage_with_cache_tokens() -> None:
    done = ADAPTER.parse_native(dep(), NATIVE_FORMAT, ANSWER)
    assert done.native is ANSWER
    assert done.model == "claude-sonnet-4-5-20250929"
    assert done.usage == Usage(prompt=2112, completion=7, cached=2000, cache_write=100, web_searches=1)
    assert done.body["content"][0]["signature"] == "c2ln"


def test_server_web_searches_are_priced_per_search() -> None:
    usage = ADAPTER.parse_native(dep(), NATIVE_FORMAT, ANSWER).usage
    tokens_only = Price(input=3, output=15, cached_input=0.3, cache_write=3.75)
    with_search = Price(input=3, output=15, cached_input=0.3, cache_write=3.75, web_search=10.0)
    assert cost_usd(usage, with_search) == pytest.approx(cost_usd(usage, tokens_only) + 10.0 / 1000)
    expected_tokens = (12 * 3 + 2000 * 0.3 + 100 * 3.75 + 7 * 15) / 1e6
    assert cost_usd(usage, tokens_only) == pytest.approx(expected_tokens)


def test_parse_native_errors() -> None:
    with pytest.raises(ProviderError) as err:
        ADAPTER.parse_native(
            dep(), NATIVE_FORMAT, b'{"type":"error","error":{"type":"overloaded_error","message":"x"}}'
        )
    assert err.value.kind is ErrorKind.OVERLOADED
    with pytest.raises(ProviderError):
        ADAPTER.parse_native(dep(), NATIVE_FORMAT, b"not json")


STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],'
    b'"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"cache_read_input_tokens":1000,"cache_creation_input_tokens":10,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"",'
    b'"signature":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB=="}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi \\u00e9 \xc3\xa9"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":1}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":15}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)


def relay(data: bytes, stream: NativeAnthropicStream, step: int = 29) -> tuple[bytes, list[bool]]:
    """What the client receives, fed in arbitrary socket reads; and `answered` after each event."""
    parser = SSEParser()
    out: list[bytes] = []
    answered: list[bool] = []
    events: list[SSEEvent] = []
    for at in range(0, len(data), step):
        events.extend(parser.feed(data[at : at + step]))
    events.extend(parser.flush())
    for event in events:
        for item in stream.feed(event):
            assert isinstance(item, msgspec.Raw)
            out.append(bytes(item))
        answered.append(stream.answered)
    return b"".join(out), answered


def test_native_stream_is_byte_exact_and_tracks_usage() -> None:
    stream = ADAPTER.native_stream(dep(), NATIVE_FORMAT)
    out, answered = relay(STREAM, stream)
    assert out == STREAM
    assert stream.done and stream.finish() == []
    assert stream.model == "claude-sonnet-4-5-20250929"
    assert stream.usage == Usage(prompt=1035, completion=15, cached=1000, cache_write=10)
    # message_start, an empty thinking block opening and ping carry nothing: failover stays invisible.
    assert answered[:3] == [False, False, False] and answered[3] is True


def test_native_stream_error_event_is_typed() -> None:
    stream = ADAPTER.native_stream(dep(), NATIVE_FORMAT)
    head = STREAM.split(b"event: content_block_start")[0]
    relay(head, stream)
    error = SSEEvent(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "error")
    with pytest.raises(ProviderError) as err:
        stream.feed(error)
    assert err.value.kind is ErrorKind.OVERLOADED and not err.value.after_first_byte
    with pytest.raises(ProviderError) as cut:
        stream.finish()
    assert cut.value.kind is ErrorKind.CONNECTION


def test_native_stream_tool_use_opening_is_substance() -> None:
    stream = ADAPTER.native_stream(dep(), NATIVE_FORMAT)
    block = (
        b'{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}'
    )
    stream.feed(SSEEvent(block, "content_block_start"))
    assert stream.answered


# ----------------------------------------------------------------------------- token counting


def test_count_tokens_calls() -> None:
    req = {"model": "x", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
    call = ADAPTER.count_tokens_call(dep(), chat_request_from_dict({**req, "max_tokens": 5, "temperature": 0.5}))
    assert call.url == "http://127.0.0.1:9/v1/messages/count_tokens"
    body = json.loads(call.body)
    assert body == {
        "model": "claude-sonnet-4-5-20250929",
        "messages": [{"role": "user", "content": "hi"}],
        "system": "sys",
    }
    native = ADAPTER.native_count_tokens_call(dep(), {"model": "alias", "messages": []}, {"anthropic-beta": "b1"})
    assert json.loads(native.body) == {"model": "claude-sonnet-4-5-20250929", "messages": []}
    assert native.headers["anthropic-beta"] == "b1" and native.headers["x-api-key"] == KEY
    assert ADAPTER.parse_count_tokens(dep(), b'{"input_tokens": 2095}') == 2095
    for bad in (b"{}", b'{"input_tokens": -1}', b'{"input_tokens": true}', b"[]"):
        with pytest.raises(ProviderError):
            ADAPTER.parse_count_tokens(dep(), bad)


# ----------------------------------------------------------------------------- translated path


def test_signed_thinking_blocks_go_back_to_anthropic_unsigned_are_dropped() -> None:
    raw: dict[str, Any] = {
        "model": "smart",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                "reasoning_content": "think",
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "think", "signature": "sig=="},
                    {"type": "thinking", "thinking": "another vendor's", "signature": ""},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "redacted_thinking"},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
    }
    call = ADAPTER.chat_call(dep(), chat_request_from_dict(raw), raw, False)
    assistant = json.loads(call.body)["messages"][1]
    assert assistant["content"] == [
        {"type": "thinking", "thinking": "think", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ]
