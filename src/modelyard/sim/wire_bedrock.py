"""Bedrock wire format: Converse and ConverseStream, as bedrock-runtime writes them.

The model comes from the URL (`/model/{modelId}/converse`), the rest from the body: `messages` (strictly
alternating, opening with a user turn, as Bedrock insists), `system`, `toolConfig`, `inferenceConfig`, and
`outputConfig.textFormat` (structured output). A stream is `application/vnd.amazon.eventstream`: binary
messages each with a prelude (total and headers length, CRC32), string headers (`:event-type`,
`:content-type`, `:message-type`), a JSON payload and a CRC32 of the whole, encoded here by hand (the
gateway decodes them with botocore, an independent implementation). Events: messageStart, per content block
contentBlockStart (tool use only), contentBlockDelta, contentBlockStop, then messageStop and metadata.

Errors are a JSON `{"message": ...}` body; the exception's name goes in the `x-amzn-ErrorType` header
(sim/cloud_bedrock.py adds it from `error_type`).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgspec

from modelyard.sim.behaviour import IMAGE_TOKENS, count_tokens, text_pieces
from modelyard.sim.prompt_cache import prefix_segments
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
_decode = msgspec.json.Decoder().decode

_ARG_FRAGMENT = 12
_STOP_REASON = {"stop": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens", "tool_calls": "tool_use"}
_ERRORS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "ValidationException"),
    "auth": (403, "AccessDeniedException"),
    "not_found": (404, "ResourceNotFoundException"),
    "rate_limit": (429, "ThrottlingException"),
    "server_error": (500, "InternalServerException"),
    "unavailable": (503, "ServiceUnavailableException"),
    "context_length": (400, "ValidationException"),
}
_TYPE_BY_STATUS = {status: name for status, name in _ERRORS.values()}
_MODES: dict[str, ToolMode] = {"auto": "auto", "any": "required", "tool": "required"}
_IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
STREAM_CONTENT_TYPE = b"application/vnd.amazon.eventstream"
_STRING_HEADER = 7


def encode_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC32), string headers, payload, message CRC32."""
    encoded = b"".join(
        struct.pack("!B", len(name.encode()))
        + name.encode()
        + struct.pack("!BH", _STRING_HEADER, len(value.encode()))
        + value.encode()
        for name, value in headers
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    head = prelude + struct.pack("!I", zlib.crc32(prelude))
    body = head + encoded + payload
    return body + struct.pack("!I", zlib.crc32(body))


def event_message(name: str, payload: bytes) -> bytes:
    headers = [(":event-type", name), (":content-type", "application/json"), (":message-type", "event")]
    return encode_message(headers, payload)


def exception_message(name: str, text: str) -> bytes:
    """An in-stream exception (`throttlingException`, ...): what Bedrock sends when a stream fails."""
    headers = [(":exception-type", name), (":content-type", "application/json"), (":message-type", "exception")]
    return encode_message(headers, _encode({"message": text}))


def error_type(status: int) -> str:
    """The `x-amzn-ErrorType` of an error status this wire answers."""
    return _TYPE_BY_STATUS.get(status, "InternalServerException")


class BedrockWire:
    name = "bedrock"
    stream_content_type = STREAM_CONTENT_TYPE
    messages = {
        "bad_request": "{detail}",
        "auth": "You don't have access to the model with the specified model ID.",
        "not_found": "The provided model identifier is invalid: {model}.",
        "rate_limit": "Too many requests, please wait before trying again.",
        "server_error": "The server encountered an internal error while processing the request.",
        "unavailable": "The service is temporarily unable to handle the request.",
        "context_length": "Input is too long for requested model ({prompt} tokens > {limit}).",
    }

    # ------------------------------------------------------------------ requests

    def parse_chat(self, body: bytes, model: str | None) -> Ask:
        data = decode_object(body)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("The model returned the following errors: messages: at least one message is required")
        ask = Ask(model=model or "", prompt_tokens=0)
        ask.system_text = _system_text(data.get("system"))
        prompt = count_tokens(ask.system_text)
        tool_blocks = False
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                raise BadRequest(f"messages.{i}.role: must be 'user' or 'assistant'")
            if role != ("user" if i % 2 == 0 else "assistant"):
                raise BadRequest("A conversation must start with a user message and alternate user/assistant roles.")
            tokens, tools = _content_tokens(message.get("content"), f"messages.{i}.content")
            prompt += tokens
            tool_blocks = tool_blocks or tools
        config = data.get("toolConfig")
        if tool_blocks and not isinstance(config, dict):
            raise BadRequest("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
        _read_conversation(messages, ask)
        _read_tools(config, ask)
        prompt += count_tokens(_encode(config).decode()) if ask.tools else 0
        ask.prompt_tokens = max(1, prompt)
        _read_inference(data.get("inferenceConfig"), ask)
        _read_output(data.get("outputConfig"), ask)
        ask.prefix = cache_prefix(data, messages)
        return ask

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk:
        raise BadRequest("Converse has no embeddings")

    # ------------------------------------------------------------------ answers

    def completion(self, answer: Answer) -> bytes:
        reply = answer.replies[0]
        body = {
            "output": {"message": {"role": "assistant", "content": _blocks(reply, answer.key)}},
            "stopReason": _STOP_REASON[reply.finish],
            "usage": usage(answer),
            "metrics": {"latencyMs": 100},
        }
        return _encode(body)

    def stream(self, answer: Answer) -> StreamPlan:
        reply = answer.replies[0]
        events = [Event(_encode({"role": "assistant", "p": "abcdefghij"}), "messageStart")]
        cut_limit = 0
        if reply.tool_calls:
            for index, call in enumerate(reply.tool_calls):
                start = {"toolUse": {"toolUseId": f"tooluse_{call.key}", "name": call.name}}
                events.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
                args = call.arguments
                for at in range(0, len(args), _ARG_FRAGMENT):
                    fragment = args[at : at + _ARG_FRAGMENT]
                    delta = {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}}
                    events.append(_event("contentBlockDelta", delta, len(fragment) / 4))
                cut_limit = len(events)
                events.append(_event("contentBlockStop", {"contentBlockIndex": index}))
        else:
            for piece in text_pieces(reply.text) or [""]:
                delta = {"contentBlockIndex": 0, "delta": {"text": piece}}
                events.append(_event("contentBlockDelta", delta, len(piece) / 4))
            cut_limit = len(events)
            events.append(_event("contentBlockStop", {"contentBlockIndex": 0}))
        events.append(_event("messageStop", {"stopReason": _STOP_REASON[reply.finish]}))
        events.append(_event("metadata", {"usage": usage(answer), "metrics": {"latencyMs": 100}}))
        return StreamPlan(events, cut_limit)

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]:
        return [event_message(e.name or "unknown", e.data) for e in events]

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes:
        raise BadRequest("Converse has no embeddings")

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]:
        status, _ = _ERRORS[kind]
        return status, _encode({"message": message})


