"""The official openai SDK against the real gateway, through each egress adapter to the simulator."""

from __future__ import annotations

import base64
import json

import jsonschema
import openai
import pytest

from .conftest import CLOUD_WIRES, CONFORMANCE_WIRES, WIRES, requires

PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0)


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_text_round_trip_headers_and_usage(client, wire):
    raw = client.chat.completions.with_raw_response.create(
        model=f"via-{wire}",
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "Repeat: hello gateway world"},
        ],
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello gateway world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model  # the model that actually answered
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    headers = raw.headers
    assert headers["x-modelyard-model"] == f"small@{wire}"
    assert headers["x-modelyard-provider"] == wire
    assert headers["x-modelyard-attempts"].startswith("1;")
    cost = float(headers["x-modelyard-cost-usd"])
    expected = (answer.usage.prompt_tokens * 0.1 + answer.usage.completion_tokens * 0.4) / 1e6
    assert cost == pytest.approx(expected, rel=1e-6)
    assert float(headers["x-modelyard-latency-ms"]) > 0
    assert answer.usage.model_extra["cost"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_streaming_with_usage(client, wire):
    stream = client.chat.completions.create(
        model=f"via-{wire}",
        messages=[{"role": "user", "content": "Repeat: one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.model_extra["cost"] > 0


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_streaming_without_usage_has_no_usage_chunk(client, wire):
    chunks = list(
        client.chat.completions.create(
            model=f"via-{wire}", messages=[{"role": "user", "content": "Repeat: a b"}], stream=True
        )
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_tool_call_round_trip(client, wire):
    requires(wire, "tools")
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=f"via-{wire}", messages=messages, tools=[WEATHER], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = client.chat.completions.create(model=f"via-{wire}", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content.startswith("Tool result received: sunny, 21C")


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_tool_call_while_streaming(client, wire):
    requires(wire, "stream_tools")
    stream = client.chat.completions.create(
        model=f"via-{wire}",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function.name or "") if delta.function else ""
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_image_part(client, wire):
    requires(wire, "image")
    answer = client.chat.completions.create(
        model=f"via-{wire}",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Repeat: I see it"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "I see it"
    assert answer.usage.prompt_tokens > 20  # the image is counted


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_json_object_and_json_schema(client, wire):
    requires(wire, "json_object", "json_schema")
    answer = client.chat.completions.create(
        model=f"via-{wire}",
        messages=[{"role": "user", "content": "Give me JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["yes", "no"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=f"via-{wire}",
        messages=[{"role": "user", "content": "Classify"}],
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_stop_and_max_tokens(client, wire):
    requires(wire, "stop", "max_tokens")
    answer = client.chat.completions.create(
        model=f"via-{wire}", messages=[{"role": "user", "content": "Tell me a long story"}], max_tokens=3
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens <= 3
    answer = client.chat.completions.create(
        model=f"via-{wire}", messages=[{"role": "user", "content": "Repeat: alpha beta STOP gamma"}], stop=["STOP"]
    )
    assert answer.choices[0].message.content.strip() == "alpha beta"


@pytest.mark.parametrize("model", ["embed", "embed-gemini"])
def test_embeddings(client, model):
    result = client.embeddings.create(model=model, input=["routing", "orchestration"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens > 0


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"via-openai", "via-anthropic", "via-gemini", "embed"} <= ids


def test_api_keys_never_leak(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="via-openai", messages=[{"role": "user", "content": "Repeat: x"}]
    )
    dump = raw.http_response.text + str(dict(raw.headers))
    for wire in WIRES:
        assert f"sk-test-{wire}-secret" not in dump
    for wire in CLOUD_WIRES:  # every cloud wire's credential is named sk-test-<wire>-secret in its fragment
        assert f"sk-test-{wire}-secret" not in dump
