"""Gemini egress honours `parallel_tool_calls: false` (Gemini has no such switch: the first call is kept)."""

from __future__ import annotations

import json
from typing import Any

from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import chat_request_from_dict
from modelyard.server.anthropic_request import messages_request_to_chat

from .test_gemini_adapter import ADAPTER, chat, dep, frag, sse

CALL_A = {"functionCall": {"name": "read_file", "args": {"path": "a.py"}}, "thoughtSignature": "c2ln"}
CALL_B = {"functionCall": {"name": "read_file", "args": {"path": "b.py"}}}


def _answer(parallel: bool | None) -> dict[str, Any]:
    fields = {} if parallel is None else {"parallel_tool_calls": parallel}
    req, _ = chat(**fields)
    response = {
        "candidates": [{"content": {"role": "model", "parts": [CALL_A, CALL_B]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 8, "totalTokenCount": 18},
    }
    completion = ADAPTER.parse_chat(dep(), req, json.dumps(response).encode())
    return completion.body["choices"][0]


def _stream(parallel: bool | None) -> list[dict[str, Any]]:
    fields = {"stream": True} if parallel is None else {"stream": True, "parallel_tool_calls": parallel}
    translator = ADAPTER.stream_translator(dep(), chat(**fields)[0])
    parser = SSEParser()
    raw = sse(frag([CALL_A, CALL_B]), frag([CALL_B], finish="STOP"))
    chunks: list[dict[str, Any]] = []
    for event in parser.feed(raw) + parser.flush():
        chunks.extend(translator.feed(event))
    return chunks


def _calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]


def test_answer_keeps_every_call_by_default_and_the_first_when_parallel_is_off() -> None:
    assert len(_answer(None)["message"]["tool_calls"]) == 2
    assert len(_answer(True)["message"]["tool_calls"]) == 2
    choice = _answer(False)
    (call,) = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"path": "a.py"}
    assert choice["finish_reason"] == "tool_calls"


def test_stream_keeps_the_first_call_only_when_parallel_is_off() -> None:
    assert [c["index"] for c in _calls(_stream(None))] == [0, 1, 2]
    chunks = _stream(False)
    (call,) = _calls(chunks)
    assert call["index"] == 0 and json.loads(call["function"]["arguments"]) == {"path": "a.py"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_anthropic_disable_parallel_tool_use_reaches_gemini_as_one_call() -> None:
    body = {
        "model": "smart",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "read both files"}],
        "tools": [{"name": "read_file", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    req = chat_request_from_dict(messages_request_to_chat(body))
    assert req.parallel_tool_calls is False
    response = {"candidates": [{"content": {"role": "model", "parts": [CALL_A, CALL_B]}, "index": 0}]}
    choice = ADAPTER.parse_chat(dep(), req, json.dumps(response).encode()).body["choices"][0]
    assert len(choice["message"]["tool_calls"]) == 1
