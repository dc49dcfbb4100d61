"""The /v1/messages translation: Anthropic requests → canonical, canonical answers → Anthropic.

The generated messages and SSE events are checked with the official `anthropic` SDK itself: its pydantic
models validate them, and its client (over a mock transport) accumulates the stream into a final Message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from modelyard.config.model import Deployment
from modelyard.providers.anthropic import AnthropicStreamTranslator, build_body, parse_message
from modelyard.providers.base import StreamStamp
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import Usage, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError
from modelyard.server.anthropic_answer import (
    KIND_ERROR_TYPES,
    ChunksToAnthropicEvents,
    anthropic_error_body,
    anthropic_error_type,
    chat_completion_to_message,
)
from modelyard.server.anthropic_request import messages_request_to_chat, wants_thinking

MODEL = "claude-sonnet-4-5"
SDK_MODEL = "smart"  # what SDK clients ask the gateway for: a model group name
ASK: list[Any] = [{"role": "user", "content": "x"}]
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def request(**fields: Any) -> dict[str, Any]:
    hello = [{"role": "user", "content": "Hello, Claude"}]
    return {"model": MODEL, "max_tokens": 1024, "messages": hello, **fields}


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    chat = messages_request_to_chat(body)
    chat_request_from_dict(chat)  # the canonical validator must accept every translation
    return chat


# =========================================================================== request


def test_basic_documented_example() -> None:
    assert to_chat(request()) == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }


@pytest.mark.parametrize(
    ("system", "content"),
    [
        ("You are a seasoned data scientist.", "You are a seasoned data scientist."),
        (
            [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}],
            "A\n\nB",
        ),
    ],
)
def test_system(system: Any, content: str) -> None:
    chat = to_chat(request(system=system))
    assert chat["messages"][0] == {"role": "system", "content": content}


def test_system_role_inside_messages() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    chat = to_chat(request(messages=messages))
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_images_both_kinds() -> None:
    chat = to_chat(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                        {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/ant.jpg"}},
                        {"type": "text", "text": "Describe these images."},
                    ],
                }
            ]
        )
    )
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/ant.jpg"}},
                {"type": "text", "text": "Describe these images."},
            ],
        }
    ]


def test_documents() -> None:
    chat = to_chat(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "report.pdf",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                }
            ]
        )
    )
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "report.pdf"}},
        {"type": "text", "text": "The grass is green."},
        {"type": "text", "text": "Summarise."},
    ]


def test_tool_round_trip_documented_example() -> None:
    chat = to_chat(
        request(
            tools=[WEATHER],
            messages=[
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"},
                        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
                        {
                            "type": "tool_use",
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "name": "get_weather",
                            "input": {"location": "San Francisco, CA", "unit": "celsius"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Also, be brief."},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                            "content": "15 degrees",
                        },
                    ],
                },
            ],
        )
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "I'll check the current weather in San Francisco for you.",
            "tool_calls": [
                {
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
                    },
                }
            ],
            # The signed thinking block rides along for the Anthropic egress (other adapters ignore it).
            "thinking_blocks": [
                {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"}
            ],
        },
        # The tool message must directly follow the assistant turn, before the user's text.
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
        {"role": "user", "content": [{"type": "text", "text": "Also, be brief."}]},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": WEATHER["description"],
            },
        }
    ]


def test_tool_only_assistant_turn_has_null_content() -> None:
    chat = to_chat(
        request(
            messages=[
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            ]
        )
    )
    assert chat["messages"][1]["content"] is None
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": ""}


def test_tool_result_error_and_blocks_and_images() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}
    chat = to_chat(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "is_error": True,
                            "content": "ConnectionError: unreachable",
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}, image],
                        },
                    ],
                }
            ]
        )
    )
    assert chat["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "[tool error] ConnectionError: unreachable"},
        {"role": "tool", "tool_call_id": "t2", "content": "line 1\nline 2"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
    ]


@pytest.mark.parametrize(
    ("tool_choice", "choice", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice(tool_choice: dict[str, Any], choice: Any, parallel: bool | None) -> None:
    chat = to_chat(request(tools=[WEATHER], tool_choice=tool_choice))
    assert chat["tool_choice"] == choice
    assert chat.get("parallel_tool_calls") == parallel


def test_scalar_options() -> None:
    chat = to_chat(
        request(
            stop_sequences=["###", "\n\nHuman:"],
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 2048},
            service_tier="auto",
            cache_control={"type": "ephemeral"},
        )
    )
    assert chat["stop"] == ["###", "\n\nHuman:"]
    assert chat["temperature"] == 0.3
    assert chat["top_p"] == 0.9
    assert chat["user"] == "13803d75-b4b5-4c3e-b2a2-6f21399b021b"
    assert chat["stream"] is True
    for dropped in ("top_k", "thinking", "service_tier", "cache_control", "metadata", "stop_sequences"):
        assert dropped not in chat


def test_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    config = {"format": {"type": "json_schema", "schema": schema}, "effort": "max"}
    chat = to_chat(request(output_config=config))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert chat["reasoning_effort"] == "high"


@pytest.mark.parametrize(
    ("thinking", "expected"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, True),
        ({"type": "adaptive"}, True),
        ({"type": "disabled"}, False),
        (None, False),
    ],
)
def test_wants_thinking(thinking: Any, expected: bool) -> None:
    assert wants_thinking(request(thinking=thinking)) is expected


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": MODEL, "messages": []}, "max_tokens", "required"),
        ({"model": MODEL, "max_tokens": "10", "messages": []}, "max_tokens", "integer"),
        ({"model": MODEL, "max_tokens": 10, "messages": "hi"}, "messages", "list"),
        ({"max_tokens": 10, "messages": []}, "model", "required"),
        (request(messages=[{"role": "tool", "content": "x"}]), "messages.0.role", "role"),
        (request(messages=[{"role": "user", "content": 5}]), "messages.0.content", "string or a list"),
        (
            request(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
            "messages.0.content.0.type",
            "unknown content block type 'hologram'",
        ),
        (request(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages.0.content.0", "type"),
        (request(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text", "text"),
        (
            request(
                messages=[
                    {
                        "role": "assistant",
                        "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}],
                    }
                ]
            ),
            "messages.0.content.0.type",
            "not supported",
        ),
        (
            request(
                messages=[
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_011"}}]}
                ]
            ),
            "messages.0.content.0.source.type",
            "file",
        ),
        (request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type", "web_search"),
        (request(tools=[{"name": "f"}]), "tools.0", "input_schema"),
        (request(tools=[WEATHER], tool_choice={"type": "tool"}), "tool_choice", "tool_choice"),
        (request(stop_sequences="###"), "stop_sequences", "list"),
        (request(temperature="hot"), "temperature", "number"),
        (request(system=[{"type": "image"}]), "system.0.type", "text"),
    ],
)
def test_invalid_requests_are_400_with_a_param(body: dict[str, Any], param: str, needle: str) -> None:
    with pytest.raises(GatewayError) as err:
        messages_request_to_chat(body)
    assert err.value.status == 400
    assert err.value.param == param
    assert needle in err.value.message


# =========================================================================== request round trip


def _deployment() -> Deployment:
    return Deployment(name="sonnet@anthropic", provider="anthropic", model=MODEL, capabilities=["tools", "vision"])


ROUND_TRIP_REQUESTS: list[dict[str, Any]] = [
    request(),
    request(system="You are a weather bot.", stop_sequences=["###"], metadata={"user_id": "u-1"}, stream=True),
    request(
        system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                    {"type": "text", "text": "Where is this? And what's the weather there?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "That is San Francisco."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "SF"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"location": "Oakland"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "timeout", "is_error": True},
                    {"type": "text", "text": "Thanks."},
                ],
            },
        ],
    ),
]


@pytest.mark.parametrize("body", ROUND_TRIP_REQUESTS)
def test_request_round_trip_through_the_anthropic_adapter(body: dict[str, Any]) -> None:
    """Anthropic → canonical → Anthropic egress gives back the request the client sent."""
    chat = messages_request_to_chat(body)
    rebuilt = build_body(_deployment(), chat_request_from_dict(chat), chat, bool(body.get("stream")))
    expected = dict(body)
    if isinstance(expected.get("system"), list):  # system blocks are joined into one text on the way in
        expected["system"] = "\n\n".join(block["text"] for block in expected["system"])
    assert rebuilt == expected


# =========================================================================== response

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {"role": "assistant", "content": "Hi! How can I help?", "refusal": None},
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 0},
    },
}


def _completion(finish: str = "stop", **message: Any) -> dict[str, Any]:
    choice = {
        **COMPLETION["choices"][0],
        "finish_reason": finish,
        "message": {**COMPLETION["choices"][0]["message"], **message},
    }
    return {**COMPLETION, "choices": [choice]}


def test_text_completion_to_message() -> None:
    out = chat_completion_to_message(COMPLETION, "smart")
    Message.model_validate(out)
    assert out == {
        "id": "msg_B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "smart",
        "content": [{"type": "text", "text": "Hi! How can I help?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 117,
            "output_tokens": 46,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1000,
        },
    }


def test_tool_call_completion_to_message() -> None:
    out = chat_completion_to_message(
        _completion(
            "tool_calls",
            content=None,
            tool_calls=[
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                {"id": "call_bad", "type": "function", "function": {"name": "cut", "arguments": '{"loc'}},
            ],
        ),
        MODEL,
    )
    Message.model_validate(out)
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "call_def", "name": "get_time", "input": {}},
        {"type": "tool_use", "id": "call_bad", "name": "cut", "input": {"_raw_arguments": '{"loc'}},
    ]


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_sequence": "###"}, "stop_sequence", "###"),
        (None, {}, "end_turn", None),
    ],
)
def test_stop_reason_mapping(finish: Any, extra: dict[str, Any], stop_reason: str, stop_sequence: Any) -> None:
    completion = _completion(finish)
    completion["choices"][0].update(extra)
    out = chat_completion_to_message(completion, MODEL)
    Message.model_validate(out)
    assert out["stop_reason"] == stop_reason
    assert out["stop_sequence"] == stop_sequence


def test_refusal_text_is_kept() -> None:
    refused = _completion("content_filter", content=None, refusal="I can't help with that.")
    out = chat_completion_to_message(refused, MODEL)
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_thinking_is_only_returned_when_asked_for() -> None:
    completion = _completion(reasoning_content="Let me think.")
    assert [b["type"] for b in chat_completion_to_message(completion, MODEL)["content"]] == ["text"]
    out = chat_completion_to_message(completion, MODEL, thinking=True)
    Message.model_validate(out)
    assert out["content"][0] == {"type": "thinking", "thinking": "Let me think.", "signature": ""}


def test_response_round_trip_through_the_anthropic_adapter() -> None:
    original = {
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "I'll check the weather."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "celsius"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 472,
            "output_tokens": 91,
            "cache_creation_input_tokens": 12,
            "cache_read_input_tokens": 2048,
        },
    }
    done = parse_message(json.loads(json.dumps(original)), MODEL)
    assert chat_completion_to_message(done.body, done.model) == original


# =========================================================================== streaming


def _events(raw: list[bytes]) -> list[dict[str, Any]]:
    """Each item is one complete SSE event whose name matches its data's type; returns the data."""
    out = []
    for item in raw:
        parsed = SSEParser().feed(item)
        assert len(parsed) == 1, item
        data = json.loads(parsed[0].data)
        assert parsed[0].event == data["type"]
        out.append(data)
    return out


