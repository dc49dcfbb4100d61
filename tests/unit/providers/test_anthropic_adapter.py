"""AnthropicAdapter: requests out, answers and streams in, errors classified.

Fixtures follow the examples of Anthropic's API reference (Messages, streaming, tool use, errors); request
bodies are checked against the official SDK's `MessageCreateParams` TypedDicts.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pydantic
import pytest
from anthropic.types import (
    Base64PDFSourceParam,
    DocumentBlockParam,
    ImageBlockParam,
    MetadataParam,
    OutputConfigParam,
    TextBlockParam,
    ToolChoiceAnyParam,
    ToolChoiceAutoParam,
    ToolChoiceNoneParam,
    ToolChoiceToolParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from anthropic.types.message_create_params import MessageCreateParamsBase

from modelyard.config.model import Deployment
from modelyard.providers.anthropic import TOOL_ERROR_MARKER, AnthropicAdapter, AnthropicStreamTranslator
from modelyard.providers.base import SSEEvent, StreamStamp
from modelyard.providers.sse import SSEParser
from modelyard.routing.executor import as_dict
from modelyard.schema.chat import EmbeddingRequest, Usage, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

KEY = "sk-ant-api03-secret-test-key"
TOO_LONG = "prompt is too long: 208310 tokens > 200000 maximum"
ADAPTER = AnthropicAdapter()


def dep(**kw: Any) -> Deployment:
    fields: dict[str, Any] = {
        "name": "sonnet@anthropic",
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "api_key": KEY,
    }
    fields.update(kw)
    return Deployment(**fields)


def build(raw: dict[str, Any], *, stream: bool = False, **dep_kw: Any) -> dict[str, Any]:
    raw = {"model": "smart", **raw}
    call = ADAPTER.chat_call(dep(**dep_kw), chat_request_from_dict(raw), raw, stream)
    body: dict[str, Any] = json.loads(call.body)
    return body


def user(text: str = "Hello, Claude") -> dict[str, Any]:
    return {"role": "user", "content": text}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            },
            "required": ["location"],
        },
    },
}


# =========================================================================== request: SDK conformance

_LEGACY_SAMPLING = {"temperature", "top_p", "top_k"}  # accepted by anthropic-version 2023-06-01 only
_BLOCK_PARAMS: dict[str, Any] = {
    "text": TextBlockParam,
    "image": ImageBlockParam,
    "document": DocumentBlockParam,
    "tool_use": ToolUseBlockParam,
    "tool_result": ToolResultBlockParam,
}


_TOOL_CHOICES: dict[str, Any] = {
    "auto": ToolChoiceAutoParam,
    "any": ToolChoiceAnyParam,
    "tool": ToolChoiceToolParam,
    "none": ToolChoiceNoneParam,
}


def _check_keys(value: dict[str, Any], typed: Any, where: str) -> None:
    allowed = typed.__required_keys__ | typed.__optional_keys__
    assert set(value) <= allowed, f"{where}: unknown keys {set(value) - allowed} for {typed.__name__}"
    assert typed.__required_keys__ <= set(value), f"{where}: missing {typed.__required_keys__ - set(value)}"
    pydantic.TypeAdapter(typed).validate_python(value)


def _check_block(block: dict[str, Any], where: str) -> None:
    typed = _BLOCK_PARAMS[block["type"]]
    _check_keys(block, typed, where)
    if block["type"] == "tool_result" and isinstance(block.get("content"), list):
        for j, inner in enumerate(block["content"]):
            _check_block(inner, f"{where}.content.{j}")
    if block["type"] == "document" and block["source"]["type"] == "base64":
        _check_keys(block["source"], Base64PDFSourceParam, f"{where}.source")


def assert_valid_anthropic_body(body: dict[str, Any], *, legacy_sampling: bool = True) -> None:
    """Every key is one the official SDK knows, and each part validates against its TypedDict."""
    params = MessageCreateParamsBase
    allowed = params.__required_keys__ | params.__optional_keys__ | {"stream"}
    if legacy_sampling:
        allowed |= _LEGACY_SAMPLING
    assert set(body) <= allowed, f"unknown top-level keys: {set(body) - allowed}"
    assert isinstance(body["max_tokens"], int)
    previous = None
    for i, message in enumerate(body["messages"]):
        assert message["role"] in ("user", "assistant")
        assert message["role"] != previous, "turns must alternate"
        previous = message["role"]
        if isinstance(message["content"], list):
            for j, block in enumerate(message["content"]):
                _check_block(block, f"messages.{i}.content.{j}")
    if isinstance(body.get("system"), list):
        for j, block in enumerate(body["system"]):
            _check_keys(block, TextBlockParam, f"system.{j}")
    for j, tool in enumerate(body.get("tools", ())):
        _check_keys(tool, ToolParam, f"tools.{j}")
    if "tool_choice" in body:
        _check_keys(body["tool_choice"], _TOOL_CHOICES[body["tool_choice"]["type"]], "tool_choice")
    if "metadata" in body:
        _check_keys(body["metadata"], MetadataParam, "metadata")
    if "output_config" in body:
        _check_keys(body["output_config"], OutputConfigParam, "output_config")


CONFORMANCE_REQUESTS: list[dict[str, Any]] = [
    {"messages": [user()]},
    {
        "messages": [{"role": "system", "content": "Be terse."}, user()],
        "stop": ["END"],
        "user": "u-1",
        "max_tokens": 100,
    },
    {
        "messages": [
            user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"SF"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "15 degrees"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
                    {
                        "type": "file",
                        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
                    },
                ],
            }
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    },
]


@pytest.mark.parametrize("raw", CONFORMANCE_REQUESTS)
@pytest.mark.parametrize("stream", [False, True])
def test_request_bodies_validate_against_sdk_params(raw: dict[str, Any], stream: bool) -> None:
    body = build(raw, stream=stream, capabilities=["tools", "vision", "json_schema"])
    assert_valid_anthropic_body(body, legacy_sampling=False)


def test_sampling_fields_are_only_sent_where_the_api_version_accepts_them() -> None:
    raw = {"messages": [user()], "temperature": 0.2, "top_k": 5}
    legacy = build({**raw})
    assert legacy["temperature"] == 0.2
    assert_valid_anthropic_body(legacy, legacy_sampling=True)
    # The SDK's own API version (2026-10-21) removed temperature/top_p/top_k: the body must not carry them.
    modern = build({**raw}, options={"api_version": "2026-10-21"})
    assert_valid_anthropic_body(modern, legacy_sampling=False)


# =========================================================================== request: the HTTP call


def test_call_url_and_headers() -> None:
    raw = {"model": "smart", "messages": [user()]}
    call = ADAPTER.chat_call(dep(), chat_request_from_dict(raw), raw, False)
    assert call.method == "POST"
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.headers["x-api-key"] == KEY
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.headers["content-type"] == "application/json"
    assert "anthropic-beta" not in call.headers
    assert "Authorization" not in call.headers


@pytest.mark.parametrize(
    ("dep_kw", "url", "headers"),
    [
        ({"api_base": "http://sim:9000/"}, "http://sim:9000/v1/messages", {}),
        ({"api_base": "https://proxy.example/anthropic/v1"}, "https://proxy.example/anthropic/v1/messages", {}),
        ({"options": {"api_version": "2026-10-21"}}, None, {"anthropic-version": "2026-10-21"}),
        ({"options": {"beta": "context-1m-2025-08-07"}}, None, {"anthropic-beta": "context-1m-2025-08-07"}),
        ({"options": {"beta": ["a-2025", "b-2025"]}}, None, {"anthropic-beta": "a-2025,b-2025"}),
        ({"headers": {"x-team": "blue"}}, None, {"x-team": "blue"}),
    ],
)
def test_call_overrides(dep_kw: dict[str, Any], url: str | None, headers: dict[str, str]) -> None:
    raw = {"model": "smart", "messages": [user()]}
    call = ADAPTER.chat_call(dep(**dep_kw), chat_request_from_dict(raw), raw, False)
    if url:
        assert call.url == url
    for key, value in headers.items():
        assert call.headers[key] == value


def test_no_key_header_without_a_key() -> None:
    raw = {"model": "smart", "messages": [user()]}
    call = ADAPTER.chat_call(dep(api_key=None), chat_request_from_dict(raw), raw, False)
    assert "x-api-key" not in call.headers


# =========================================================================== request: body


def test_basic_request_documented_example() -> None:
    body = build({"messages": [user()]})
    assert body == {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [user()]}


@pytest.mark.parametrize(
    ("raw", "dep_kw", "expected"),
    [
        ({}, {}, 4096),
        ({}, {"max_output_tokens": 8192}, 8192),
        ({"max_tokens": 0}, {}, 0),  # Anthropic accepts 0 to pre-warm the prompt cache
        ({"max_tokens": 1024}, {"max_output_tokens": 8192}, 1024),
        ({"max_tokens": 1024, "max_completion_tokens": 300}, {}, 300),
    ],
)
def test_max_tokens_is_always_sent(raw: dict[str, Any], dep_kw: dict[str, Any], expected: int) -> None:
    assert build({"messages": [user()], **raw}, **dep_kw)["max_tokens"] == expected


@pytest.mark.parametrize(
    ("messages", "system"),
    [
        (
            [{"role": "system", "content": "You are a seasoned data scientist."}, user()],
            "You are a seasoned data scientist.",
        ),
        ([{"role": "developer", "content": "Answer in French."}, user()], "Answer in French."),
        (
            [
                {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
                {"role": "developer", "content": "C"},
                user(),
            ],
            [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}, {"type": "text", "text": "C"}],
        ),
    ],
)
def test_system_and_developer_messages_become_top_level_system(messages: list[Any], system: Any) -> None:
    body = build({"messages": messages})
    assert body["system"] == system
    assert body["messages"] == [user()]


def test_consecutive_same_role_messages_are_merged() -> None:
    body = build(
        {
            "messages": [
                user("one"),
                user("two"),
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
                user("three"),
            ]
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "user", "content": "three"},
    ]


def test_whitespace_only_text_is_dropped_and_prefill_is_right_stripped() -> None:
    body = build({"messages": [user("Hi"), user("  \n"), {"role": "assistant", "content": "The answer is "}]})
    assert body["messages"] == [user("Hi"), {"role": "assistant", "content": "The answer is"}]


ANT_URL = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"


@pytest.mark.parametrize(
    ("url", "source"),
    [
        (
            "data:image/jpeg;base64,/9j/4AAQSkZJRg==",
            {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="},
        ),
        ("data:image/webp;base64,UklGRg==", {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}),
        (ANT_URL, {"type": "url", "url": ANT_URL}),
    ],
)
def test_image_parts(url: str, source: dict[str, Any]) -> None:
    body = build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                        {"type": "text", "text": "What is in the above image?"},
                    ],
                }
            ]
        }
    )
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": source},
        {"type": "text", "text": "What is in the above image?"},
    ]


@pytest.mark.parametrize(
    ("part", "needle"),
    [
        ({"type": "input_audio", "input_audio": {"data": "AAA=", "format": "wav"}}, "input_audio"),
        ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAA="}}, "image/tiff"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "base64"),
        ({"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}, "http"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "file_data"),
        ({"type": "file", "file": {"file_data": "data:application/zip;base64,UEsD"}}, "application/zip"),
    ],
)
def test_unsupported_parts_are_a_400_naming_the_part(part: dict[str, Any], needle: str) -> None:
    with pytest.raises(GatewayError) as err:
        build({"messages": [{"role": "user", "content": [part]}]})
    assert err.value.status == 400
    assert needle in err.value.message
    assert err.value.param == "messages[0].content[0]"


def test_pdf_and_text_files_become_document_blocks() -> None:
    body = build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQ=", "filename": "r.pdf"},
                        },
                        {"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}},
                    ],
                }
            ]
        }
    )
    assert body["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="},
            "title": "r.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
    ]


def test_tools_are_translated() -> None:
    body = build({"messages": [user("What is the weather like in San Francisco?")], "tools": [WEATHER_TOOL]})
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert "tool_choice" not in body


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = build({"messages": [user()], "tools": [{"type": "function", "function": {"name": "now"}}]})
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (NAMED, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (NAMED, False, {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    raw: dict[str, Any] = {"messages": [user()], "tools": [WEATHER_TOOL]}
    if choice is not None:
        raw["tool_choice"] = choice
    if parallel is not None:
        raw["parallel_tool_calls"] = parallel
    assert build(raw).get("tool_choice") == expected


def test_allowed_tools_choice_restricts_the_tool_list() -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    body = build(
        {
            "messages": [user()],
            "tools": [WEATHER_TOOL, other],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
        }
    )
    assert [t["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "any"}


def test_tool_round_trip_documented_example() -> None:
    """Anthropic's tool-use example: assistant tool_use, then the tool_result in the next user turn."""
    body = build(
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                user("What's the weather like in San Francisco?"),
                {
                    "role": "assistant",
                    "content": "I'll check the current weather in San Francisco for you.",
                    "tool_calls": [
                        {
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"location": "San Francisco, CA", "unit": "celsius"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
            ],
        }
    )
    assert body["messages"] == [
        user("What's the weather like in San Francisco?"),
        {
            "role": "assistant",
            "content": [
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
                {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"}
            ],
        },
    ]


def test_parallel_tool_results_share_one_user_turn_before_any_text() -> None:
    calls = [
        {"id": f"toolu_{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}} for i in (1, 2)
    ]
    body = build(
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                user("Weather in SF and NYC?"),
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "15C"}]},
                {"role": "tool", "tool_call_id": "toolu_2", "content": TOOL_ERROR_MARKER + "station offline"},
                user("Compare them."),
            ],
        }
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "15C"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "station offline", "is_error": True},
            {"type": "text", "text": "Compare them."},
        ],
    }
    assert len(body["messages"]) == 3