def usage(answer: Answer) -> dict[str, Any]:
    """Converse counts `inputTokens` without the prompt-cache reads and writes (reported beside it)."""
    output = answer.completion_tokens
    out: dict[str, Any] = {
        "inputTokens": max(0, answer.prompt_tokens - answer.cached_tokens - answer.cache_write_tokens),
        "outputTokens": output,
        "totalTokens": answer.prompt_tokens + output,
    }
    if answer.cached_tokens:
        out["cacheReadInputTokens"] = answer.cached_tokens
    if answer.cache_write_tokens:
        out["cacheWriteInputTokens"] = answer.cache_write_tokens
    return out


def cache_prefix(data: dict[str, Any], messages: list[Any]) -> list[bytes]:
    """The prompt Bedrock caches: up to the last `cachePoint` block, nothing without one."""
    head = [data.get("toolConfig"), data.get("system")]
    marked = [i for i, part in enumerate([head, *messages]) if "cachePoint" in _encode(part).decode()]
    if not marked:
        return []
    return prefix_segments(head, messages[: marked[-1]])


def _event(name: str, payload: dict[str, Any], tokens: float = 0.0) -> Event:
    return Event(_encode(payload), name, tokens)


def _blocks(reply: Reply, key: str) -> list[dict[str, Any]]:
    if reply.tool_calls:
        return [
            {"toolUse": {"toolUseId": f"tooluse_{c.key}", "name": c.name, "input": c.args}} for c in reply.tool_calls
        ]
    return [{"text": reply.text}]


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    if not isinstance(system, list):
        raise BadRequest("system: must be a list of content blocks")
    return "\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))