def _validate(events: list[dict[str, Any]]) -> None:
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    for event in events:
        if event["type"] not in ("ping", "error"):
            adapter.validate_python(event)


def _chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None, **choice}],
    }


TEXT_AND_TOOLS = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me "}),
    _chunk({"content": "check."}),
    _chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        }
    ),
    _chunk({}, "tool_calls"),
]
FINAL_USAGE = Usage(prompt=1100, completion=42, cached=1000, cache_write=50)


def _run(chunks: list[dict[str, Any]], usage: Usage = FINAL_USAGE, **kw: Any) -> list[bytes]:
    translator = ChunksToAnthropicEvents(MODEL, "msg_gateway_1", **kw)
    out = translator.start(Usage(prompt=1100, cached=1000, cache_write=50))
    for chunk in chunks:
        out += translator.feed(chunk)
    return out + translator.finish(usage)


def test_event_sequence_shapes() -> None:
    events = _events(_run(TEXT_AND_TOOLS))
    _validate(events)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["id"] == "msg_gateway_1"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 50
    assert events[2] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[6] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
    }
    assert events[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"location":'}
    assert [e["index"] for e in events if "index" in e] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 50,
            "output_tokens": 42,
            "cache_creation_input_tokens": 50,
            "cache_read_input_tokens": 1000,
        },
    }


