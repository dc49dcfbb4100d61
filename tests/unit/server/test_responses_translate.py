"""Responses API ⇄ canonical chat: requests, answers and the streaming event sequence (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, GatewayError
from modelyard.server.responses_answer import ChunksToResponseEvents, completion_to_response, output_text
from modelyard.server.responses_request import input_items, item_dicts, responses_to_chat, validate_responses
from modelyard.server.validation import validate_chat


def translate(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    req = validate_responses(body)
    past = input_items(validate_responses({"model": "m", "input": history})) if history else None
    chat = responses_to_chat(req, input_items(req), past).chat
    validate_chat(chat)  # every translation is a valid canonical request
    return chat


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("string input", {"model": "m", "input": "hi"}, {"messages": [{"role": "user", "content": "hi"}]}),
    (
        "instructions first",
        {"model": "m", "input": "hi", "instructions": "be brief"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    ),
    (
        "easy message without type, text parts joined",
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}
            ],
        },
        {"messages": [{"role": "user", "content": "ab"}]},
    ),
    (
        "image part",
        {
            "model": "m",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                    ],
                }
            ],
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    ],
                }
            ]
        },
    ),
    (
        "function round trip: assistant text + calls join one turn, reasoning dropped",
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "SECRET"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
                {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"city":"P"}'},
                {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "checking",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"city":"P"}'}},
                        {"id": "c2", "type": "function", "function": {"name": "get", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"},
            ]
        },
    ),
    (
        "options",
        {
            "model": "m",
            "input": "x",
            "max_output_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "u",
            "metadata": {"a": "b"},
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
            "store": False,
            "prompt_cache_key": "k",
            "include": ["reasoning.encrypted_content"],
        },
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "u",
            "reasoning_effort": "low",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
        },
    ),
    (
        "tools: function kept, hosted dropped, namespace flattened",
        {
            "model": "m",
            "input": "x",
            "tools": [
                {"type": "function", "name": "f", "parameters": {"type": "object"}, "description": "d"},
                {"type": "web_search"},
                {
                    "type": "namespace",
                    "name": "fs",
                    "description": "files",
                    "tools": [{"type": "function", "name": "read"}],
                },
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "fs__read"}},
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    ),
    (
        "tool_choice function",
        {
            "model": "m",
            "input": "x",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "function", "name": "f"},
        },
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
    ),
    (
        "stream asks for usage",
        {"model": "m", "input": "x", "stream": True},
        {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}},
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_request_to_chat(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert translate(body) == {"model": "m", **expected}


def test_history_comes_after_instructions_and_before_input() -> None:
    history: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]
    body = {
        "model": "m",
        "instructions": "sys",
        "input": [{"type": "function_call_output", "call_id": "c1", "output": "ok"}],
    }
    assert translate(body, history)["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]


def test_encrypted_reasoning_never_reaches_the_chat_body() -> None:
    body = {
        "model": "m",
        "input": [
            {"type": "reasoning", "encrypted_content": "SECRET-BLOB", "summary": []},
            {"role": "user", "content": "x"},
        ],
    }
    assert b"SECRET-BLOB" not in msgspec.json.encode(translate(body))


BAD: list[tuple[dict[str, Any], str]] = [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": [{"type": "bogus"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "teleport"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    (
        {"model": "m", "input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}},
        "tool_choice.type",
    ),
    ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"model": "m", "input": "x", "metadata": {"k": "v" * 600}}, "metadata"),
    # Found by the fuzzer: an item `type` that is a list (or an object) is no name: it was a 500 (unhashable).
    ({"model": "m", "input": [{"role": "user", "content": "x", "type": ["message"]}]}, "input[0].type"),
    ({"model": "m", "input": [{"type": {"a": 1}}]}, "input[0].type"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        translate(body)
    assert caught.value.status == 400
    assert caught.value.param is not None and caught.value.param.startswith(param)
    assert caught.value.to_body()["error"]["param"] == caught.value.param


def test_item_dicts_give_every_item_an_id_and_typed_parts() -> None:
    req = validate_responses(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            ],
        }
    )
    items = item_dicts(input_items(req))
    assert items[0]["id"].startswith("msg_") and items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[1]["id"].startswith("fc_") and items[1]["call_id"] == "c"
    # stored items read back as the same input
    again = input_items(validate_responses({"model": "m", "input": items}))
    assert responses_to_chat(req, again).chat == responses_to_chat(req, input_items(req)).chat


def _completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def test_completion_to_response() -> None:
    req = validate_responses(
        {
            "model": "m",
            "input": "x",
            "tools": [
                {"type": "namespace", "name": "fs", "description": "", "tools": [{"type": "function", "name": "read"}]}
            ],
        }
    )
    tr = responses_to_chat(req, input_items(req))
    message = {
        "role": "assistant",
        "content": "hello",
        "reasoning_content": "think",
        "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "fs__read", "arguments": '{"p":1}'}}],
    }
    usage = Usage(prompt=10, completion=5, cached=4, reasoning=2)
    resp = completion_to_response(req, tr, _completion(message, "tool_calls"), usage, 0.0012345)
    assert resp["object"] == "response" and resp["id"].startswith("resp_") and resp["status"] == "completed"
    kinds = [item["type"] for item in resp["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    assert "encrypted_content" not in resp["output"][0]
    assert output_text(resp) == "hello"
    call = resp["output"][2]
    assert (call["call_id"], call["name"], call["namespace"], call["arguments"]) == ("c9", "read", "fs", '{"p":1}')
    assert resp["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
        "cost": 0.0012345,
    }


def test_cut_answer_is_incomplete() -> None:
    req = validate_responses({"model": "m", "input": "x", "max_output_tokens": 3})
    resp = completion_to_response(
        req,
        responses_to_chat(req, input_items(req)),
        _completion({"role": "assistant", "content": "abc"}, "length"),
        Usage(),
        0.0,
    )
    assert resp["status"] == "incomplete"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}


def _events(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        head, data = frame.split(b"\ndata: ", 1)
        event = msgspec.json.decode(data.strip())
        assert head == b"event: " + event["type"].encode()
        out.append(event)
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_stream_of_text_then_parallel_tool_calls() -> None:
    req = validate_responses({"model": "m", "input": "x", "stream": True, "tools": [{"type": "function", "name": "f"}]})
    enc = ChunksToResponseEvents(req, responses_to_chat(req, input_items(req)))
    frames: list[bytes] = []
    frames += enc.feed(_chunk({"role": "assistant", "content": "Hel"}))
    frames += enc.feed(_chunk({"content": "lo"}))
    frames += enc.feed(
        _chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x"'}}
                ]
            }
        )
    )
    frames += enc.feed(
        _chunk(
            {"tool_calls": [{"index": 1, "id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        )
    )
    frames += enc.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "tool_calls"))
    frames += enc.finish(Usage(prompt=3, completion=4), 0.5)
    events = _events(frames)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6]["text"] == "Hello"
    args_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["arguments"]) for e in args_done] == [(1, '{"x":1}'), (2, "{}")]
    deltas_of_first = [
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == 1
    ]
    assert deltas_of_first == ['{"x"', ":1}"]
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 7 and done["usage"]["cost"] == 0.5
    assert [i["type"] for i in done["output"]] == ["message", "function_call", "function_call"]
    assert [i["call_id"] for i in done["output"][1:]] == ["a", "b"]
    assert events[0]["response"]["id"] == done["id"] and events[0]["response"]["status"] == "in_progress"


def test_stream_failure_after_first_byte_is_response_failed() -> None:
    req = validate_responses({"model": "m", "input": "x", "stream": True})
    enc = ChunksToResponseEvents(req, responses_to_chat(req, input_items(req)))
    events = _events(enc.feed(_chunk({"content": "a"})) + enc.fail(ErrorKind.SERVER, "upstream broke"))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "upstream broke"}
    assert enc.finish(Usage(), 0.0) == []  # nothing after the end


def test_stream_events_parse_with_the_openai_sdk_types() -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    req = validate_responses({"model": "m", "input": "x", "stream": True, "tools": [{"type": "function", "name": "f"}]})
    enc = ChunksToResponseEvents(req, responses_to_chat(req, input_items(req)))
    frames = enc.feed(_chunk({"reasoning_content": "hmm"})) + enc.feed(_chunk({"content": "hi"}))
    frames += enc.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls")
    )
    frames += enc.finish(Usage(prompt=1, completion=1), 0.0)
    for event in _events(frames):
        parsed = adapter.validate_python(event)
        assert parsed.type == event["type"]


PATCH_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


def test_custom_tools_travel_as_one_string_functions() -> None:
    body = {
        "model": "m",
        "tools": [PATCH_TOOL],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
        "input": [
            {"role": "user", "content": "fix it"},
            {"type": "custom_tool_call", "call_id": "p1", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "p1", "output": "Done"},
        ],
    }
    chat = translate(body)
    fn = chat["tools"][0]["function"]
    assert fn["name"] == "apply_patch" and fn["parameters"]["required"] == ["input"]
    assert "start: /.+/" in fn["parameters"]["properties"]["input"]["description"]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    call = chat["messages"][1]["tool_calls"][0]
    assert call["id"] == "p1" and msgspec.json.decode(call["function"]["arguments"]) == {"input": "*** Begin Patch"}
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "p1", "content": "Done"}


def test_custom_calls_come_back_as_custom_tool_call_items() -> None:
    req = validate_responses({"model": "m", "input": "x", "tools": [PATCH_TOOL]})
    tr = responses_to_chat(req, input_items(req))
    args = msgspec.json.encode({"input": "*** Begin Patch\n"}).decode()
    message = {
        "role": "assistant",
        "tool_calls": [{"id": "p9", "function": {"name": "apply_patch", "arguments": args}}],
    }
    item = completion_to_response(req, tr, _completion(message, "tool_calls"), Usage(), 0.0)["output"][0]
    assert (item["type"], item["call_id"], item["name"], item["input"]) == (
        "custom_tool_call",
        "p9",
        "apply_patch",
        "*** Begin Patch\n",
    )
    enc = ChunksToResponseEvents(req, tr)
    frames = enc.feed(
        _chunk({"tool_calls": [{"index": 0, "id": "p9", "function": {"name": "apply_patch", "arguments": args[:5]}}]})
    )
    frames += enc.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}, "tool_calls"))
    frames += enc.finish(Usage(), 0.0)
    events = _events(frames)
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)
    done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert done and done[0]["input"] == "*** Begin Patch\n"
    assert events[-1]["response"]["output"][0]["type"] == "custom_tool_call"


def test_hosted_tool_items_are_left_out() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "search"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "found"}]},
        ],
    }
    assert translate(body)["messages"] == [
        {"role": "user", "content": "search"},
        {"role": "assistant", "content": "found"},
    ]
