"""Anthropic egress, the answer side: Message objects, usage, stop reasons and errors → canonical.

Usage counts input tokens without the cached ones, so the prompt count is rebuilt as OpenAI counts it
(input + cache read + cache write). Thinking blocks keep their `signature` in a `thinking_blocks` extension
on the canonical assistant message (the shape LiteLLM and others use). Errors, whether an HTTP answer or an
`error` event inside a stream, become a ProviderError of the right kind with any API key scrubbed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from modelyard.providers.base import (
    Completion,
    decode_object,
    kind_from_status,
    mentions_context_length,
    new_id,
    parse_retry_after,
    upstream_error,
)
from modelyard.schema.chat import Usage, token_count
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_SECRET = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")

STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic `error.type` → kind; the status decides what is not listed.
_ERROR_TYPES: dict[str, ErrorKind] = {
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.OVERLOADED,
    "api_error": ErrorKind.SERVER,
    "timeout_error": ErrorKind.TIMEOUT,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "request_too_large": ErrorKind.CONTEXT_LENGTH,
    "not_found_error": ErrorKind.BAD_REQUEST,
    "invalid_request_error": ErrorKind.BAD_REQUEST,
}


# --------------------------------------------------------------------------- answers


def usage_from(raw: Any, base: Usage | None = None) -> Usage:
    """Anthropic usage → canonical; fields absent from `raw` keep their value in `base` (stream deltas)."""
    usage = Usage() if base is None else msgspec.structs.replace(base)
    if not isinstance(raw, dict):
        return usage
    fresh = usage.prompt - usage.cached - usage.cache_write
    if raw.get("input_tokens") is not None:
        fresh = token_count(raw["input_tokens"])
    if raw.get("cache_read_input_tokens") is not None:
        usage.cached = token_count(raw["cache_read_input_tokens"])
    if raw.get("cache_creation_input_tokens") is not None:
        usage.cache_write = token_count(raw["cache_creation_input_tokens"])
    usage.prompt = fresh + usage.cached + usage.cache_write
    if raw.get("output_tokens") is not None:
        usage.completion = token_count(raw["output_tokens"])
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        usage.reasoning = token_count(details["thinking_tokens"])
    server = raw.get("server_tool_use")
    if isinstance(server, dict) and isinstance(server.get("web_search_requests"), int):
        usage.web_searches = token_count(server["web_search_requests"])  # billed per search (Price.web_search)
    return usage


def finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return STOP_REASONS.get(str(stop_reason), "stop")


def _message_from_blocks(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    signed: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
            signed.append(
                {"type": "thinking", "thinking": thinking[-1], "signature": str(block.get("signature") or "")}
            )
        elif kind == "redacted_thinking":
            signed.append({"type": "redacted_thinking", "data": str(block.get("data") or "")})
        elif kind == "tool_use":
            arguments = _encode(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id") or new_id("toolu_"),
                    "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": arguments},
                }
            )
        # server_tool_use and *_tool_result ran at Anthropic: nothing for the client.
    text = "".join(texts) if texts else None
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if signed:
        message["thinking_blocks"] = signed  # extension: the signed blocks, for a client that returns them
    return message


def parse_message(data: dict[str, Any], default_model: str) -> Completion:
    """An Anthropic Message object → canonical chat.completion."""
    content = data.get("content")
    if not isinstance(content, list):
        raise ProviderError(ErrorKind.SERVER, "malformed response: no content")
    model = str(data.get("model") or default_model)
    stop_reason = data.get("stop_reason")
    choice: dict[str, Any] = {
        "index": 0,
        "message": _message_from_blocks(content),
        "finish_reason": finish_reason(stop_reason) or "stop",
        "logprobs": None,
    }
    if stop_reason == "stop_sequence" and data.get("stop_sequence"):
        choice["stop_sequence"] = data["stop_sequence"]  # extension: lets /v1/messages report it back
    usage = usage_from(data.get("usage"))
    body = {
        "id": str(data.get("id") or new_id("msg_")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage.to_openai(),
    }
    return Completion(body, usage, model)


# --------------------------------------------------------------------------- errors


def classify(status: int, err_type: str, message: str) -> ErrorKind:
    """Anthropic error → kind: the error type first, then the status; 0 means an in-stream event."""
    kind = _ERROR_TYPES.get(err_type)
    if kind is ErrorKind.BAD_REQUEST or (kind is None and status in (0, 400, 413, 422)):
        lowered = message.lower()
        if mentions_context_length(message) or "context limit" in lowered:
            return ErrorKind.CONTEXT_LENGTH
    if kind is not None:
        return kind
    if status == 0:
        return ErrorKind.SERVER
    return kind_from_status(status)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "", body[:200].decode("utf-8", "replace").strip()
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), str(err.get("message") or "")
    if isinstance(err, str):
        return "", err
    return "", ""


def _scrub(text: str) -> str:
    return _SECRET.sub("[redacted]", text) if "sk-ant-" in text else text


def error_from_event(data: dict[str, Any], after_first_byte: bool) -> ProviderError:
    err = data.get("error")
    if not isinstance(err, dict):
        err = {}
    err_type = str(err.get("type") or "")
    message = _scrub(str(err.get("message") or "error event in stream"))
    return upstream_error(
        classify(0, err_type, message),
        f"provider stream error ({err_type or 'unknown'})",
        message,
        after_first_byte=after_first_byte,
    )


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx HTTP answer → ProviderError (the adapter's `error`)."""
    err_type, message = _error_fields(body)
    message = _scrub(message)
    kind = classify(status, err_type, message)
    text = message or f"HTTP {status}"
    label = f" {err_type}" if err_type else ""
    return upstream_error(
        kind, f"provider answered {status}{label}", text, status=status, retry_after=parse_retry_after(headers)
    )


__all__ = [
    "STOP_REASONS",
    "classify",
    "decode_object",
    "error_from_event",
    "error_from_response",
    "finish_reason",
    "parse_message",
    "usage_from",
]