def _sdk(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="k", base_url="http://gateway", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def _sse_handler(raw: list[bytes]) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(raw))

    return handler


def _final_message(raw: list[bytes]) -> Message:
    client = _sdk(_sse_handler(raw))
    with client.messages.stream(model=SDK_MODEL, max_tokens=100, messages=ASK) as stream:
        return stream.get_final_message()


def test_sdk_accumulates_the_stream() -> None:
    final = _final_message(_run(TEXT_AND_TOOLS))
    assert final.id == "msg_gateway_1"
    assert final.model == MODEL
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Let me check."  # type: ignore[union-attr]
    assert final.content[1].input == {"location": "Paris"}  # type: ignore[union-attr]
    assert final.content[2].name == "get_time"  # type: ignore[union-attr]
    assert final.usage.input_tokens == 50
    assert final.usage.output_tokens == 42
    assert final.usage.cache_read_input_tokens == 1000


def test_stream_with_thinking_and_stop_sequence() -> None:
    chunks = [
        _chunk({"reasoning_content": "Hmm."}),
        _chunk({"reasoning_content": " Yes."}),
        _chunk({"content": "42"}),
        _chunk({}, "stop", stop_sequence="###"),
    ]
    final = _final_message(_run(chunks, thinking=True))
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Hmm. Yes."  # type: ignore[union-attr]
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "###"
    without = _events(_run(chunks))  # not asked for: no thinking block
    assert [e["content_block"]["type"] for e in without if e["type"] == "content_block_start"] == ["text"]


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_stream_stop_reasons(finish: str | None, stop_reason: str) -> None:
    chunks = [_chunk({"content": "x"})] + ([_chunk({}, finish)] if finish else [])
    assert _final_message(_run(chunks)).stop_reason == stop_reason