def test_tool_result_is_moved_before_text_of_the_same_turn() -> None:
    body = build(
        {
            "messages": [
                user("Weather?"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                user("(also, be brief)"),
                {"role": "tool", "tool_call_id": "toolu_1", "content": "15C"},
            ]
        }
    )
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15C"},
            {"type": "text", "text": "(also, be brief)"},
        ],
    }


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    with pytest.raises(GatewayError) as err:
        build(
            {
                "messages": [
                    user(),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": arguments}}
                        ],
                    },
                ]
            }
        )
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("END", ["END"]),
        (["\n\nHuman:", "###"], ["\n\nHuman:", "###"]),
        (["\n", "  ", "STOP"], ["STOP"]),  # whitespace-only stop sequences are rejected by Anthropic
        (["\n"], None),
    ],
)
def test_stop_sequences(stop: Any, expected: list[str] | None) -> None:
    assert build({"messages": [user()], "stop": stop}).get("stop_sequences") == expected


@pytest.mark.parametrize(
    ("raw", "dep_kw", "expected"),
    [
        ({"temperature": 0.5}, {}, {"temperature": 0.5}),
        ({"top_p": 0.9}, {}, {"top_p": 0.9}),
        ({"temperature": 0.0, "top_p": 0.9}, {}, {"temperature": 0.0}),  # recent models reject both
        ({"temperature": 0.5}, {"options": {"sampling": False}}, {}),
        ({"temperature": 0.5, "top_k": 40}, {"options": {"api_version": "2026-10-21"}}, {}),
        ({"top_k": 40}, {}, {"top_k": 40}),
    ],
)
def test_sampling(raw: dict[str, Any], dep_kw: dict[str, Any], expected: dict[str, Any]) -> None:
    body = build({"messages": [user()], **raw}, **dep_kw)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body} == expected


