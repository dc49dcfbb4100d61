"""The official anthropic SDK against /v1/messages, through each egress adapter."""

from __future__ import annotations

import anthropic
import pytest

from .conftest import CONFORMANCE_WIRES, requires

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-client", max_retries=0)


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_message(client, wire):
    message = client.messages.create(
        model=f"via-{wire}",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "Repeat: bonjour le monde"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "bonjour le monde"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_stream(client, wire):
    with client.messages.stream(
        model=f"via-{wire}", max_tokens=100, messages=[{"role": "user", "content": "Repeat: one two three"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("wire", CONFORMANCE_WIRES)
def test_tool_use_round_trip_streaming(client, wire):
    requires(wire, "stream_tools")
    with client.messages.stream(
        model=f"via-{wire}",
        max_tokens=200,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather in Rome?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)
    reply = client.messages.create(
        model=f"via-{wire}",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "weather in Rome?"},
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}]},
        ],
    )
    assert reply.content[0].text.startswith("Tool result received: rainy")


def test_errors_are_anthropic_shaped(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="via-openai", max_tokens=10, messages="not a list")  # type: ignore[arg-type]
