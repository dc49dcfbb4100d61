"""ConverseStream: AWS event-stream framing decoded by botocore, and the events translated to chunks.

Frames are encoded by the simulator's own encoder (sim/wire_bedrock.py, written from the format's spec) and
decoded by botocore's EventStreamBuffer: two independent implementations that must agree.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelyard.providers.base import SSEEvent, StreamStamp
from modelyard.providers.bedrock_body import JSON_TOOL
from modelyard.providers.bedrock_stream import BedrockStreamTranslator, EventStreamDecoder
from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.sim.wire_bedrock import encode_message, event_message, exception_message


def frame(name: str, payload: dict[str, Any]) -> bytes:
    return event_message(name, json.dumps(payload).encode())


TEXT_STREAM = [
    ("messageStart", {"role": "assistant"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " world"}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("messageStop", {"stopReason": "end_turn"}),
    (
        "metadata",
        {
            "usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 19, "cacheReadInputTokens": 10},
            "metrics": {"latencyMs": 120},
        },
    ),
]


# ============================================================================ the decoder


def test_decoder_yields_events_named_by_their_event_type() -> None:
    raw = b"".join(frame(name, payload) for name, payload in TEXT_STREAM)
    events = EventStreamDecoder().feed(raw)
    assert [e.event for e in events] == [name for name, _ in TEXT_STREAM]
    assert [json.loads(e.data) for e in events] == [payload for _, payload in TEXT_STREAM]


def test_decoder_reassembles_frames_split_anywhere() -> None:
    raw = b"".join(frame(name, payload) for name, payload in TEXT_STREAM)
    for size in (1, 3, 7, 50):
        decoder = EventStreamDecoder()
        events: list[SSEEvent] = []
        for at in range(0, len(raw), size):
            events.extend(decoder.feed(raw[at : at + size]))
        events.extend(decoder.flush())
        assert [e.event for e in events] == [name for name, _ in TEXT_STREAM], size


@pytest.mark.parametrize("at", [2, 9, 30, -2])
def test_a_corrupted_frame_is_a_server_error(at: int) -> None:
    raw = bytearray(frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}))
    raw[at] ^= 0xFF
    with pytest.raises(ProviderError) as info:
        EventStreamDecoder().feed(bytes(raw))
    assert info.value.kind is ErrorKind.SERVER
    assert "malformed event stream" in info.value.message


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("throttlingException", ErrorKind.RATE_LIMITED),
        ("serviceUnavailableException", ErrorKind.OVERLOADED),
        ("internalServerException", ErrorKind.SERVER),
        ("modelStreamErrorException", ErrorKind.SERVER),
        ("validationException", ErrorKind.BAD_REQUEST),
    ],
)
def test_an_exception_message_is_a_provider_error(name: str, kind: ErrorKind) -> None:
    with pytest.raises(ProviderError) as info:
        EventStreamDecoder().feed(exception_message(name, "it broke"))
    assert info.value.kind is kind
    assert name in (info.value.detail or "")


def test_events_before_an_exception_are_handed_on_first() -> None:
    decoder = EventStreamDecoder()
    raw = frame(*TEXT_STREAM[0]) + frame(*TEXT_STREAM[1]) + exception_message("throttlingException", "slow down")
    events = decoder.feed(raw)
    assert [e.event for e in events] == ["messageStart", "contentBlockDelta"]
    with pytest.raises(ProviderError) as info:
        decoder.flush()
    assert info.value.kind is ErrorKind.RATE_LIMITED


def test_an_error_message_is_a_provider_error() -> None:
    headers = [(":message-type", "error"), (":error-code", "InternalFailure"), (":error-message", "oops")]
    with pytest.raises(ProviderError) as info:
        EventStreamDecoder().feed(encode_message(headers, b""))
    assert info.value.kind is ErrorKind.SERVER
    assert "oops" in (info.value.detail or "")


# ============================================================================ the translator


def run(stream: list[tuple[str, dict[str, Any]]], json_tool: str | None = None) -> tuple[list[dict[str, Any]], Any]:
    translator = BedrockStreamTranslator(StreamStamp(model="anthropic.claude"), json_tool)
    chunks: list[dict[str, Any]] = []
    for name, payload in stream:
        chunks.extend(translator.feed(SSEEvent(json.dumps(payload).encode(), name)))
    chunks.extend(translator.finish())
    return chunks, translator


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks]


def test_text_stream() -> None:
    chunks, translator = run(TEXT_STREAM)
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " world"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "anthropic.claude" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert (translator.usage.prompt, translator.usage.completion, translator.usage.cached) == (17, 2, 10)
    assert translator.done


def test_done_only_after_metadata() -> None:
    translator = BedrockStreamTranslator(StreamStamp(model="m"))
    for name, payload in TEXT_STREAM[:-1]:
        translator.feed(SSEEvent(json.dumps(payload).encode(), name))
    assert not translator.done  # the usage is still to come
    assert translator.finish() == []  # but a stream ending here is a whole answer


def test_tool_use_stream() -> None:
    stream = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}},
        ),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": '}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time"}}},
        ),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}, "metrics": {"latencyMs": 1}}),
    ]
    chunks, _ = run(stream)
    got = deltas(chunks)
    assert got[1] == {"content": "Checking."}
    assert got[2] == {
        "tool_calls": [
            {"index": 0, "id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ]
    }
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in got[3:5])
    assert json.loads(args) == {"city": "Paris"}
    assert got[5]["tool_calls"][0]["index"] == 1 and got[5]["tool_calls"][0]["id"] == "tooluse_2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_json_tool_streams_as_content() -> None:
    stream = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Sure:"}}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": JSON_TOOL}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"label"'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ': "yes"}'}}}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}, "metrics": {"latencyMs": 1}}),
    ]
    chunks, _ = run(stream, JSON_TOOL)
    assert json.loads("".join(d.get("content", "") for d in deltas(chunks))) == {"label": "yes"}
    assert not any("tool_calls" in d for d in deltas(chunks))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_reasoning_deltas() -> None:
    stream = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm."}}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "abc"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Yes."}}),
        ("messageStop", {"stopReason": "end_turn"}),
    ]
    chunks, _ = run(stream)
    assert deltas(chunks)[1:3] == [{"reasoning_content": "Hmm."}, {"content": "Yes."}]


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("guardrail_intervened", "content_filter"),
        ("stop_sequence", "stop"),
    ],
)
def test_stop_reasons_in_stream(stop: str, finish: str) -> None:
    stream = [*TEXT_STREAM[:4], ("messageStop", {"stopReason": stop})]
    chunks, _ = run(stream)
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_a_cut_stream_is_a_connection_error() -> None:
    with pytest.raises(ProviderError) as info:
        run(TEXT_STREAM[:3])
    assert info.value.kind is ErrorKind.CONNECTION
    assert info.value.after_first_byte


@pytest.mark.parametrize(("data", "after"), [(b'{"contentBlockIndex": 0, "del', False), (b"[1]", False)])
def test_malformed_events(data: bytes, after: bool) -> None:
    translator = BedrockStreamTranslator(StreamStamp(model="m"))
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(data, "contentBlockDelta"))
    assert info.value.kind is ErrorKind.SERVER
    assert info.value.after_first_byte is after


def test_unusable_output_before_any_content_is_retryable() -> None:
    translator = BedrockStreamTranslator(StreamStamp(model="m"))
    translator.feed(SSEEvent(b'{"role": "assistant"}', "messageStart"))
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(b'{"stopReason": "malformed_tool_use"}', "messageStop"))
    assert info.value.kind is ErrorKind.SERVER and not info.value.after_first_byte


def test_unknown_events_are_ignored() -> None:
    translator = BedrockStreamTranslator(StreamStamp(model="m"))
    assert translator.feed(SSEEvent(b'{"x": 1}', "somethingNew")) == []
    assert translator.feed(SSEEvent(b"  ", "contentBlockDelta")) == []
