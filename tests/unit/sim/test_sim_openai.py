"""The OpenAI wire format, through the official `openai` SDK (and raw HTTP where the SDK hides bytes)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from modelyard.sim import SimServer
from tests.unit.sim.sim_helpers import fleet, sse

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}


@pytest.fixture
def client(sim: SimServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.openai_base, api_key="sk-anything", max_retries=0) as c:
        yield c


def user(text: str) -> Any:
    """A one-message conversation (typed loosely: the SDKs' TypedDicts are strict)."""
    return [{"role": "user", "content": text}]


def test_chat_completion_round_trip(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="sim-large", messages=user("Hello there"))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "sim-large"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.prompt_tokens == 3  # "Hello there": 11 characters
    assert r.usage.completion_tokens == (len(choice.message.content) + 3) // 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 37 <= r.usage.completion_tokens <= 160  # sim-large draws 40..160 tokens (within a word)


def test_repeat_and_tool_result_conventions(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="sim-small", messages=user("Repeat: exactly this, please!"))
    assert r.choices[0].message.content == "exactly this, please!"
    assert r.choices[0].finish_reason == "stop"
    messages: Any = [
        *user("weather in Paris? use get_weather"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C and sunny " + "x" * 300},
    ]
    r = client.chat.completions.create(model="sim-small", messages=messages, tools=[WEATHER_TOOL])
    expected = "Tool result received: " + ("22C and sunny " + "x" * 300)[:200]
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.tool_calls is None


def test_stream_with_include_usage_is_shaped_like_openai(client: openai.OpenAI, sim: SimServer) -> None:
    chunks = list(
        client.chat.completions.create(
            model="sim-medium",
            messages=user("Repeat: one two three four"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5 and last.usage.prompt_tokens == 7
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert len({c.id for c in chunks}) == 1
    # the raw bytes: every chunk carries "usage": null, and the stream ends with [DONE]
    body = {"model": "sim-medium", "messages": user("hi"), "stream": True, "stream_options": {"include_usage": True}}
    raw = httpx.post(sim.openai_base + "/chat/completions", json=body).content
    events = sse(raw)
    assert events[-1] == (None, b"[DONE]")
    decoded = [json.loads(data) for _, data in events[:-1]]
    assert all("usage" in d for d in decoded)
    assert all(d["usage"] is None for d in decoded[:-1]) and decoded[-1]["usage"]["total_tokens"] > 0
    assert all(d["object"] == "chat.completion.chunk" for d in decoded)


def test_stream_without_include_usage_has_no_usage_key(sim: SimServer) -> None:
    raw = httpx.post(
        sim.openai_base + "/chat/completions", json={"model": "sim-small", "messages": user("hi"), "stream": True}
    ).content
    events = sse(raw)
    assert events[-1] == (None, b"[DONE]")
    decoded = [json.loads(data) for _, data in events[:-1]]
    assert all("usage" not in d for d in decoded)
    assert decoded[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_required_tool_call_has_schema_valid_arguments(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="sim-large", messages=user("hi"), tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_TOOL["function"]["parameters"])


def called(completion: Any) -> list[str]:
    return [c.function.name for c in completion.choices[0].message.tool_calls or []]


def test_named_and_auto_tool_choice(client: openai.OpenAI) -> None:
    named = client.chat.completions.create(
        model="sim-large",
        messages=user("hi"),
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert called(named) == ["get_time"]
    auto = client.chat.completions.create(
        model="sim-large", messages=user("what does get_time say?"), tools=[WEATHER_TOOL, TIME_TOOL]
    )
    assert called(auto) == ["get_time"]
    plain = client.chat.completions.create(model="sim-large", messages=user("just chat"), tools=[WEATHER_TOOL])
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    both = client.chat.completions.create(
        model="sim-large", messages=user("call all tools"), tools=[WEATHER_TOOL, TIME_TOOL]
    )
    assert called(both) == ["get_weather", "get_time"]
    single = client.chat.completions.create(
        model="sim-large", messages=user("call all tools"), tools=[WEATHER_TOOL, TIME_TOOL], parallel_tool_calls=False
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


def test_streamed_tool_calls_accumulate_to_valid_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-small",
        messages=user("call all tools"),
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                entry["id"] = delta.id
            if delta.function and delta.function.name:
                entry["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert all(c["id"].startswith("call_") for c in calls.values())
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_TOOL["function"]["parameters"])
    jsonschema.validate(json.loads(calls[1]["arguments"]), TIME_TOOL["function"]["parameters"])


def test_json_modes(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="sim-small", messages=user("give json"), response_format={"type": "json_object"}
    )
    assert set(json.loads(r.choices[0].message.content or "")) == {"answer"}
    schema: Any = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["title", "score", "tags"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="sim-small",
        messages=user("give json"),
        response_format={"type": "json_schema", "json_schema": {"name": "doc", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)


def test_max_tokens_stop_and_n(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="sim-large", messages=user("hi"), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens <= 5
    r = client.chat.completions.create(model="sim-large", messages=user("hi"), max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage and r.usage.completion_tokens <= 3
    r = client.chat.completions.create(model="sim-large", messages=user("Repeat: one, two; three"), stop=[";"])
    assert r.choices[0].message.content == "one, two" and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="sim-large", messages=user("hi"), n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage
    assert r.usage.completion_tokens == sum((len(c.message.content or "") + 3) // 4 for c in r.choices)


def test_images_are_counted(client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "Repeat: ok"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    r = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content == "ok"
    assert r.usage and r.usage.prompt_tokens == 3 + 2 * 85


def test_embeddings_float_and_base64(client: openai.OpenAI, sim: SimServer) -> None:
    r = client.embeddings.create(model="sim-embed", input=["hello world", "bye"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 384
    assert abs(sum(v * v for v in r.data[0].embedding) - 1.0) < 1e-6
    assert r.usage.prompt_tokens == 3 + 1
    default = client.embeddings.create(model="sim-embed", input="hello world")  # the SDK asks for base64
    assert default.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    raw = httpx.post(
        sim.openai_base + "/embeddings",
        json={"model": "sim-embed", "input": "hello world", "encoding_format": "base64", "dimensions": 16},
    ).json()
    vector = struct.unpack("<16f", base64.b64decode(raw["data"][0]["embedding"]))
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
    tokens = client.embeddings.create(model="sim-embed", input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(tokens.data) == 2


@pytest.mark.parametrize("mixed", [[[1, 2], 3], ["a", [1]], ["a", 1]])
def test_embeddings_refuse_mixed_inputs_with_a_400(sim: SimServer, mixed: list[object]) -> None:
    """A list mixing strings, token ids and token-id lists is OpenAI's 400, not a simulator crash."""
    r = httpx.post(sim.openai_base + "/embeddings", json={"model": "sim-embed", "input": mixed})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"sim-large", "sim-medium", "sim-small", "sim-embed"} <= set(ids)
    assert client.models.retrieve("sim-small").id == "sim-small"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_model_is_404_in_openai_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=user("hi"))
    assert err.value.status_code == 404
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and "gpt-nope" in body["message"]


def test_invalid_body_is_400(client: openai.OpenAI, sim: SimServer) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sim-small", messages=[])
    r = httpx.post(sim.openai_base + "/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_context_window_overflow_is_a_context_length_error() -> None:
    with (
        SimServer(fleet({"name": "tiny", "context_window": 10})) as sim,
        openai.OpenAI(base_url=sim.openai_base, api_key="k", max_retries=0) as client,
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=user("x" * 200))
        assert err.value.code == "context_length_exceeded"
        assert "maximum context length is 10 tokens" in str(err.value)


def test_api_key_is_enforced_when_the_fleet_sets_one() -> None:
    with SimServer(fleet({"name": "m"}, api_key="sk-right")) as sim:
        with (
            openai.OpenAI(base_url=sim.openai_base, api_key="sk-wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError) as err,
        ):
            bad.chat.completions.create(model="m", messages=user("hi"))
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        assert (
            httpx.post(sim.openai_base + "/chat/completions", json={"model": "m", "messages": user("hi")}).status_code
            == 401
        )
        with openai.OpenAI(base_url=sim.openai_base, api_key="sk-right", max_retries=0) as good:
            assert good.chat.completions.create(model="m", messages=user("hi")).choices[0].message.content


def test_cached_and_reasoning_tokens_are_reported() -> None:
    spec = {"name": "r", "cache_hit_rate": 1.0, "reasoning_tokens": 12}
    with SimServer(fleet(spec)) as sim, openai.OpenAI(base_url=sim.openai_base, api_key="k", max_retries=0) as c:
        # 400 characters: 100 tokens
        r = c.chat.completions.create(model="r", messages=user("Repeat: " + "y" * 392))
        assert r.usage is not None
        assert r.usage.prompt_tokens == 100
        assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 75
        assert r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens == 12
        assert r.usage.completion_tokens == 98 + 12
