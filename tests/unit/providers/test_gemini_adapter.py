"""The Gemini wire format, table-tested against Google's documented request/response examples.

Request fixtures follow the Gemini API reference (generateContent, function calling, structured output,
embeddings); response fixtures are the documented response bodies. Where the google-genai SDK is installed
its pydantic types (camelCase aliases, extra fields forbidden) check that every shape we send or expect is
one the SDK knows.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from modelyard.config.model import Deployment
from modelyard.providers.base import SSEEvent
from modelyard.providers.gemini import (
    PLACEHOLDER_SIGNATURE,
    GeminiAdapter,
    GeminiStreamTranslator,
    signature_from_id,
    tool_call_id,
)
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, chat_request_from_dict
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

API_KEY = "AIzaSyTEST-not-a-real-key-0123456789"
ADAPTER = GeminiAdapter()
SIGNATURE = base64.b64encode(b"\x12\x9f opaque thought state \xfe\xff" * 3).decode()


def dep(model: str = "gemini-2.5-flash", **kw: Any) -> Deployment:
    return Deployment(name=f"{model}@google", provider="gemini", model=model, api_key=API_KEY, **kw)


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> tuple[ChatRequest, dict[str, Any]]:
    raw = {"model": "smart", "messages": messages or [{"role": "user", "content": "Hello"}], **fields}
    return chat_request_from_dict(raw), raw


def body_of(d: Deployment, messages: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    req, raw = chat(messages, **fields)
    call = ADAPTER.chat_call(d, req, raw, stream=False)
    out: dict[str, Any] = json.loads(call.body)
    return out


def parse(response: dict[str, Any], d: Deployment | None = None) -> dict[str, Any]:
    req, _ = chat()
    completion = ADAPTER.parse_chat(d or dep(), req, json.dumps(response).encode())
    assert completion.body["usage"] == completion.usage.to_openai()
    return completion.body


# ============================================================================ URLs, auth


def test_generate_content_url_and_key_header() -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(), req, raw, stream=False)
    assert call.method == "POST"
    assert call.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert call.headers["x-goog-api-key"] == API_KEY
    assert call.headers["Content-Type"] == "application/json"
    assert API_KEY not in call.url and API_KEY.encode() not in call.body


def test_stream_url_asks_for_sse() -> None:
    req, raw = chat(stream=True)
    call = ADAPTER.chat_call(dep(), req, raw, stream=True)
    assert call.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


@pytest.mark.parametrize(
    ("api_base", "options", "model", "expected"),
    [
        (
            None,
            {"api_version": "v1"},
            "gemini-2.5-pro",
            "https://generativelanguage.googleapis.com/v1/models/gemini-2.5-pro:generateContent",
        ),
        ("http://sim:8080/", {}, "gemini-2.0-flash", "http://sim:8080/v1beta/models/gemini-2.0-flash:generateContent"),
        (
            "https://proxy.example/google/v1beta",
            {},
            "gemini-2.0-flash",
            "https://proxy.example/google/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            None,
            {},
            "models/gemini-2.0-flash",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            None,
            {},
            "tunedModels/my-tuned-7",
            "https://generativelanguage.googleapis.com/v1beta/tunedModels/my-tuned-7:generateContent",
        ),
    ],
)
def test_url_variants(api_base: str | None, options: dict[str, Any], model: str, expected: str) -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(model, api_base=api_base, options=options), req, raw, stream=False)
    assert call.url == expected


def test_deployment_headers_are_added() -> None:
    req, raw = chat()
    call = ADAPTER.chat_call(dep(headers={"x-goog-user-project": "acme"}), req, raw, stream=False)
    assert call.headers["x-goog-user-project"] == "acme"
    assert call.headers["x-goog-api-key"] == API_KEY


# ============================================================================ request: messages


def test_system_and_developer_messages_become_system_instruction() -> None:
    body = body_of(
        dep(),
        [
            {"role": "system", "content": "You are a cat. Your name is Neko."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in one line."}]},
            {"role": "user", "content": "Hello there"},
        ],
    )
    assert body["systemInstruction"] == {
        "parts": [{"text": "You are a cat. Your name is Neko."}, {"text": "Answer in one line."}]
    }
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello there"}]}]


def test_multi_turn_roles_and_merging() -> None:
    # The documented chat example, with two user messages in a row that Gemini wants as one turn.
    body = body_of(
        dep(),
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Great to meet you. What would you like to know?"},
            {"role": "user", "content": "I have two dogs in my house."},
            {"role": "user", "content": "How many paws are in my house?"},
        ],
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hello"}]},
        {"role": "model", "parts": [{"text": "Great to meet you. What would you like to know?"}]},
        {
            "role": "user",
            "parts": [{"text": "I have two dogs in my house."}, {"text": "How many paws are in my house?"}],
        },
    ]
    assert "systemInstruction" not in body and "tools" not in body and "generationConfig" not in body


def test_inline_image_from_data_url() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    body = body_of(
        dep(),
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Caption this image."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "high"}},
                ],
            }
        ],
    )
    assert body["contents"][0]["parts"] == [
        {"text": "Caption this image."},
        {"inlineData": {"mimeType": "image/png", "data": png}},
    ]


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg", "image/jpeg"),
        ("https://example.com/chart.PNG?size=large#top", "image/png"),
        ("https://example.com/photo.webp", "image/webp"),
        ("gs://cloud-samples-data/generative-ai/image/scones.heic", "image/heic"),
        ("https://example.com/render?id=42", "image/jpeg"),  # no extension: the common default
    ],
)
def test_image_url_becomes_file_data(url: str, mime: str) -> None:
    body = body_of(dep(), [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert body["contents"][0]["parts"] == [{"fileData": {"mimeType": mime, "fileUri": url}}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},  # not base64
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}},
        {"type": "file", "file": {"file_id": "file-abc123"}},  # an OpenAI file id Gemini cannot read
        {"type": "file", "file": {"file_data": "JVBERi0x", "filename": "report"}},  # no type to guess
    ],
)
def test_unusable_parts_are_a_400(part: dict[str, Any]) -> None:
    req, raw = chat([{"role": "user", "content": [part]}])
    with pytest.raises(GatewayError) as info:
        ADAPTER.chat_call(dep(), req, raw, stream=False)
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[0]"


def test_audio_and_file_parts_become_inline_data() -> None:
    pdf = base64.b64encode(b"%PDF-1.7 fake").decode()
    body = body_of(
        dep(),
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
                    {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}},
                    {"type": "file", "file": {"file_data": pdf, "filename": "paper.pdf"}},
                    {"type": "file", "file": {"file_id": "files/abc-123", "filename": "notes.txt"}},
                ],
            }
        ],
    )
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        {
            "fileData": {
                "mimeType": "text/plain",
                "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc-123",
            }
        },
    ]


# ============================================================================ request: tools

SCHEDULE_MEETING = {
    "type": "function",
    "function": {
        "name": "schedule_meeting",
        "description": "Schedules a meeting with specified attendees at a given time and date.",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "attendees": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "List of people attending the meeting.",
                },
                "date": {"type": "string", "description": "Date of the meeting (e.g., '2024-07-29')"},
                "time": {"type": "string", "description": "Time of the meeting (e.g., '15:00')"},
                "topic": {"type": "string", "description": "The subject or topic of the meeting."},
            },
            "required": ["attendees", "date", "time", "topic"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_temperature",
        "description": "Gets the current temperature for a given location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def test_function_declarations_use_json_schema_field() -> None:
    body = body_of(dep(), tools=[SCHEDULE_MEETING, GET_WEATHER])
    decls = body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in decls] == ["schedule_meeting", "get_current_temperature"]
    first = decls[0]
    assert first["description"] == "Schedules a meeting with specified attendees at a given time and date."
    schema = first["parametersJsonSchema"]
    assert "$schema" not in schema
    assert schema["additionalProperties"] is False  # parametersJsonSchema takes full JSON Schema
    assert schema["required"] == ["attendees", "date", "time", "topic"]
    assert schema["properties"]["attendees"]["items"] == {"type": "string"}
    assert "parameters" not in first and "strict" not in first
    assert len(body["tools"]) == 1


def test_function_without_parameters_has_no_schema() -> None:
    tool = {"type": "function", "function": {"name": "get_time"}}
    body = body_of(dep(), tools=[tool])
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_time"}]}]


@pytest.mark.parametrize(
    ("tool_choice", "config", "declared"),
    [
        ("auto", {"mode": "AUTO"}, ["schedule_meeting", "get_current_temperature"]),
        ("none", {"mode": "NONE"}, ["schedule_meeting", "get_current_temperature"]),
        ("required", {"mode": "ANY"}, ["schedule_meeting", "get_current_temperature"]),
        (
            {"type": "function", "function": {"name": "get_current_temperature"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_current_temperature"]},
            ["schedule_meeting", "get_current_temperature"],
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "schedule_meeting"}}],
                },
            },
            {"mode": "ANY", "allowedFunctionNames": ["schedule_meeting"]},
            ["schedule_meeting", "get_current_temperature"],
        ),
        (
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "schedule_meeting"}}],
                },
            },
            {"mode": "AUTO"},
            ["schedule_meeting"],
        ),
    ],
)
def test_tool_choice_modes(tool_choice: Any, config: dict[str, Any], declared: list[str]) -> None:
    body = body_of(dep(), tools=[SCHEDULE_MEETING, GET_WEATHER], tool_choice=tool_choice)
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == declared


def test_no_tool_choice_sends_no_tool_config() -> None:
    assert "toolConfig" not in body_of(dep(), tools=[GET_WEATHER])


def test_custom_tools_are_a_400() -> None:
    req, raw = chat(tools=[{"type": "custom", "custom": {"name": "grammar"}}])
    with pytest.raises(GatewayError) as info:
        ADAPTER.chat_call(dep(), req, raw, stream=False)
    assert info.value.status == 400 and info.value.param == "tools[0]"


def _tool_history(first_id: str, second_id: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "What's the temperature in London and Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": first_id,
                    "type": "function",
                    "function": {"name": "get_current_temperature", "arguments": '{"location": "London"}'},
                },
                {
                    "id": second_id,
                    "type": "function",
                    "function": {"name": "get_current_temperature", "arguments": '{"location":"Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": second_id, "content": '{"temperature": 25, "unit": "Celsius"}'},
        {"role": "tool", "tool_call_id": first_id, "content": "18 degrees and cloudy"},
        {"role": "user", "content": "Which is warmer?"},
    ]


def test_tool_round_trip_recovers_names_and_merges_results() -> None:
    body = body_of(dep(), _tool_history("call_a", "toolu_b"), tools=[GET_WEATHER])
    user, model, results = body["contents"]
    assert user["role"] == "user"
    assert model == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_current_temperature", "args": {"location": "London"}},
                "thoughtSignature": PLACEHOLDER_SIGNATURE,
            },  # foreign history: only the first call carries it
            {"functionCall": {"name": "get_current_temperature", "args": {"location": "Paris"}}},
        ],
    }
    assert results == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "name": "get_current_temperature",
                    "response": {"temperature": 25, "unit": "Celsius"},
                }
            },
            {"functionResponse": {"name": "get_current_temperature", "response": {"output": "18 degrees and cloudy"}}},
            {"text": "Which is warmer?"},
        ],
    }


def test_thought_signature_round_trips_through_the_tool_call_id() -> None:
    issued = tool_call_id(SIGNATURE)
    assert issued.startswith("call_") and all(c.isalnum() or c in "_-" for c in issued)
    assert signature_from_id(issued) == SIGNATURE
    body = body_of(dep("gemini-3-pro-preview"), _tool_history(issued, tool_call_id()), tools=[GET_WEATHER])
    parts = body["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == SIGNATURE
    assert "thoughtSignature" not in parts[1]


@pytest.mark.parametrize("foreign", ["call_abc", "toolu_01A09q90qw90lq917835lq9", "call_" + "g" * 24 + "_ts_AAAA", ""])
def test_ids_without_a_signature_carry_none(foreign: str) -> None:
    assert signature_from_id(foreign) is None


def test_signatures_can_be_switched_off() -> None:
    issued = tool_call_id(SIGNATURE)
    off = dep(options={"thought_signatures": False})
    body = body_of(off, _tool_history(issued, "b"), tools=[GET_WEATHER])
    assert all("thoughtSignature" not in part for part in body["contents"][1]["parts"])


def test_tool_message_for_unknown_call_is_a_400() -> None:
    req, raw = chat(
        [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_missing", "content": "42"}]
    )
    with pytest.raises(GatewayError) as info:
        ADAPTER.chat_call(dep(), req, raw, stream=False)
    assert info.value.status == 400 and info.value.param == "messages[1].tool_call_id"


def test_invalid_tool_arguments_are_a_400_and_empty_ones_are_an_empty_object() -> None:
    history = _tool_history("a", "b")
    history[1]["tool_calls"][1]["function"]["arguments"] = ""
    assert body_of(dep(), history)["contents"][1]["parts"][1]["functionCall"]["args"] == {}
    history[1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    req, raw = chat(history)
    with pytest.raises(GatewayError) as info:
        ADAPTER.chat_call(dep(), req, raw, stream=False)
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_assistant_text_and_tool_call_share_one_model_turn() -> None:
    body = body_of(
        dep(options={"thought_signatures": False}),
        [
            {"role": "user", "content": "Book it"},
            {
                "role": "assistant",
                "content": "Booking now.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "schedule_meeting", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '["ok"]'},
        ],
    )
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"text": "Booking now."}, {"functionCall": {"name": "schedule_meeting", "args": {}}}],
    }
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "schedule_meeting", "response": {"output": '["ok"]'}}}
    ]


# ============================================================================ request: generationConfig


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 800, "temperature": 0.2}, {"maxOutputTokens": 800, "temperature": 0.2}),
        ({"max_tokens": 100, "max_completion_tokens": 300}, {"maxOutputTokens": 300}),
        ({"top_p": 0.9, "top_k": 40}, {"topP": 0.9, "topK": 40}),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["x", "y"], "seed": 7, "n": 2}, {"stopSequences": ["x", "y"], "seed": 7, "candidateCount": 2}),
        ({"presence_penalty": 0.5, "frequency_penalty": -0.5}, {"presencePenalty": 0.5, "frequencyPenalty": -0.5}),
        ({"logprobs": True, "top_logprobs": 3}, {"responseLogprobs": True, "logprobs": 3}),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        ({"response_format": {"type": "text"}}, None),
    ],
)
def test_generation_config_mapping(fields: dict[str, Any], expected: dict[str, Any] | None) -> None:
    body = body_of(dep(), **fields)
    assert body.get("generationConfig") == expected


def test_json_schema_response_format() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "recipe_name": {"type": "string"},
            "ingredients": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["recipe_name", "ingredients"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": schema, "strict": True}}
    body = body_of(dep(), response_format=fmt)
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == {k: v for k, v in schema.items() if k != "$schema"}
    assert "responseSchema" not in config


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("gemini-2.5-flash", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0, "includeThoughts": False}),
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "high", "includeThoughts": True}),
        ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "low", "includeThoughts": True}),
    ],
)
def test_reasoning_effort_becomes_thinking_config(model: str, effort: str, thinking: dict[str, Any]) -> None:
    assert body_of(dep(model), reasoning_effort=effort)["generationConfig"] == {"thinkingConfig": thinking}


def test_deployment_options_reach_the_body() -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    d = dep(
        options={"safety_settings": safety, "thinking_config": {"thinkingBudget": -1}, "generation_config": {"topK": 1}}
    )
    body = body_of(d, reasoning_effort="low")
    assert body["safetySettings"] == safety
    assert body["generationConfig"] == {"thinkingConfig": {"thinkingBudget": -1}, "topK": 1}


# ============================================================================ responses

TEXT_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "AI learns patterns from data to make predictions."}], "role": "model"},
            "finishReason": "STOP",
            "avgLogprobs": -0.1385,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 9,
        "totalTokenCount": 17,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash-001",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}

FUNCTION_CALL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {
                            "name": "schedule_meeting",
                            "args": {
                                "attendees": ["Bob", "Alice"],
                                "date": "2025-03-14",
                                "time": "10:00",
                                "topic": "Q3 planning",
                            },
                        },
                        "thoughtSignature": SIGNATURE,
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 111,
        "candidatesTokenCount": 42,
        "totalTokenCount": 236,
        "thoughtsTokenCount": 83,
    },
    "modelVersion": "gemini-3-pro-preview",
    "responseId": "fc-1",
}

THINKING_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "**Counting paws**\n\nTwo dogs, four paws each.", "thought": True},
                    {"text": "There are 8 paws in your house.", "thoughtSignature": SIGNATURE},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 20,
        "candidatesTokenCount": 9,
        "thoughtsTokenCount": 240,
        "cachedContentTokenCount": 12,
        "totalTokenCount": 269,
    },
    "modelVersion": "gemini-2.5-pro",
}


def test_text_response() -> None:
    body = parse(TEXT_RESPONSE)
    assert body["object"] == "chat.completion"
    assert body["id"] == "mAitaLmkHPPlz7IPvtfUqQ4"
    assert body["model"] == "gemini-2.5-flash-001"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "AI learns patterns from data to make predictions."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"]["prompt_tokens"] == 8
    assert body["usage"]["completion_tokens"] == 9
    assert body["usage"]["total_tokens"] == 17


def test_function_call_response() -> None:
    body = parse(FUNCTION_CALL_RESPONSE)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "schedule_meeting"
    assert json.loads(call["function"]["arguments"]) == {
        "attendees": ["Bob", "Alice"],
        "date": "2025-03-14",
        "time": "10:00",
        "topic": "Q3 planning",
    }
    assert call["id"].startswith("call_")
    assert signature_from_id(call["id"]) == SIGNATURE
    # the id the client echoes back restores the signature Gemini 3 insists on
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Schedule it"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"status": "booked"}'},
    ]
    sent = body_of(dep("gemini-3-pro-preview"), history)
    assert sent["contents"][1]["parts"][0]["thoughtSignature"] == SIGNATURE
    assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "schedule_meeting"


def test_function_call_ids_are_unique_and_plain_without_signature() -> None:
    response = json.loads(json.dumps(FUNCTION_CALL_RESPONSE))
    part = response["candidates"][0]["content"]["parts"][0]
    del part["thoughtSignature"]
    response["candidates"][0]["content"]["parts"].append(json.loads(json.dumps(part)))
    calls = parse(response)["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 2 and calls[0]["id"] != calls[1]["id"]
    assert all(len(c["id"]) == len("call_") + 24 for c in calls)


def test_thoughts_go_to_reasoning_content_and_usage_counts_them() -> None:
    body = parse(THINKING_RESPONSE)
    message = body["choices"][0]["message"]
    assert message["content"] == "There are 8 paws in your house."
    assert message["reasoning_content"] == "**Counting paws**\n\nTwo dogs, four paws each."
    usage = body["usage"]
    assert usage["prompt_tokens"] == 20
    assert usage["completion_tokens"] == 9 + 240
    assert usage["total_tokens"] == 269
    assert usage["prompt_tokens_details"]["cached_tokens"] == 12
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 240


def test_model_and_id_fall_back_when_absent() -> None:
    response = {k: v for k, v in TEXT_RESPONSE.items() if k not in ("modelVersion", "responseId")}
    body = parse(response, dep("gemini-2.0-flash"))
    assert body["model"] == "gemini-2.0-flash"
    assert body["id"].startswith("chatcmpl-")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("LANGUAGE", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("TOO_MANY_TOOL_CALLS", "stop"),
        ("SOMETHING_NEW", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),  # the candidate still has usable text
    ],
)
def test_finish_reasons(reason: str, expected: str) -> None:
    response = json.loads(json.dumps(TEXT_RESPONSE))
    response["candidates"][0]["finishReason"] = reason
    assert parse(response)["choices"][0]["finish_reason"] == expected


def test_safety_stop_without_content() -> None:
    response = {
        "candidates": [
            {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}],
            }
        ],
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }
    choice = parse(response)["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"])
def test_unusable_output_is_a_retryable_server_error(reason: str) -> None:
    response = {
        "candidates": [
            {"content": {}, "finishReason": reason, "finishMessage": "Malformed function call: print(default_api.x("}
        ],
        "usageMetadata": {"promptTokenCount": 50, "totalTokenCount": 50},
    }
    with pytest.raises(ProviderError) as info:
        parse(response)
    assert info.value.kind is ErrorKind.SERVER and info.value.retryable
    assert reason in info.value.message


def test_one_usable_candidate_is_enough() -> None:
    response = json.loads(json.dumps(TEXT_RESPONSE))
    response["candidates"].insert(0, {"content": {}, "finishReason": "MALFORMED_FUNCTION_CALL", "index": 1})
    response["candidates"][1]["index"] = 0
    choices = parse(response)["choices"]
    assert [c["index"] for c in choices] == [0]


def test_multiple_candidates_are_choices_in_index_order() -> None:
    response = {
        "candidates": [
            {"content": {"parts": [{"text": "second"}], "role": "model"}, "finishReason": "STOP", "index": 1},
            {"content": {"parts": [{"text": "fir"}, {"text": "st"}], "role": "model"}, "finishReason": "MAX_TOKENS"},
        ]
    }
    choices = parse(response)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "first", "length"),
        (1, "second", "stop"),
    ]


@pytest.mark.parametrize("reason", ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT"])
def test_blocked_prompt_is_content_filter(reason: str) -> None:
    response = {
        "promptFeedback": {
            "blockReason": reason,
            "safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"}],
        },
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": "gemini-2.5-flash",
    }
    with pytest.raises(ProviderError) as info:
        parse(response)
    assert info.value.kind is ErrorKind.CONTENT_FILTER
    assert reason in info.value.message


def test_usage_includes_cached_and_tool_use_prompt_tokens() -> None:
    response = json.loads(json.dumps(TEXT_RESPONSE))
    response["usageMetadata"] = {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 800,
        "toolUsePromptTokenCount": 50,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "totalTokenCount": 1100,
    }
    completion = ADAPTER.parse_chat(dep(), chat()[0], json.dumps(response).encode())
    assert (
        completion.usage.prompt,
        completion.usage.cached,
        completion.usage.completion,
        completion.usage.reasoning,
    ) == (1050, 800, 50, 30)
    assert completion.usage.total == 1100
    assert completion.model == "gemini-2.5-flash-001"


def test_logprobs_are_translated() -> None:
    response = json.loads(json.dumps(TEXT_RESPONSE))
    response["candidates"][0]["logprobsResult"] = {
        "topCandidates": [
            {"candidates": [{"token": "AI", "logProbability": -0.01}, {"token": "Machine", "logProbability": -4.6}]}
        ],
        "chosenCandidates": [{"token": "AI", "logProbability": -0.01}],
    }
    logprobs = parse(response)["choices"][0]["logprobs"]
    assert logprobs == {
        "refusal": None,
        "content": [
            {
                "token": "AI",
                "logprob": -0.01,
                "bytes": None,
                "top_logprobs": [
                    {"token": "AI", "logprob": -0.01, "bytes": None},
                    {"token": "Machine", "logprob": -4.6, "bytes": None},
                ],
            }
        ],
    }


@pytest.mark.parametrize("raw", [b"<html>502 Bad Gateway</html>", b"[1, 2]", b'{"candidates": []}'])
def test_malformed_bodies_are_server_errors(raw: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.parse_chat(dep(), chat()[0], raw)
    assert info.value.kind is ErrorKind.SERVER


# ============================================================================ streaming


def sse(*events: dict[str, Any]) -> bytes:
    """Events framed the way Gemini frames them (`data: {...}` and CRLF line ends)."""
    return b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)


def run_stream(
    raw: bytes, d: Deployment | None = None, split: int = 7
) -> tuple[list[dict[str, Any]], GeminiStreamTranslator]:
    """Feed bytes through the real SSE parser in small reads, as the transport does."""
    translator = ADAPTER.stream_translator(d or dep(), chat(stream=True)[0])
    parser = SSEParser()
    chunks: list[dict[str, Any]] = []
    for i in range(0, len(raw), split):
        for event in parser.feed(raw[i : i + split]):
            chunks.extend(translator.feed(event))
    for event in parser.flush():
        chunks.extend(translator.feed(event))
    chunks.extend(translator.finish())
    return chunks, translator


def frag(
    parts: list[dict[str, Any]], finish: str | None = None, usage: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r-42"}
    if usage:
        event["usageMetadata"] = usage
    event.update(extra)
    return event


def test_full_stream_with_text_and_function_call() -> None:
    raw = sse(
        frag([{"text": "Let me"}], usage={"promptTokenCount": 30, "totalTokenCount": 30}),
        frag([{"text": " check the weather"}]),
        frag([{"text": " for you."}]),
        frag(
            [
                {
                    "functionCall": {"name": "get_current_temperature", "args": {"location": "London"}},
                    "thoughtSignature": SIGNATURE,
                }
            ]
        ),
        frag(
            [{"text": ""}],
            finish="STOP",
            usage={"promptTokenCount": 30, "candidatesTokenCount": 25, "thoughtsTokenCount": 5, "totalTokenCount": 60},
        ),
    )
    chunks, translator = run_stream(raw)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "r-42" for c in chunks)
    assert all(c["model"] == "gemini-2.5-flash" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "Let me"}
    assert all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content", "") for d in deltas) == "Let me check the weather for you."
    (call,) = deltas[3]["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function"
    assert call["function"] == {"name": "get_current_temperature", "arguments": '{"location":"London"}'}
    assert signature_from_id(call["id"]) == SIGNATURE
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, None, "tool_calls"]
    assert "usage" not in chunks[-1]
    assert translator.done
    assert (translator.usage.prompt, translator.usage.completion, translator.usage.reasoning) == (30, 30, 5)


def test_parallel_calls_in_a_stream_get_consecutive_indexes() -> None:
    call = {"functionCall": {"name": "get_current_temperature", "args": {"location": "Paris"}}}
    chunks, _ = run_stream(sse(frag([call, call]), frag([call], finish="STOP")))
    indexes = [tc["index"] for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert indexes == [0, 1, 2]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_thoughts_become_reasoning_deltas() -> None:
    chunks, _ = run_stream(
        sse(
            frag([{"text": "Thinking about paws", "thought": True}]),
            frag([{"text": "8 paws."}], finish="STOP", usage={"promptTokenCount": 5, "candidatesTokenCount": 3}),
        )
    )
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "reasoning_content": "Thinking about paws"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "8 paws."}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_stream_finish_with_length_and_trailing_usage_event() -> None:
    chunks, translator = run_stream(
        sse(
            frag([{"text": "Once upon a"}]),
            frag([], finish="MAX_TOKENS"),
            {
                "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 16, "totalTokenCount": 20},
                "modelVersion": "gemini-2.5-flash",
            },
        )
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert translator.usage.completion == 16


def test_stream_cut_without_finish_reason() -> None:
    with pytest.raises(ProviderError) as info:
        run_stream(sse(frag([{"text": "The answer is"}]), frag([{"text": " forty"}])))
    assert info.value.kind is ErrorKind.CONNECTION
    assert info.value.after_first_byte


def test_stream_not_done_until_finish_reason() -> None:
    translator = ADAPTER.stream_translator(dep(), chat()[0])
    translator.feed(SSEEvent(json.dumps(frag([{"text": "a"}])).encode()))
    assert not translator.done
    translator.feed(SSEEvent(json.dumps(frag([{"text": "b"}], finish="STOP")).encode()))
    assert translator.done


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"},
            ErrorKind.RATE_LIMITED,
        ),
        ({"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}, ErrorKind.SERVER),
        (
            {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"},
            ErrorKind.OVERLOADED,
        ),
        ({"message": "something went wrong"}, ErrorKind.SERVER),
    ],
)
def test_error_object_in_stream(error: dict[str, Any], kind: ErrorKind) -> None:
    translator = ADAPTER.stream_translator(dep(), chat()[0])
    assert translator.feed(SSEEvent(json.dumps(frag([{"text": "Hi"}])).encode()))
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(json.dumps({"error": error}).encode()))
    assert info.value.kind is kind
    assert info.value.after_first_byte
    assert error["message"] in info.value.detail


def test_stream_blocked_prompt() -> None:
    translator = ADAPTER.stream_translator(dep(), chat()[0])
    event = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(json.dumps(event).encode()))
    assert info.value.kind is ErrorKind.CONTENT_FILTER and not info.value.after_first_byte


def test_stream_malformed_function_call_before_any_output() -> None:
    translator = ADAPTER.stream_translator(dep(), chat()[0])
    event = {"candidates": [{"content": {}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}
    with pytest.raises(ProviderError) as info:
        translator.feed(SSEEvent(json.dumps(event).encode()))
    assert info.value.kind is ErrorKind.SERVER and not info.value.after_first_byte


@pytest.mark.parametrize("data", [b"not json", b"[]"])
def test_stream_garbage_is_a_server_error(data: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        ADAPTER.stream_translator(dep(), chat()[0]).feed(SSEEvent(data))
    assert info.value.kind is ErrorKind.SERVER


def test_stream_with_two_candidates() -> None:
    event = {
        "candidates": [
            {"content": {"parts": [{"text": "A"}], "role": "model"}, "index": 0},
            {"content": {"parts": [{"text": "B"}], "role": "model"}, "index": 1},
        ]
    }
    last = {
        "candidates": [
            {"content": {"parts": [], "role": "model"}, "index": 0, "finishReason": "STOP"},
            {"content": {"parts": [], "role": "model"}, "index": 1, "finishReason": "STOP"},
        ]
    }
    chunks, translator = run_stream(sse(event, last))
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks[:2]] == [
        (0, {"role": "assistant", "content": "A"}),
        (1, {"role": "assistant", "content": "B"}),
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[2:]] == ["stop", "stop"]
    assert translator.done


# ============================================================================ errors

QUOTA_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
        ],
    }
}
KEY_INVALID_400 = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


def err(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, QUOTA_429, ErrorKind.RATE_LIMITED),
        (503, err(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), ErrorKind.OVERLOADED),
        (
            500,
            err(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            ),
            ErrorKind.SERVER,
        ),
        (504, err(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), ErrorKind.TIMEOUT),
        (401, err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), ErrorKind.AUTH),
        (
            403,
            err(403, "PERMISSION_DENIED", "Your API key was reported as leaked. Please use another API key."),
            ErrorKind.AUTH,
        ),
        (400, KEY_INVALID_400, ErrorKind.AUTH),
        (400, err(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), ErrorKind.AUTH),
        (
            400,
            err(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            ErrorKind.CONTEXT_LENGTH,
        ),
        (
            400,
            err(400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'),
            ErrorKind.BAD_REQUEST,
        ),
        (
            404,
            err(
                404,
                "NOT_FOUND",
                "models/gemini-9 is not found for API version v1beta, or is not supported for generateContent.",
            ),
            ErrorKind.BAD_REQUEST,
        ),
        (502, None, ErrorKind.SERVER),
    ],
)
def test_error_mapping(status: int, body: dict[str, Any] | None, kind: ErrorKind) -> None:
    raw = json.dumps(body).encode() if body else b"<html><title>502 Server Error</title></html>"
    error = ADAPTER.error(status, {}, raw)
    assert error.kind is kind
    assert error.status == status
    assert API_KEY not in error.message and API_KEY not in error.detail
    if body:
        assert body["error"]["message"] in error.detail


def test_retry_info_gives_retry_after() -> None:
    assert ADAPTER.error(429, {}, json.dumps(QUOTA_429).encode()).retry_after == 43.0


@pytest.mark.parametrize(
    ("delay", "seconds"), [("7s", 7.0), ("0.250s", 0.25), ({"seconds": 3, "nanos": 500000000}, 3.5)]
)
def test_retry_delay_formats(delay: Any, seconds: float) -> None:
    body = err(429, "RESOURCE_EXHAUSTED", "Quota exceeded")
    body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    assert ADAPTER.error(429, {}, json.dumps(body).encode()).retry_after == seconds


def test_retry_after_header_when_no_retry_info() -> None:
    body = json.dumps(err(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted")).encode()
    assert ADAPTER.error(429, {"Retry-After": "12"}, body).retry_after == 12.0
    assert ADAPTER.error(429, {}, body).retry_after is None


def test_error_body_as_json_array() -> None:
    body = json.dumps([err(503, "UNAVAILABLE", "The model is overloaded.")]).encode()
    assert ADAPTER.error(503, {}, body).kind is ErrorKind.OVERLOADED


def test_errors_are_retryable_only_when_it_helps() -> None:
    assert ADAPTER.error(429, {}, json.dumps(QUOTA_429).encode()).retryable
    assert not ADAPTER.error(400, {}, json.dumps(KEY_INVALID_400).encode()).retryable


# ============================================================================ embeddings


def embed_req(**fields: Any) -> tuple[EmbeddingRequest, dict[str, Any]]:
    # Built directly: msgspec cannot decode the shared EmbeddingRequest.input union (reported to the lead).
    raw = {"model": "embed", **fields}
    return EmbeddingRequest(**raw), raw


def test_embeddings_request() -> None:
    req, raw = embed_req(
        input=["What is the meaning of life?", "How much wood would a woodchuck chuck?"], dimensions=768
    )
    call = ADAPTER.embeddings_call(dep("gemini-embedding-001"), req, raw)
    assert call.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    )
    assert call.headers["x-goog-api-key"] == API_KEY
    assert json.loads(call.body) == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "What is the meaning of life?"}]},
                "outputDimensionality": 768,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "How much wood would a woodchuck chuck?"}]},
                "outputDimensionality": 768,
            },
        ]
    }


def test_single_embedding_input_and_token_ids() -> None:
    req, raw = embed_req(input="hello world")
    body = json.loads(ADAPTER.embeddings_call(dep("text-embedding-004"), req, raw).body)
    assert body == {
        "requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello world"}]}}]
    }
    req, raw = embed_req(input=[[1, 2, 3]])
    with pytest.raises(GatewayError):
        ADAPTER.embeddings_call(dep(), req, raw)


def test_embeddings_response() -> None:
    req, _ = embed_req(input=["abcdefgh", "abcd"])
    answer = {"embeddings": [{"values": [0.1, -0.2, 0.3]}, {"values": [0.5, 0.25, -1.0]}]}
    completion = ADAPTER.parse_embeddings(dep("gemini-embedding-001"), req, json.dumps(answer).encode())
    body = completion.body
    assert body["object"] == "list" and body["model"] == "gemini-embedding-001"
    assert body["data"] == [
        {"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]},
        {"object": "embedding", "index": 1, "embedding": [0.5, 0.25, -1.0]},
    ]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # 8//4 + 4//4, Gemini reports none
    assert completion.usage.prompt == 3


def test_embeddings_base64_is_little_endian_float32() -> None:
    req, _ = embed_req(input="x", encoding_format="base64")
    answer = {"embedding": {"values": [0.5, -2.0, 1.25]}}  # the single :embedContent shape
    body = ADAPTER.parse_embeddings(dep(), req, json.dumps(answer).encode()).body
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -2.0, 1.25)


def test_embeddings_reported_usage_wins() -> None:
    req, _ = embed_req(input="some text here")
    answer = {"embeddings": [{"values": [1.0]}], "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}
    assert ADAPTER.parse_embeddings(dep(), req, json.dumps(answer).encode()).usage.prompt == 4


# ============================================================================ against google-genai's types


def test_shapes_validate_against_google_genai_types() -> None:
    types = pytest.importorskip("google.genai.types")
    body = body_of(
        dep(
            "gemini-2.5-flash",
            options={"safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]},
        ),
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            *_tool_history(tool_call_id(SIGNATURE), "call_x"),
        ],
        tools=[SCHEDULE_MEETING, GET_WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_current_temperature"}},
        max_tokens=100,
        temperature=0.3,
        top_p=0.8,
        stop=["END"],
        seed=1,
        n=1,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logprobs=True,
        top_logprobs=2,
        reasoning_effort="low",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    for content in body["contents"]:
        types.Content.model_validate_json(json.dumps(content))
    types.Content.model_validate_json(json.dumps(body["systemInstruction"]))
    for tool in body["tools"]:
        types.Tool.model_validate_json(json.dumps(tool))
    types.ToolConfig.model_validate_json(json.dumps(body["toolConfig"]))
    types.GenerationConfig.model_validate_json(json.dumps(body["generationConfig"]))
    for setting in body["safetySettings"]:
        types.SafetySetting.model_validate_json(json.dumps(setting))
    # and the documented responses the tests above parse are ones the SDK accepts
    for response in (TEXT_RESPONSE, FUNCTION_CALL_RESPONSE, THINKING_RESPONSE):
        types.GenerateContentResponse.model_validate_json(json.dumps(response))
    embed_body = json.loads(ADAPTER.embeddings_call(dep(), *embed_req(input=["a"], dimensions=8)).body)
    for request in embed_body["requests"]:
        types.Content.model_validate_json(json.dumps(request["content"]))
