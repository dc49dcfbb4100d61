"""Anthropic wire format: the Messages API (plain and SSE), as api.anthropic.com writes it.

A stream is the documented event sequence: message_start, then per content block content_block_start
(a `ping` after the first), content_block_delta (text_delta / input_json_delta), content_block_stop, then
message_delta with the stop reason and usage, and message_stop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.sim.behaviour import IMAGE_TOKENS, count_tokens, text_pieces
from modelyard.sim.shapes import (
    Answer,
    Ask,
    BadRequest,
    EmbedAsk,
    ErrKind,
    Event,
    Reply,
    StreamPlan,
    ToolMode,
    ToolSpec,
    decode_object,
)

_encode = msgspec.json.Encoder().encode

_ARG_FRAGMENT = 12
_STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
_ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "auth": (401, "authentication_error"),
    "not_found": (404, "not_found_error"),
    "rate_limit": (429, "rate_limit_error"),
    "server_error": (500, "api_error"),
    "unavailable": (529, "overloaded_error"),
    "context_length": (400, "invalid_request_error"),
}
_MODES: dict[str, ToolMode] = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}


class AnthropicWire:
    name = "anthropic"
    messages = {
        "bad_request": "{detail}",
        "auth": "invalid x-api-key",
        "not_found": "model: {model}",
        "rate_limit": "This request would exceed the rate limit for your organization (simulated). "
        "Please retry after {retry} seconds.",
        "server_error": "Internal server error",
        "unavailable": "Overloaded",
        "context_length": "prompt is too long: {prompt} tokens > {limit} maximum",
    }

    # ------------------------------------------------------------------ requests

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        data = decode_object(body)
        name = data.get("model")
        messages = data.get("messages")
        max_tokens = data.get("max_tokens")
        if not isinstance(name, str) or not name:
            raise BadRequest("model: Field required")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("max_tokens: Field required (an integer >= 1)")
        stop = data.get("stop_sequences") or []
        ask = Ask(
            model=name,
            prompt_tokens=0,
            max_tokens=max_tokens,
            stream=bool(data.get("stream")),
            stop=[s for s in stop if isinstance(s, str)] if isinstance(stop, list) else [],
        )
        ask.system_text, _ = _text_and_images(data.get("system"))
        prompt = count_tokens(ask.system_text)
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise BadRequest("messages: each message needs a role of 'user' or 'assistant'")
            prompt += _content_tokens(message.get("content"))
        _read_conversation(messages, ask)
        _read_tools(data, ask)
        prompt += count_tokens(_encode(data["tools"]).decode()) if ask.tools else 0
        ask.prompt_tokens = max(1, prompt)
        _read_output_format(data, ask)
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        raise BadRequest("the Anthropic API has no embeddings endpoint")

    # ------------------------------------------------------------------ answers

    def completion(self, answer: Answer) -> bytes:
        reply = answer.replies[0]
        body = {
            "id": "msg_" + answer.key,
            "type": "message",
            "role": "assistant",
            "model": answer.ask.model,
            "content": _blocks(reply),
            "stop_reason": _STOP_REASON[reply.finish],
            "stop_sequence": reply.stop_sequence,
            "usage": usage(answer, answer.completion_tokens),
        }
        return _encode(body)

    def stream(self, answer: Answer) -> StreamPlan:
        reply = answer.replies[0]
        start_usage = usage(answer, 1)
        message: dict[str, Any] = {
            "id": "msg_" + answer.key,
            "type": "message",
            "role": "assistant",
            "model": answer.ask.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        events = [Event(_encode({"type": "message_start", "message": message}), "message_start")]
        cut_limit = 0
        for index, (block, deltas) in enumerate(_stream_blocks(reply)):
            events.append(_event("content_block_start", {"index": index, "content_block": block}))
            if index == 0:
                events.append(_event("ping", {}))
            for delta, tokens in deltas:
                events.append(_event("content_block_delta", {"index": index, "delta": delta}, tokens))
            cut_limit = len(events)
            events.append(_event("content_block_stop", {"index": index}))
        final_usage = usage(answer, answer.completion_tokens)
        final_usage.pop("service_tier", None)
        delta = {"stop_reason": _STOP_REASON[reply.finish], "stop_sequence": reply.stop_sequence}
        events.append(_event("message_delta", {"delta": delta, "usage": final_usage}))
        events.append(_event("message_stop", {}))
        return StreamPlan(events, cut_limit)

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return [b"event: " + (e.name or "message").encode() + b"\ndata: " + e.data + b"\n\n" for e in events]

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        raise BadRequest("the Anthropic API has no embeddings endpoint")

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, err_type = _ERRORS[kind]
        return status, _encode({"type": "error", "error": {"type": err_type, "message": message}})


def usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    """Anthropic counts `input_tokens` without the cached part (reported as `cache_read_input_tokens`)."""
    out: dict[str, Any] = {
        "input_tokens": answer.prompt_tokens - answer.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": answer.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    if answer.reasoning_tokens and output_tokens > 1:
        out["output_tokens_details"] = {"thinking_tokens": answer.reasoning_tokens}
    return out


def _event(kind: str, payload: dict[str, Any], tokens: float = 0.0) -> Event:
    return Event(_encode({"type": kind, **payload}), kind, tokens)


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [{"type": "tool_use", "id": "toolu_" + c.key, "name": c.name, "input": c.args} for c in reply.tool_calls]
    return [{"type": "text", "text": reply.text}]


def _stream_blocks(reply: Reply) -> list[tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]]:
    """Each content block's opening and its deltas (with the tokens each carries)."""
    if not reply.tool_calls:
        deltas = [({"type": "text_delta", "text": p}, len(p) / 4) for p in text_pieces(reply.text)]
        return [({"type": "text", "text": ""}, deltas)]
    blocks = []
    for call in reply.tool_calls:
        opening = {"type": "tool_use", "id": "toolu_" + call.key, "name": call.name, "input": {}}
        args = call.arguments
        deltas = [
            ({"type": "input_json_delta", "partial_json": args[at : at + _ARG_FRAGMENT]}, _ARG_FRAGMENT / 4)
            for at in range(0, len(args), _ARG_FRAGMENT)
        ]
        blocks.append((opening, deltas))
    return blocks


