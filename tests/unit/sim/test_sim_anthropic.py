"""The Anthropic wire format, through the official `anthropic` SDK (and raw HTTP for the event sequence)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from modelyard.sim import SimServer
from tests.unit.sim.sim_helpers import fleet, sse

WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
TIME: Any = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
}


@pytest.fixture
def client(sim: SimServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.anthropic_base, api_key="sk-ant-anything", max_retries=0) as c:
        yield c


def user(text: str) -> Any:
    """A one-message conversation (typed loosely: the SDKs' TypedDicts are strict)."""
    return [{"role": "user", "content": text}]


def test_message_round_trip(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model="sim-medium", max_tokens=1024, system="Be brief.", messages=user("Hello"))
    assert m.type == "message" and m.role == "assistant" and m.model == "sim-medium"
    assert m.id.startswith("msg_")
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert len(m.content) == 1 and m.content[0].type == "text"
    text = m.content[0].text
    assert m.usage.input_tokens == 3 + 2  # "Be brief." + "Hello"
    assert m.usage.output_tokens == (len(text) + 3) // 4
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0


def test_repeat_stop_sequences_and_max_tokens(client: anthropic.Anthropic) -> None:
    m = client.messages.create(
        model="sim-small", max_tokens=100, messages=user("Repeat: alpha END beta"), stop_sequences=["END"]
    )
    assert m.content[0].type == "text" and m.content[0].text == "alpha "
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "END"
    m = client.messages.create(model="sim-large", max_tokens=4, messages=user("hi"))
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens <= 4


def test_stream_event_sequence_is_complete_and_in_order(sim: SimServer) -> None:
    body = {"model": "sim-small", "max_tokens": 200, "stream": True, "messages": user("Repeat: a b c d e")}
    r = httpx.post(sim.url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.content)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))  # event name == data type
    start = payloads[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 5
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text == "a b c d e"
    delta = payloads[-2]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3


def test_sdk_stream_accumulates_the_final_message(client: anthropic.Anthropic) -> None:
    messages = user("Repeat: streaming works")
    with client.messages.stream(model="sim-small", max_tokens=300, messages=messages) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(pieces) == "streaming works"
    assert final.content[0].type == "text" and final.content[0].text == "streaming works"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4 and final.usage.input_tokens == 6


def test_tool_use_any_named_and_auto(client: anthropic.Anthropic) -> None:
    m = client.messages.create(
        model="sim-large", max_tokens=500, messages=user("hi"), tools=[WEATHER, TIME], tool_choice={"type": "any"}
    )
    assert m.stop_reason == "tool_use"
    assert [b.type for b in m.content] == ["tool_use"]
    block = m.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, WEATHER["input_schema"])
    m = client.messages.create(
        model="sim-large",
        max_tokens=500,
        messages=user("hi"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert [b.name for b in m.content if b.type == "tool_use"] == ["get_time"]
    m = client.messages.create(model="sim-large", max_tokens=500, messages=user("use get_time"), tools=[WEATHER, TIME])
    assert [b.name for b in m.content if b.type == "tool_use"] == ["get_time"]
    m = client.messages.create(
        model="sim-large",
        max_tokens=500,
        messages=user("call all tools"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert len([b for b in m.content if b.type == "tool_use"]) == 1
    m = client.messages.create(
        model="sim-large",
        max_tokens=500,
        messages=user("use get_time"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "none"},
    )
    assert m.stop_reason in ("end_turn", "max_tokens") and m.content[0].type == "text"


def test_streamed_tool_use_arguments_parse(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="sim-small",
        max_tokens=500,
        messages=user("call all tools"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "any"},
    ) as s:
        final = s.get_final_message()
    blocks = [b for b in final.content if b.type == "tool_use"]
    assert [b.name for b in blocks] == ["get_weather", "get_time"]
    jsonschema.validate(blocks[0].input, WEATHER["input_schema"])
    jsonschema.validate(blocks[1].input, TIME["input_schema"])
    assert final.stop_reason == "tool_use"


def test_tool_result_convention(client: anthropic.Anthropic) -> None:
    messages: Any = [
        {"role": "user", "content": "weather? get_weather"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C, cloudy"}]}
            ],
        },
    ]
    m = client.messages.create(model="sim-small", max_tokens=200, messages=messages, tools=[WEATHER])
    assert m.content[0].type == "text" and m.content[0].text == "Tool result received: 18C, cloudy"
    assert m.stop_reason == "end_turn"


def test_structured_output_and_images(client: anthropic.Anthropic) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    m = client.messages.create(
        model="sim-small",
        max_tokens=500,
        messages=user("extract"),
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert m.content[0].type == "text"
    jsonschema.validate(json.loads(m.content[0].text), schema)
    source = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    image: Any = {"type": "image", "source": source}
    content: Any = [image, {"type": "text", "text": "Repeat: ok"}]
    messages: Any = [{"role": "user", "content": content}]
    m = client.messages.create(model="sim-small", max_tokens=50, messages=messages)
    assert m.content[0].type == "text" and m.content[0].text == "ok"
    assert m.usage.input_tokens == 85 + 3


def test_errors_in_anthropic_format(client: anthropic.Anthropic, sim: SimServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="claude-nope", max_tokens=10, messages=user("hi"))
    assert err.value.status_code == 404
    expected = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-nope"}}
    assert err.value.body == expected
    r = httpx.post(sim.url + "/v1/messages", json={"model": "sim-small", "messages": user("hi")})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


def test_models_list_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"sim-large", "sim-small"} <= set(ids)
    assert client.models.retrieve("sim-small").type == "model"


def test_key_cache_and_context_window() -> None:
    spec = {"name": "m", "cache_hit_rate": 1.0, "context_window": 120}
    with SimServer(fleet(spec, api_key="right")) as sim:
        with (
            anthropic.Anthropic(base_url=sim.url, api_key="wrong", max_retries=0) as bad,
            pytest.raises(anthropic.AuthenticationError) as err,
        ):
            bad.messages.create(model="m", max_tokens=10, messages=user("hi"))
        assert err.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }
        with anthropic.Anthropic(base_url=sim.url, api_key="right", max_retries=0) as good:
            m = good.messages.create(model="m", max_tokens=10, messages=user("Repeat: " + "z" * 392))
            assert m.usage.cache_read_input_tokens == 75  # of a 100-token prompt
            assert m.usage.input_tokens == 25  # Anthropic counts input without the cached part
            too_long = r"prompt is too long: 250 tokens > 120 maximum"
            with pytest.raises(anthropic.BadRequestError, match=too_long):
                good.messages.create(model="m", max_tokens=10, messages=user("q" * 1000))


def test_json_instructions_in_the_system_prompt_are_followed(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    system = "Respond with a single valid JSON object only, conforming to this JSON Schema:\n"
    system += json.dumps(schema)
    m = client.messages.create(model="sim-small", max_tokens=100, system=system, messages=user("hi"))
    assert m.content[0].type == "text"
    jsonschema.validate(json.loads(m.content[0].text), schema)