def test_user_becomes_metadata_user_id_and_openai_only_fields_are_dropped() -> None:
    body = build(
        {
            "messages": [user()],
            "user": "user-123",
            "seed": 7,
            "presence_penalty": 0.1,
            "logprobs": True,
            "metadata": {"k": "v"},
            "modelyard": {"strategy": "cost"},
        }
    )
    assert body["metadata"] == {"user_id": "user-123"}
    assert set(body) == {"model", "max_tokens", "messages", "metadata"}


def test_stream_flag() -> None:
    assert build({"messages": [user()]}, stream=True)["stream"] is True
    assert "stream" not in build({"messages": [user()], "stream": True}, stream=False)


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}


def test_json_schema_uses_structured_outputs_when_the_deployment_supports_them() -> None:
    body = build(
        {
            "messages": [user()],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
            },
        },
        capabilities=["json_schema"],
    )
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "system" not in body


def test_json_schema_falls_back_to_an_instruction() -> None:
    body = build(
        {
            "messages": [{"role": "system", "content": "Extract."}, user()],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
        },
        capabilities=["tools", "vision", "json_object"],
    )
    assert "output_config" not in body
    assert body["system"][0] == {"type": "text", "text": "Extract."}
    instruction = body["system"][1]["text"]
    assert "JSON" in instruction
    assert json.loads(instruction[instruction.index("{") :]) == SCHEMA