def _text_and_images(content: Any) -> tuple[str, int]:
    """The text of a content value (string or blocks) and how many images it holds."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("image", "document"):
            images += 1
    return "".join(texts), images


def _content_tokens(content: Any) -> int:
    text, images = _text_and_images(content)
    tokens = count_tokens(text) + IMAGE_TOKENS * images
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                tokens += _content_tokens(block.get("content"))
            elif block.get("type") == "tool_use":
                tokens += count_tokens(str(block.get("name", "")) + _encode(block.get("input", {})).decode())
    return tokens


def _read_conversation(messages: list[Any], ask: Ask) -> None:
    last = messages[-1]
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            ask.tool_result, _ = _text_and_images(results[-1].get("content"))
    for message in reversed(messages):
        if message.get("role") == "user":
            text, _ = _text_and_images(message.get("content"))
            if text or ask.tool_result is None:
                ask.last_user_text = text
                return


def _read_tools(data: dict[str, Any], ask: Ask) -> None:
    tools = data.get("tools")
    if isinstance(tools, list):
        ask.tools = [
            ToolSpec(t["name"], t.get("input_schema") if isinstance(t.get("input_schema"), dict) else None)
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ]
    choice = data.get("tool_choice")
    if not isinstance(choice, dict):
        ask.tool_mode = "auto" if ask.tools else "none"
        return
    ask.tool_mode = _MODES.get(str(choice.get("type")), "auto")
    if choice.get("type") == "tool":
        ask.tool_name = str(choice.get("name") or "")
    ask.parallel_tools = not choice.get("disable_parallel_tool_use", False)


def _read_output_format(data: dict[str, Any], ask: Ask) -> None:
    """Structured outputs: `output_config.format` (GA) or the older `output_format`."""
    config = data.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict):
        fmt = data.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        ask.json_mode = True
        schema = fmt.get("schema")
        ask.json_schema = schema if isinstance(schema, dict) else None
