"""The translated /v1/messages path keeps what it can: signed thinking, the matched stop sequence; and the
pass-through policy (beta allowlist, server tools) refuses or drops what must not reach an upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.providers.anthropic import AnthropicAdapter
from modelyard.providers.base import StreamStamp
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import AssistantMessage, Usage, chat_request_from_dict
from modelyard.schema.errors import GatewayError
from modelyard.server.access import KeyState
from modelyard.server.anthropic_answer import (
    ChunksToAnthropicEvents,
    chat_completion_to_message,
    rename_answer_model,
    rename_event_model,
)
from modelyard.server.anthropic_request import (
    DEFAULT_ANTHROPIC_BETAS,
    allowed_betas,
    check_server_tools,
    messages_request_to_chat,
    passthrough_headers,
    server_tool_types,
    server_tools_allowed,
)
from modelyard.state.keys import new_key

SIGNED = {"type": "thinking", "thinking": "Check the file first.", "signature": "EqQBCgIYAhIMsig=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}}


def body(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 1024, "messages": messages, **extra}


def conversation(assistant: list[Any]) -> list[Any]:
    return [
        {"role": "user", "content": "Fix a.py"},
        {"role": "assistant", "content": assistant},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x = 1"}]},
    ]


def events(raw: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    return [json.loads(e.data) for e in parser.feed(raw) + parser.flush()]


# ----------------------------------------------------------------------------- request side


def test_signed_thinking_rides_on_the_canonical_assistant_message() -> None:
    unsigned = {"type": "thinking", "thinking": "another vendor's reasoning", "signature": ""}
    chat = messages_request_to_chat(body(conversation([SIGNED, unsigned, REDACTED, TOOL_USE])))
    assistant = chat["messages"][1]
    assert assistant["thinking_blocks"] == [SIGNED, REDACTED]
    checked = chat_request_from_dict(chat).messages[1]  # still a valid canonical request
    assert isinstance(checked, AssistantMessage) and checked.tool_calls


def test_anthropic_egress_sends_the_signed_blocks_back_first_and_unchanged() -> None:
    chat = messages_request_to_chat(body(conversation([SIGNED, REDACTED, TOOL_USE])))
    dep = Deployment(name="d", provider="anthropic", model="claude-sonnet-4-5", api_key="k")
    call = AnthropicAdapter().chat_call(dep, chat_request_from_dict(chat), chat, False)
    sent = json.loads(call.body)
    assert sent["messages"][1]["content"] == [SIGNED, REDACTED, TOOL_USE]


def test_without_signed_blocks_no_extension_field() -> None:
    chat = messages_request_to_chat(body(conversation([TOOL_USE])))
    assert "thinking_blocks" not in chat["messages"][1]


# ----------------------------------------------------------------------------- answers


def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


def test_answer_keeps_signatures_and_marks_foreign_reasoning_unsigned() -> None:
    signed = chat_completion_to_message(
        completion({"content": "done", "reasoning_content": "r", "thinking_blocks": [SIGNED, REDACTED]}),
        "claude",
        thinking=True,
    )
    assert signed["content"] == [SIGNED, REDACTED, {"type": "text", "text": "done"}]
    foreign = chat_completion_to_message(completion({"content": "done", "reasoning_content": "r"}), "m", thinking=True)
    assert foreign["content"][0] == {"type": "thinking", "thinking": "r", "signature": ""}
    hidden = chat_completion_to_message(completion({"content": "done", "thinking_blocks": [SIGNED]}), "m")
    assert hidden["content"] == [{"type": "text", "text": "done"}]  # thinking not asked for: not sent


@pytest.mark.parametrize(
    ("message", "choice", "stops", "text", "reason", "sequence"),
    [
        ({"content": "alpha "}, {"stop_reason": "END"}, ["END"], "alpha ", "stop_sequence", "END"),  # vLLM style
        ({"content": "alpha END beta"}, {}, ["END", "beta"], "alpha ", "stop_sequence", "END"),  # ignored stop
        ({"content": "alpha"}, {}, ["END"], "alpha", "end_turn", None),  # OpenAI: says only "stop"
        ({"content": "alpha"}, {"stop_reason": "other"}, ["END"], "alpha", "end_turn", None),
        ({"content": "alpha"}, {"stop_sequence": "##"}, None, "alpha", "stop_sequence", "##"),  # Anthropic's
        ({"content": "alpha END"}, {}, None, "alpha END", "end_turn", None),  # no client stop sequences
    ],
)
def test_stop_sequence_of_a_non_anthropic_answer(
    message: dict[str, Any], choice: dict[str, Any], stops: Any, text: str, reason: str, sequence: str | None
) -> None:
    out = chat_completion_to_message(completion(message, **choice), "m", stop_sequences=stops)
    assert out["content"] == [{"type": "text", "text": text}]
    assert out["stop_reason"] == reason and out["stop_sequence"] == sequence


def test_stream_stop_sequence_from_stop_reason() -> None:
    encoder = ChunksToAnthropicEvents("m", stop_sequences=["END"])
    raw = b"".join(encoder.feed({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}))
    raw += b"".join(
        encoder.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]})
    )
    raw += b"".join(encoder.finish(Usage(prompt=3, completion=1)))
    delta = next(e for e in events(raw) if e["type"] == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


ANTHROPIC_STREAM = b"".join(
    f"event: {json.loads(line)['type']}\ndata: {line}\n\n".encode()
    for line in [
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],'
        '"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}',
        '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Check "}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"the file."}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBsig=="}}',
        '{"type":"content_block_stop","index":0}',
        '{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKopaque"}}',
        '{"type":"content_block_stop","index":1}',
        '{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_9","name":"Read","input":{}}}',
        '{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{}"}}',
        '{"type":"content_block_stop","index":2}',
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}}',
        '{"type":"message_stop"}',
    ]
)


def test_translated_stream_round_trip_keeps_signature_delta_and_redacted_block() -> None:
    """Anthropic events → canonical chunks (the adapter) → Anthropic events (the ingress): signed as sent."""
    translator = AnthropicAdapter().stream_translator(
        Deployment(name="d", provider="anthropic", model="claude-sonnet-4-5", api_key="k"),
        chat_request_from_dict({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    translator.stamp = StreamStamp(model="claude-sonnet-4-5")
    parser = SSEParser()
    chunks = [c for e in parser.feed(ANTHROPIC_STREAM) + parser.flush() for c in translator.feed(e)]
    encoder = ChunksToAnthropicEvents("claude-sonnet-4-5", thinking=True)
    raw = b"".join(encoder.start()) + b"".join(b for c in chunks for b in encoder.feed(c))
    raw += b"".join(encoder.finish(translator.usage))
    out = events(raw)
    starts = [(e["index"], e["content_block"]["type"]) for e in out if e["type"] == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "redacted_thinking"), (2, "tool_use")]
    block0 = [e["delta"] for e in out if e["type"] == "content_block_delta" and e["index"] == 0]
    assert block0 == [
        {"type": "thinking_delta", "thinking": "Check "},
        {"type": "thinking_delta", "thinking": "the file."},
        {"type": "signature_delta", "signature": "EqQBsig=="},
    ]
    redacted = next(e for e in out if e["type"] == "content_block_start" and e["index"] == 1)
    assert redacted["content_block"] == {"type": "redacted_thinking", "data": "EmwKopaque"}
    stops = [e["index"] for e in out if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]


# ----------------------------------------------------------------------------- pass-through policy


def test_beta_allowlist_drops_what_is_not_listed() -> None:
    allowed = {"interleaved-thinking-2025-05-14", "context-management-2025-06-27"}
    headers = {
        "Anthropic-Beta": "interleaved-thinking-2025-05-14, files-api-2025-04-14,context-management-2025-06-27",
        "anthropic-version": "2023-06-01",
        "x-api-key": "client secret",
    }
    assert passthrough_headers(headers, allowed) == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
    }
    assert passthrough_headers({"anthropic-beta": "files-api-2025-04-14"}, allowed) == {}
    assert passthrough_headers({"anthropic-beta": "a,a"}, {"a"}) == {"anthropic-beta": "a"}
    assert passthrough_headers({}, allowed) == {}


def test_default_allowlist_keeps_claude_codes_features_but_not_costly_ones() -> None:
    assert "claude-code-20250219" in DEFAULT_ANTHROPIC_BETAS
    for risky in (
        "files-api-2025-04-14",
        "code-execution-2025-08-25",
        "mcp-client-2025-04-04",
        "context-1m-2025-08-07",
    ):
        assert risky not in DEFAULT_ANTHROPIC_BETAS


SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


def test_server_tools_refused_unless_allowed() -> None:
    request = body([{"role": "user", "content": "search"}], tools=[{"name": "f", "input_schema": {}}, SERVER_TOOL])
    assert server_tool_types(request) == [(1, "web_search_20250305")]
    with pytest.raises(GatewayError) as err:
        check_server_tools(request, allowed=False)
    assert err.value.status == 400 and err.value.param == "tools.1.type"
    check_server_tools(request, allowed=True)
    check_server_tools(body([{"role": "user", "content": "hi"}]), allowed=False)


def test_allowed_server_tools_and_their_blocks_stay_off_the_canonical_request() -> None:
    history = [
        {"role": "user", "content": "search"},
        {
            "role": "assistant",
            "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "Found it."},
            ],
        },
        {"role": "user", "content": "thanks"},
    ]
    request = body(history, tools=[SERVER_TOOL])
    with pytest.raises(GatewayError):
        messages_request_to_chat(request)
    chat = messages_request_to_chat(request, server_tools=True)
    assert "tools" not in chat
    assert chat["messages"][1] == {"role": "assistant", "content": "Found it."}


def test_per_key_policy_from_metadata_overrides_the_server_setting() -> None:
    plain = KeyState.from_record(new_key("plain")[1])
    assert plain.anthropic_betas is None and plain.anthropic_server_tools is None
    assert allowed_betas(None, plain.anthropic_betas) == frozenset(DEFAULT_ANTHROPIC_BETAS)
    assert allowed_betas(["x"], plain.anthropic_betas) == {"x"}
    assert not server_tools_allowed(False, plain.anthropic_server_tools)
    record = new_key("team", metadata={"anthropic_betas": "a, b,", "anthropic_server_tools": "allow"})[1]
    special = KeyState.from_record(record)
    assert allowed_betas(["x"], special.anthropic_betas) == {"a", "b"}
    assert server_tools_allowed(False, special.anthropic_server_tools)
    denied = KeyState.from_record(new_key("t", metadata={"anthropic_server_tools": "deny"})[1])
    assert not server_tools_allowed(True, denied.anthropic_server_tools)


def test_pass_through_answers_name_the_model_the_client_asked_for() -> None:
    body = b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[]}'
    renamed = rename_answer_model(body, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5")
    assert renamed == body.replace(b"claude-sonnet-4-5-20250929", b"claude-sonnet-4-5")
    assert rename_answer_model(body, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929") is body
    assert rename_answer_model(body, None, "x") is body
    spaced = b'{"type": "message", "model": "up", "content": [{"type": "text", "text": "\\"model\\":\\"up\\""}]}'
    assert rename_answer_model(spaced, "up", "mine").count(b'"mine"') == 1
    event = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"up","content":[]}}\n\n'
    assert rename_event_model(event, "via-anthropic") == event.replace(b'"up"', b'"via-anthropic"')
    assert rename_event_model(b"event: ping\ndata: {}\n\n", "x") == b"event: ping\ndata: {}\n\n"
