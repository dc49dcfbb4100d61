"""The simulator's Responses API (`POST /v1/responses`), through the official `openai` SDK: objects, the
streaming events in order with sequence numbers, a function-tool round trip over `previous_response_id`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modelyard.sim import SimServer

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(sim: SimServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.openai_base, api_key="sk-anything", max_retries=0) as c:
        yield c


def test_create_answers_a_response_object(client: openai.OpenAI) -> None:
    r = client.responses.create(model="sim-large", input="Hello there", instructions="be brief")
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text and r.output[0].type == "message"
    assert r.usage is not None and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "be brief"


def test_function_round_trip_with_previous_response_id(client: openai.OpenAI, sim: SimServer) -> None:
    first = client.responses.create(model="sim-large", input="call get_weather for Paris", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    second = client.responses.create(
        model="sim-large",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}],
        tools=[WEATHER],
    )
    assert "sunny, 21C" in second.output_text  # the simulator answers from the tool result
    assert second.previous_response_id == first.id


def test_unknown_previous_response_id_is_openais_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="sim-large", input="x", previous_response_id="resp_nope")
    body: Any = caught.value.body
    assert body["param"] == "previous_response_id" and body["code"] == "previous_response_not_found"


def test_store_false_is_not_remembered(client: openai.OpenAI) -> None:
    first = client.responses.create(model="sim-large", input="x", store=False)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="sim-large", input="y", previous_response_id=first.id)


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    with client.responses.stream(model="sim-large", input="Tell me something") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text and final.usage is not None


def test_stream_of_a_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(model="sim-large", input="x", tools=[WEATHER], tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    call = final.output[0]
    assert call.type == "function_call" and call.arguments == args
    assert "response.function_call_arguments.done" in [e.type for e in events]


def test_raw_sse_frames_name_their_event(sim: SimServer) -> None:
    body = {"model": "sim-large", "input": "hi", "stream": True}
    r = httpx.post(f"{sim.openai_base}/responses", json=body, headers={"authorization": "Bearer x"})
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames and all(f.startswith("event: response.") for f in frames)


def test_bad_item_type_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        bogus: Any = [{"type": "bogus"}]
        client.responses.create(model="sim-large", input=bogus)
    body: Any = caught.value.body
    assert body["param"] == "input[0].type"


PATCH: Any = {"type": "custom", "name": "apply_patch", "description": "Edit files"}
NAMESPACE: Any = {
    "type": "namespace",
    "name": "files",
    "description": "File tools",
    "tools": [{"type": "function", "name": "read_file", "parameters": {"type": "object", "properties": {}}}],
}


def test_custom_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="sim-large", input="x", tools=[PATCH], tool_choice="required")
    call = first.output[0]
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and isinstance(call.input, str)
    second = client.responses.create(
        model="sim-large",
        previous_response_id=first.id,
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "patched ok"}],
        tools=[PATCH],
    )
    assert "patched ok" in second.output_text
    with client.responses.stream(model="sim-large", input="x", tools=[PATCH], tool_choice="required") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    assert final.output[0].type == "custom_tool_call" and deltas == final.output[0].input


def test_namespace_tools_are_called_with_their_namespace(client: openai.OpenAI) -> None:
    r = client.responses.create(model="sim-large", input="x", tools=[NAMESPACE], tool_choice="required")
    call = r.output[0]
    assert call.type == "function_call" and call.name == "read_file" and call.namespace == "files"


def test_hosted_tool_items_are_accepted(client: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": "look it up"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"role": "assistant", "content": "found it"},
        {"role": "user", "content": "thanks"},
    ]
    assert client.responses.create(model="sim-large", input=items, tools=[{"type": "web_search"}]).output_text