def test_json_object_is_an_instruction() -> None:
    body = build({"messages": [user()], "response_format": {"type": "json_object"}})
    assert "JSON object" in body["system"]


def test_reasoning_effort_maps_to_output_config_effort_only_for_reasoning_deployments() -> None:
    raw = {"messages": [user()], "reasoning_effort": "high"}
    assert build(raw, capabilities=["reasoning"])["output_config"] == {"effort": "high"}
    assert "output_config" not in build(raw, capabilities=["tools"])


def test_native_thinking_passes_through_from_extra_body() -> None:
    body = build({"messages": [user()], "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_n_above_one_is_rejected() -> None:
    with pytest.raises(GatewayError) as err:
        build({"messages": [user()], "n": 2})
    assert err.value.param == "n"


# =========================================================================== response


def parse(data: dict[str, Any]) -> Any:
    raw = {"model": "smart", "messages": [user()]}
    return ADAPTER.parse_chat(dep(), chat_request_from_dict(raw), json.dumps(data).encode())


def message(content: list[Any], stop_reason: str = "end_turn", **extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 2095, "output_tokens": 503},
        **extra,
    }


def test_text_response_documented_example() -> None:
    done = parse(message([{"type": "text", "text": "Hi! My name is Claude."}]))
    assert done.model == "claude-sonnet-4-5-20250929"
    assert done.body["id"] == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert done.body["object"] == "chat.completion"
    assert done.body["model"] == "claude-sonnet-4-5-20250929"
    choice = done.body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hi! My name is Claude.", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert done.usage == Usage(prompt=2095, completion=503)
    assert done.body["usage"]["total_tokens"] == 2598


def test_tool_use_response_documented_example() -> None:
    done = parse(
        message(
            [
                {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA", "unit": "celsius"},
                },
            ],
            "tool_use",
        )
    )
    choice = done.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the current weather in San Francisco for you."
    [call] = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA", "unit": "celsius"}


def test_thinking_becomes_reasoning_content_and_server_tool_blocks_are_left_out() -> None:
    done = parse(
        message(
            [
                {
                    "type": "thinking",
                    "thinking": "Let me analyze this step by step...",
                    "signature": "WaUjzkypQ2mUEVM36O2T",
                },
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "weather"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": []},
                {"type": "text", "text": "Based on my analysis", "citations": None},
                {"type": "text", "text": ", it is sunny."},
            ]
        )
    )
    msg = done.body["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me analyze this step by step..."
    assert msg["content"] == "Based on my analysis, it is sunny."
    assert "tool_calls" not in msg
    # The signed blocks survive (the thinking_blocks extension), in order, signature and data unchanged.
    assert msg["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Let me analyze this step by step...", "signature": "WaUjzkypQ2mUEVM36O2T"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    ]


def test_tool_only_response_has_null_content() -> None:
    done = parse(message([{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}], "tool_use"))
    assert done.body["choices"][0]["message"]["content"] is None
    assert done.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("some_future_reason", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    done = parse(message([{"type": "text", "text": "x"}], stop_reason))
    assert done.body["choices"][0]["finish_reason"] == finish


def test_stop_sequence_is_kept_as_an_extension() -> None:
    done = parse({**message([{"type": "text", "text": "x"}], "stop_sequence"), "stop_sequence": "###"})
    assert done.body["choices"][0]["stop_sequence"] == "###"


def test_cache_usage_counts_like_openai() -> None:
    done = parse(
        message(
            [{"type": "text", "text": "x"}],
            usage={
                "input_tokens": 100,
                "cache_creation_input_tokens": 500,
                "cache_read_input_tokens": 2000,
                "output_tokens": 50,
                "output_tokens_details": {"thinking_tokens": 20},
            },
        )
    )
    assert done.usage == Usage(prompt=2600, completion=50, cached=2000, cache_write=500, reasoning=20)
    usage = done.body["usage"]
    assert usage["prompt_tokens"] == 2600
    assert usage["completion_tokens"] == 50
    assert usage["total_tokens"] == 2650
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2000, "cache_write_tokens": 500}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 20}


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[]", b'{"type": "message"}'])
def test_malformed_responses_are_server_errors(body: bytes) -> None:
    raw = {"model": "smart", "messages": [user()]}
    with pytest.raises(ProviderError) as err:
        ADAPTER.parse_chat(dep(), chat_request_from_dict(raw), body)
    assert err.value.kind is ErrorKind.SERVER


def test_error_object_in_a_200_body_is_classified() -> None:
    with pytest.raises(ProviderError) as err:
        parse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert err.value.kind is ErrorKind.OVERLOADED


# =========================================================================== streaming

RECORDED_STREAM = """\
event: message_start
data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":10,"cache_read_input_tokens":1000,"output_tokens":1}}}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"I need to find "}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"the weather."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Okay, let's check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"x","document_index":0,"document_title":null,"start_char_index":0,"end_char_index":1}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":" the weather."}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: content_block_start
data: {"type":"content_block_start","index":3,"content_block":{"type":"server_tool_use","id":"srvtoolu_01","name":"web_search","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\\"query\\": \\"sf\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":3}

event: some_future_event
data: {"type":"some_future_event","detail":1}

event: content_block_start
data: {"type":"content_block_start","index":4,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":4}

event: content_block_start
data: {"type":"content_block_start","index":5,"content_block":{"type":"tool_use","id":"toolu_02","name":"get_time","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":"{}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":5}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501 -- a byte-faithful recording: SSE data lines are long


def translate(
    text: str, translator: AnthropicStreamTranslator | None = None
) -> tuple[AnthropicStreamTranslator, list[dict[str, Any]]]:
    translator = translator or ADAPTER.stream_translator(
        dep(), chat_request_from_dict({"model": "smart", "messages": [user()]})
    )
    parser = SSEParser()
    chunks: list[dict[str, Any]] = []
    data = text.encode()
    for start in range(0, len(data), 37):  # arbitrary read boundaries, as from a socket
        for event in parser.feed(data[start : start + 37]):
            chunks.extend(as_dict(chunk) for chunk in translator.feed(event))
    for event in parser.flush():
        chunks.extend(as_dict(chunk) for chunk in translator.feed(event))
    return translator, chunks


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks]


def test_recorded_stream_every_event_type() -> None:
    translator, chunks = translate(RECORDED_STREAM)
    assert translator.done
    assert translator.finish() == []
    assert translator.model == "claude-sonnet-4-5-20250929"
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
        assert chunk["model"] == "claude-sonnet-4-5-20250929"
        assert "usage" not in chunk
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "I need to find "},
        {"reasoning_content": "the weather."},
        {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}]},
        {"thinking_blocks": [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}]},
        {"content": "Okay, let's check"},
        {"content": " the weather."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "San Francisco, CA"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-2:] == [None, "tool_calls"]
    # message_delta's output_tokens is cumulative and the input side stays from message_start.
    assert translator.usage == Usage(prompt=1035, completion=89, cached=1000, cache_write=10)


def test_stream_arguments_reassemble_to_the_tool_input() -> None:
    _, chunks = translate(RECORDED_STREAM)
    arguments: dict[int, str] = {}
    for delta in deltas(chunks):
        for call in delta.get("tool_calls", ()):
            arguments[call["index"]] = arguments.get(call["index"], "") + call["function"]["arguments"]
    assert json.loads(arguments[0]) == {"location": "San Francisco, CA"}
    assert json.loads(arguments[1]) == {}


def _simple_stream(stop_reason: str, stop_sequence: str | None = None, usage: str = '{"output_tokens":15}') -> str:
    seq = json.dumps(stop_sequence)
    return (
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        '"role":"assistant","content":[],"model":"claude-haiku-4-5","stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"text","text":""}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"text_delta","text":"Hello"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        f'event: message_delta\ndata: {{"type":"message_delta","delta":{{"stop_reason":"{stop_reason}",'
        f'"stop_sequence":{seq}}},"usage":{usage}}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("tool_use", "tool_calls"),
    ],
)
def test_stream_stop_reasons(stop_reason: str, finish: str) -> None:
    translator, chunks = translate(_simple_stream(stop_reason))
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    assert translator.usage == Usage(prompt=25, completion=15)


def test_stream_stop_sequence_extension() -> None:
    _, chunks = translate(_simple_stream("stop_sequence", "###"))
    assert chunks[-1]["choices"][0]["stop_sequence"] == "###"


def test_message_delta_cumulative_usage_overwrites() -> None:
    usage = '{"input_tokens":30,"cache_read_input_tokens":7,"output_tokens":15}'
    translator, _ = translate(_simple_stream("end_turn", usage=usage))
    assert translator.usage == Usage(prompt=37, completion=15, cached=7)


@pytest.mark.parametrize(
    ("error_type", "message", "kind"),
    [
        ("overloaded_error", "Overloaded", ErrorKind.OVERLOADED),
        (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            ErrorKind.RATE_LIMITED,
        ),
        ("api_error", "Internal server error", ErrorKind.SERVER),
        ("timeout_error", "Request timed out", ErrorKind.TIMEOUT),
        ("invalid_request_error", TOO_LONG, ErrorKind.CONTEXT_LENGTH),
        ("invalid_request_error", "messages.1: bad", ErrorKind.BAD_REQUEST),
        ("authentication_error", "invalid x-api-key", ErrorKind.AUTH),
        ("brand_new_error", "?", ErrorKind.SERVER),
    ],
)
def test_error_event_mid_stream(error_type: str, message: str, kind: ErrorKind) -> None:
    head = _simple_stream("end_turn").split("event: content_block_stop")[0]
    error = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    with pytest.raises(ProviderError) as err:
        translate(head + f"event: error\ndata: {error}\n\n")
    assert err.value.kind is kind
    assert err.value.after_first_byte  # chunks were already emitted
    assert message in err.value.detail  # the provider's text; `message` is generic unless actionable


def test_error_event_right_after_message_start_is_not_after_first_byte() -> None:
    """Anthropic often answers message_start, then overloaded_error: nothing but the role went out."""
    head = _simple_stream("end_turn").split("event: content_block_start")[0]
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(ProviderError) as err:
        translate(head + f"event: error\ndata: {error}\n\n")
    assert err.value.kind is ErrorKind.OVERLOADED
    assert not err.value.after_first_byte


def test_error_event_before_any_chunk_is_not_after_first_byte() -> None:
    translator = AnthropicStreamTranslator(StreamStamp(model="m"))
    with pytest.raises(ProviderError) as err:
        translator.feed(
            SSEEvent(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "error")
        )
    assert err.value.kind is ErrorKind.OVERLOADED
    assert not err.value.after_first_byte


def test_stream_cut_before_message_stop() -> None:
    cut = _simple_stream("end_turn").split("event: message_stop")[0]
    translator, chunks = translate(cut)
    assert chunks  # the text that arrived was forwarded
    assert not translator.done
    with pytest.raises(ProviderError) as err:
        translator.finish()
    assert err.value.kind is ErrorKind.CONNECTION
    assert err.value.after_first_byte


@pytest.mark.parametrize("data", [b"{not json", b"[1]"])
def test_malformed_stream_event(data: bytes) -> None:
    translator = AnthropicStreamTranslator(StreamStamp(model="m"))
    with pytest.raises(ProviderError) as err:
        translator.feed(SSEEvent(data, "content_block_delta"))
    assert err.value.kind is ErrorKind.SERVER


# =========================================================================== errors


def _err(
    status: int,
    error_type: str | None,
    message: str = "",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> ProviderError:
    envelope = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    body = raw if raw is not None else json.dumps(envelope).encode()
    return ADAPTER.error(status, headers or {}, body)


@pytest.mark.parametrize(
    ("status", "error_type", "message", "kind"),
    [
        (400, "invalid_request_error", "messages: roles must alternate", ErrorKind.BAD_REQUEST),
        (400, "invalid_request_error", TOO_LONG, ErrorKind.CONTEXT_LENGTH),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 197626 + 21333 > "
            "200000, decrease input length or `max_tokens` and try again",
            ErrorKind.CONTEXT_LENGTH,
        ),
        (401, "authentication_error", "invalid x-api-key", ErrorKind.AUTH),
        (402, "billing_error", "Your credit balance is too low", ErrorKind.AUTH),
        (403, "permission_error", "Your API key does not have permission", ErrorKind.AUTH),
        (404, "not_found_error", "model: claude-9", ErrorKind.BAD_REQUEST),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", ErrorKind.CONTEXT_LENGTH),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            ErrorKind.RATE_LIMITED,
        ),
        (500, "api_error", "Internal server error", ErrorKind.SERVER),
        (504, "timeout_error", "Request timed out", ErrorKind.TIMEOUT),
        (529, "overloaded_error", "Overloaded", ErrorKind.OVERLOADED),
        (503, None, "", ErrorKind.OVERLOADED),
        (502, None, "", ErrorKind.SERVER),
    ],
)
def test_error_kinds(status: int, error_type: str | None, message: str, kind: ErrorKind) -> None:
    err = _err(status, error_type, message)
    assert err.kind is kind
    assert err.status == status
    assert message in err.detail


def test_rate_limit_retry_after() -> None:
    err = _err(429, "rate_limit_error", "slow down", headers={"retry-after": "30"})
    assert err.kind is ErrorKind.RATE_LIMITED
    assert err.retry_after == 30.0
    assert _err(529, "overloaded_error", "Overloaded").retry_after is None


def test_non_json_error_body() -> None:
    err = _err(502, None, raw=b"<html><body>Bad Gateway</body></html>")
    assert err.kind is ErrorKind.SERVER
    assert "Bad Gateway" in err.detail and "Bad Gateway" not in err.message


def test_error_message_never_carries_an_api_key() -> None:
    err = _err(401, "authentication_error", f"invalid x-api-key {KEY}")
    assert KEY not in err.message and KEY not in err.detail
    assert "sk-ant-" not in str(err)


def test_embeddings_are_not_served() -> None:
    with pytest.raises(GatewayError) as err:
        ADAPTER.embeddings_call(dep(), EmbeddingRequest(model="e", input="x"), {"model": "e", "input": "x"})
    assert err.value.status == 400
    assert "does not serve embeddings" in err.value.message


_START = (
    b'{"type":"message_start","message":{"id":"msg_01Q","type":"message","role":"assistant",'
    b'"model":"claude-x-1","content":[],"stop_reason":null,"usage":{"input_tokens":9,"output_tokens":1}}}'
)


def _text_block(index: int) -> bytes:
    return b'{"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}' % index


def _text_delta(text: bytes, index: int = 0) -> bytes:
    return b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":"%s"}}' % (index, text)


def _chunk_bytes(translator: AnthropicStreamTranslator, data: bytes) -> list[bytes]:
    return [bytes(c) if isinstance(c, msgspec.Raw) else msgspec.json.encode(c) for c in translator.feed(SSEEvent(data))]


# Plain text deltas (the shape is learned from the first), then ones that must be decoded: escapes, a new block.
TEXT_STREAM = [
    _START,
    _text_block(0),
    _text_delta(b"Hello"),
    _text_delta(b" world, {ok} [1]: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82 \x7f"),
    _text_delta(b""),
    _text_delta(b'line\\nbreak \\"quoted\\" caf\\u00e9 \\\\ slash\\/'),
    _text_delta(b"after"),
    b'{"type":"content_block_stop","index":0}',
    _text_block(1),
    _text_delta(b"second block", 1),
    _text_delta(b" goes on", 1),
    _text_delta(b"again", 0),
    _text_delta(b'x","text":"the decoder keeps this one'),  # a duplicate key: the same text as decoded
    _START.replace(b"msg_01Q", b"msg_02R").replace(b"claude-x-1", b"claude-y-2"),  # new id and model
    _text_delta(b"in the new message"),
    b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":12}}',
    b'{"type":"message_stop"}',
]


def test_text_deltas_spliced_into_chunks_are_byte_for_byte_what_decoding_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelyard.providers import anthropic_stream

    def fresh() -> AnthropicStreamTranslator:
        return ADAPTER.stream_translator(dep(), chat_request_from_dict({"model": "smart", "messages": [user()]}))

    spliced = fresh()
    fast = [_chunk_bytes(spliced, data) for data in TEXT_STREAM]
    monkeypatch.setattr(anthropic_stream._TextDeltas, "learn", classmethod(lambda cls, data, empty: None))
    decoded = fresh()
    assert fast == [_chunk_bytes(decoded, data) for data in TEXT_STREAM]
    assert fast[4] == [] and len(fast[3]) == 1  # an empty delta emits nothing, as decoded
    assert spliced.usage.completion == decoded.usage.completion == 12 and spliced.done


def test_a_delta_with_a_repeated_text_member_teaches_no_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder keeps the last of two "text" members: a shape learned up to the first would splice the
    wrong one into every later delta of that form."""
    from modelyard.providers import anthropic_stream

    stream = [_START, _text_block(0), _text_delta(b'first","text":"kept'), _text_delta(b'other","text":"kept')]

    def run() -> list[list[bytes]]:
        translator = ADAPTER.stream_translator(dep(), chat_request_from_dict({"model": "m", "messages": [user()]}))
        return [_chunk_bytes(translator, data) for data in stream]

    spliced = run()
    monkeypatch.setattr(anthropic_stream._TextDeltas, "learn", classmethod(lambda cls, data, empty: None))
    assert spliced == run()
    assert msgspec.json.decode(spliced[3][0])["choices"][0]["delta"] == {"content": "kept"}


def test_plain_text_deltas_skip_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.providers import anthropic_stream

    translator = ADAPTER.stream_translator(dep(), chat_request_from_dict({"model": "smart", "messages": [user()]}))
    for data in (_START, _text_block(0), _text_delta(b"Hi")):
        translator.feed(SSEEvent(data))

    def no_decode(data: bytes, *, after_first_byte: bool = False) -> dict[str, Any]:
        raise AssertionError(f"decoded {data!r}")

    monkeypatch.setattr(anthropic_stream, "decode_event", no_decode)
    (chunk,) = translator.feed(SSEEvent(_text_delta(b" there \xc3\xa9")))
    assert isinstance(chunk, msgspec.Raw)
    assert msgspec.json.decode(bytes(chunk))["choices"][0]["delta"] == {"content": " there é"}
    for unplain in (b"a\\nb", b'a\\"b', b"tab\there", b"bad \xff utf-8", b"x\\u00e9"):
        with pytest.raises(AssertionError, match="decoded"):
            translator.feed(SSEEvent(_text_delta(unplain)))  # each goes to the decoder
    monkeypatch.undo()
    for data in (_text_block(1), _text_delta(b"next block", 1)):  # its first plain delta teaches its shape
        translator.feed(SSEEvent(data))
    monkeypatch.setattr(anthropic_stream, "decode_event", no_decode)
    assert isinstance(translator.feed(SSEEvent(_text_delta(b"more", 1)))[0], msgspec.Raw)


def test_a_text_delta_the_decoder_refuses_is_still_an_error() -> None:
    translator = ADAPTER.stream_translator(dep(), chat_request_from_dict({"model": "smart", "messages": [user()]}))
    for data in (_START, _text_block(0), _text_delta(b"Hi")):
        translator.feed(SSEEvent(data))
    for broken in (b"raw \x01 control", b"bad \xff utf-8"):
        with pytest.raises(ProviderError):
            translator.feed(SSEEvent(_text_delta(broken)))
    with pytest.raises(ProviderError):  # the same length as a delta, but not one: not JSON
        translator.feed(SSEEvent(_text_delta(b"abc")[:-2] + b"]]"))