def _content_tokens(content: Any, where: str) -> tuple[int, bool]:
    """(prompt tokens, whether tool blocks are present) of a message's content blocks, checked."""
    if not isinstance(content, list) or not content:
        raise BadRequest(f"{where}: must be a non-empty list of content blocks")
    tokens = 0
    tools = False
    for j, block in enumerate(content):
        if not isinstance(block, dict) or len(block) != 1:
            raise BadRequest(f"{where}.{j}: a content block has exactly one member")
        ((kind, value),) = block.items()
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{where}.{j}.text: blank text blocks are not allowed")
            tokens += count_tokens(value)
        elif kind == "image":
            _check_image(value, f"{where}.{j}.image")
            tokens += IMAGE_TOKENS
        elif kind in ("document", "video", "audio"):
            tokens += IMAGE_TOKENS
        elif kind in ("toolUse", "toolResult"):
            tools = True
            tokens += count_tokens(_encode(value).decode())
        elif kind not in ("cachePoint", "reasoningContent", "guardContent"):
            raise BadRequest(f"{where}.{j}: unknown content block `{kind}`")
    return tokens, tools


def _check_image(image: Any, where: str) -> None:
    if not isinstance(image, dict) or image.get("format") not in _IMAGE_FORMATS:
        raise BadRequest(f"{where}.format: must be one of png, jpeg, gif, webp")
    source = image.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("bytes"), str) or not source["bytes"]:
        raise BadRequest(f"{where}.source.bytes: the image bytes (base64) are required")


def _read_conversation(messages: list[Any], ask: Ask) -> None:
    last = messages[-1].get("content") or []
    results = [b["toolResult"] for b in last if isinstance(b, dict) and isinstance(b.get("toolResult"), dict)]
    if results:
        parts = results[-1].get("content") or []
        texts = [p["text"] if isinstance(p.get("text"), str) else _encode(p.get("json")).decode() for p in parts]
        ask.tool_result = "".join(texts)
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        text = "".join(b["text"] for b in message.get("content") or [] if isinstance(b.get("text"), str))
        if text:
            ask.last_user_text = text
            return


def _read_tools(config: Any, ask: Ask) -> None:
    if not isinstance(config, dict):
        return
    for tool in config.get("tools") or []:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest("toolConfig.tools: each tool needs a toolSpec with a name")
        schema = (spec.get("inputSchema") or {}).get("json")
        if not isinstance(schema, dict):
            raise BadRequest(f"toolConfig.tools.{spec['name']}.inputSchema.json: required")
        ask.tools.append(ToolSpec(spec["name"], schema))
    choice = config.get("toolChoice") or {"auto": {}}
    mode = next(iter(choice), "auto") if isinstance(choice, dict) else "auto"
    if mode not in _MODES:
        raise BadRequest("toolConfig.toolChoice: must be auto, any or tool")
    ask.tool_mode = _MODES[mode]
    if mode == "tool":
        name = (choice["tool"] or {}).get("name")
        if name not in {t.name for t in ask.tools}:
            raise BadRequest("toolConfig.toolChoice.tool.name: names no tool of the request")
        ask.tool_name = name


def _read_inference(config: Any, ask: Ask) -> None:
    if not isinstance(config, dict):
        return
    limit = config.get("maxTokens")
    ask.max_tokens = limit if isinstance(limit, int) and limit > 0 else None
    stop = config.get("stopSequences")
    ask.stop = [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []


def _read_output(config: Any, ask: Ask) -> None:
    text_format = config.get("textFormat") if isinstance(config, dict) else None
    if not isinstance(text_format, dict) or text_format.get("type") != "json_schema":
        return
    schema = ((text_format.get("structure") or {}).get("jsonSchema") or {}).get("schema")
    try:
        decoded = _decode(schema) if isinstance(schema, str) else None
    except msgspec.DecodeError:
        raise BadRequest("outputConfig.textFormat.structure.jsonSchema.schema: not valid JSON") from None
    if not isinstance(decoded, dict):
        raise BadRequest("outputConfig.textFormat.structure.jsonSchema.schema: a JSON Schema string is required")
    ask.json_mode = True
    ask.json_schema = decoded
