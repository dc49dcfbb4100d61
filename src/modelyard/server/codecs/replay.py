"""A cached answer in the shape each ingress sends, and back (docs/caching.md).

The response cache keeps one body per request: the non-streamed answer as the ingress would send it (a chat
completion; an Anthropic Message). From it come a JSON hit (a new id, `usage.cost: 0` where the wire has a cost)
and a streamed replay in the same SSE shape a live answer has (chat: chunks, the usage chunk when asked for,
`[DONE]`; messages: message_start, ping, one start/delta/stop per content block, message_delta, message_stop).
A streamed answer is cached by reading its own SSE bytes back into that body (`chat_from_sse`,
`message_from_sse`), which works the same for translated and pass-through answers. The Responses API keeps the
canonical chat completion instead (its Response is rebuilt per request: its own id and echoed fields).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from modelyard.providers.base import new_id
from modelyard.providers.sse import encode_event
from modelyard.schema.chat import Usage
from modelyard.server.codecs.responses import ResponsesState
from modelyard.server.responses_answer import ChunksToResponseEvents, completion_to_response

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_DONE = b"data: [DONE]\n\n"


# ---------------------------------------------------------------------- reading SSE back


def sse_data(stream: bytes) -> list[bytes]:
    """The `data:` payloads of a well-framed SSE byte string, in order (`event:` names are in the payloads
    of both wires: chat has none, Anthropic repeats it as `type`)."""
    out: list[bytes] = []
    for frame in stream.split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


def chat_from_sse(stream: bytes, usage: Usage) -> dict[str, Any] | None:
    """The chat completion a streamed chat answer adds up to (one choice), or None when it is not one
    (an error event, no finish reason, or something this reader does not know)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: Any = None
    head: dict[str, Any] = {}
    for data in sse_data(stream):
        if data == b"[DONE]":
            break
        chunk = _decode(data)
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        if not head and chunk.get("id"):
            head = {"id": chunk["id"], "created": chunk.get("created"), "model": chunk.get("model")}
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0 or choice.get("logprobs"):
                return None  # one choice only; logprobs are not kept
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text.append(delta["content"])
            if delta.get("reasoning_content"):
                reasoning.append(delta["reasoning_content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    int(call.get("index", 0)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
    if finish is None or not head:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage.to_openai(),
    }


def message_from_sse(stream: bytes) -> dict[str, Any] | None:
    """The Anthropic Message a Messages event stream adds up to, or None (an error event, no message_stop)."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    for data in sse_data(stream):
        event = _decode(data)
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "message_start":
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[int(event["index"])] = dict(event["content_block"])
        elif kind == "content_block_delta":
            block = blocks.get(int(event["index"]))
            delta = event.get("delta") or {}
            if block is None:
                return None
            step = delta.get("type")
            if step == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif step == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif step == "signature_delta":
                block["signature"] = delta.get("signature", "")
            elif step == "input_json_delta":
                partial.setdefault(int(event["index"]), []).append(delta.get("partial_json", ""))
            else:
                return None  # a delta this reader does not know: not cached rather than cached wrong
        elif kind == "message_delta" and message is not None:
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
        elif kind == "message_stop" and message is not None:
            for index, parts in partial.items():
                joined = "".join(parts)
                blocks[index]["input"] = _decode(joined) if joined else {}
            message["content"] = [blocks[i] for i in sorted(blocks)]
            return message
        elif kind not in ("ping", "content_block_stop", "message_delta"):
            return None  # an error event, or one this reader does not know
    return None


# ---------------------------------------------------------------------- answering from the cache


def chat_hit(body: dict[str, Any]) -> dict[str, Any]:
    """A cached chat completion as a fresh answer: a new id and time, the original usage at no cost."""
    return {
        **body,
        "id": new_id("chatcmpl-"),
        "created": int(time.time()),
        "usage": {**(body.get("usage") or {}), "cost": 0.0},
    }


def chat_replay(body: dict[str, Any], usage: Usage, *, wants_usage: bool) -> bytes:
    """A cached chat completion (already through `chat_hit`) as the chunk stream a live answer sends:
    the message in one delta (role, content, reasoning), its tool calls in one more, the finish, the usage
    chunk (cost 0) when the client asked for it, `[DONE]`."""
    chunks = chat_chunks(body, usage, wants_usage=wants_usage)
    return b"".join([b"data: " + _encode(chunk) + b"\n\n" for chunk in chunks]) + _DONE


def chat_chunks(body: dict[str, Any], usage: Usage, *, wants_usage: bool) -> list[dict[str, Any]]:
    """A chat completion as canonical stream chunks, every choice under its own index (`chat_replay`; the
    Responses replay feeds them to its own event builder)."""
    head = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body.get("model")}
    chunks: list[dict[str, Any]] = []
    for position, choice in enumerate(body.get("choices") or [{}]):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if k != "tool_calls" and v is not None}
        delta.setdefault("role", "assistant")
        delta.setdefault("content", "")
        chunks.append({**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        calls = message.get("tool_calls")
        if calls:
            indexed = [{"index": i, **call} for i, call in enumerate(calls)]
            chunks.append(
                {**head, "choices": [{"index": index, "delta": {"tool_calls": indexed}, "finish_reason": None}]}
            )
        chunks.append(
            {**head, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        )
    if wants_usage:
        chunks.append({**head, "choices": [], "usage": {**usage.to_openai(), "cost": 0.0}})
    return chunks


def message_hit(message: dict[str, Any]) -> dict[str, Any]:
    """A cached Message as a fresh answer (a new id; the Messages wire shows no cost)."""
    return {**message, "id": new_id("msg_")}


def message_replay(message: dict[str, Any]) -> bytes:
    """A cached Message (already through `message_hit`) as the event stream a live answer sends."""
    usage = message.get("usage") or {}
    start = {
        **{k: v for k, v in message.items() if k not in ("content", "usage")},
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    events = [_event({"type": "message_start", "message": start}), _event({"type": "ping"})]
    for index, block in enumerate(message.get("content") or ()):
        events.extend(_block_events(index, block))
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    events.append(_event({"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(_event({"type": "message_stop"}))
    return b"".join(events)


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block.get("type")
    if kind == "text":
        start, delta = {**block, "text": ""}, {"type": "text_delta", "text": block.get("text", "")}
    elif kind == "thinking":
        start, delta = (
            {**block, "thinking": "", "signature": ""},
            {
                "type": "thinking_delta",
                "thinking": block.get("thinking", ""),
            },
        )
    elif kind == "tool_use":
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": _encode(block.get("input") or {}).decode()}
    else:  # redacted thinking, server tool results: whole in their start event, as Anthropic sends them
        start, delta = block, None
    events = [_event({"type": "content_block_start", "index": index, "content_block": start})]
    if delta is not None:
        events.append(_event({"type": "content_block_delta", "index": index, "delta": delta}))
    if kind == "thinking" and block.get("signature"):
        signature = {"type": "signature_delta", "signature": block["signature"]}
        events.append(_event({"type": "content_block_delta", "index": index, "delta": signature}))
    events.append(_event({"type": "content_block_stop", "index": index}))
    return events


def _event(data: dict[str, Any]) -> bytes:
    return encode_event(_encode(data), data["type"])


def response_hit(state: ResponsesState, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """A cached canonical completion as this request's Response (its own id, its own echoed fields, cost 0);
    kept in `state` so the codec's commit stores it for a `previous_response_id`."""
    response = completion_to_response(state.req, state.translation, completion, usage, 0.0, state.response_id)
    state.response, state.output = response, response["output"]
    return response


def response_replay(state: ResponsesState, completion: dict[str, Any], usage: Usage) -> bytes:
    """A cached canonical completion as the Responses event stream a live translated answer sends."""
    events = ChunksToResponseEvents(state.req, state.translation, state.response_id)
    out = events.start()
    for chunk in chat_chunks(completion, usage, wants_usage=False):
        out += events.feed(chunk)
    out += events.finish(usage, 0.0)
    state.output, state.response = events.output, events.final
    return b"".join(out)