def test_empty_answer_and_start_is_implicit() -> None:
    translator = ChunksToAnthropicEvents(MODEL)
    events = _events(translator.finish(Usage(prompt=3, completion=1)))
    _validate(events)
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[0]["message"]["id"].startswith("msg_")
    assert translator.feed(_chunk({"content": "late"})) == []
    assert translator.finish(Usage()) == []


def test_error_event_is_raised_by_the_sdk() -> None:
    translator = ChunksToAnthropicEvents(MODEL)
    raw = translator.start(None) + translator.feed(_chunk({"content": "partial"}))
    raw.append(translator.error("overloaded_error", "Overloaded"))
    [error] = _events(raw[-1:])
    assert error == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    client = _sdk(_sse_handler(raw))
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model=SDK_MODEL, max_tokens=10, messages=ASK) as stream,
    ):
        stream.get_final_message()
    assert "overloaded_error" in str(err.value)


def test_anthropic_stream_round_trip() -> None:
    """Anthropic SSE → canonical chunks (egress translator) → Anthropic SSE (ingress) → same final message."""
    upstream = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_up",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": MODEL,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"loc'}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ation": "SF"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]
    egress = AnthropicStreamTranslator(StreamStamp(model=MODEL))
    ingress = ChunksToAnthropicEvents(MODEL, "msg_up")
    raw = ingress.start(None)
    for event in upstream:
        for item in SSEParser().feed(json.dumps(event).encode().join([b"event: x\ndata: ", b"\n\n"])):
            for chunk in egress.feed(item):
                raw += ingress.feed(chunk)
    assert egress.done
    raw += ingress.finish(egress.usage)
    final = _final_message(raw)
    assert final.stop_reason == "tool_use"
    assert final.content[0].text == "Checking."  # type: ignore[union-attr]
    assert final.content[1].id == "toolu_1"  # type: ignore[union-attr]
    assert final.content[1].input == {"location": "SF"}  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 30)


# =========================================================================== errors


@pytest.mark.parametrize(
    ("status", "error_type", "sdk_error"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.ContentTooLargeError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (503, "overloaded_error", anthropic.ServiceUnavailableError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
def test_error_bodies_are_understood_by_the_sdk(status: int, error_type: str, sdk_error: type[Exception]) -> None:
    body = anthropic_error_body(status, "something went wrong")
    assert body == {"type": "error", "error": {"type": error_type, "message": "something went wrong"}}
    client = _sdk(lambda request: httpx2.Response(status, json=body))
    with pytest.raises(sdk_error) as err:
        client.messages.create(model=SDK_MODEL, max_tokens=5, messages=ASK)
    assert err.value.body == body  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (418, "invalid_request_error"),
        (502, "api_error"),
        (599, "api_error"),
        (402, "billing_error"),
        (504, "timeout_error"),
    ],
)
def test_error_type_fallbacks(status: int, error_type: str) -> None:
    assert anthropic_error_type(status) == error_type


def test_every_error_kind_has_an_anthropic_type() -> None:
    assert set(KIND_ERROR_TYPES) == set(ErrorKind)
    assert KIND_ERROR_TYPES[ErrorKind.OVERLOADED] == "overloaded_error"
    assert KIND_ERROR_TYPES[ErrorKind.RATE_LIMITED] == "rate_limit_error"
