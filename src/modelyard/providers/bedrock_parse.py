"""Bedrock answers in the canonical shape: Converse bodies, usage, stop reasons and errors.

Usage: Converse's `inputTokens` leaves out the prompt tokens read from or written to the prompt cache
(`cacheReadInputTokens`, `cacheWriteInputTokens`), so the prompt count is rebuilt as OpenAI counts it
(input + cache read + cache write), as for Anthropic. Errors: the exception's name is in the
`x-amzn-ErrorType` header (`ThrottlingException:http://internal.amazon.com/...`), or `__type`/`code` in the
body; the text in the body's `message` (`Message` for some).
"""

from __future__ import annotations

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

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}
#: Stop reasons for output the model botched: a retry (or another candidate) usually does better.
UNUSABLE = frozenset({"malformed_model_output", "malformed_tool_use"})

#: Exception names (lower case, as headers and stream events spell them differently) → kind.
_KINDS: dict[str, ErrorKind] = {
    "throttlingexception": ErrorKind.RATE_LIMITED,
    "servicequotaexceededexception": ErrorKind.RATE_LIMITED,
    "modelnotreadyexception": ErrorKind.OVERLOADED,
    "serviceunavailableexception": ErrorKind.OVERLOADED,
    "serviceunavailable": ErrorKind.OVERLOADED,
    "validationexception": ErrorKind.BAD_REQUEST,
    "resourcenotfoundexception": ErrorKind.BAD_REQUEST,
    "accessdeniedexception": ErrorKind.AUTH,
    "unrecognizedclientexception": ErrorKind.AUTH,
    "invalidsignatureexception": ErrorKind.AUTH,
    "expiredtokenexception": ErrorKind.AUTH,
    "incompletesignatureexception": ErrorKind.AUTH,
    "missingauthenticationtokenexception": ErrorKind.AUTH,
    "modeltimeoutexception": ErrorKind.TIMEOUT,
    "internalserverexception": ErrorKind.SERVER,
    "modelerrorexception": ErrorKind.SERVER,
    "modelstreamerrorexception": ErrorKind.SERVER,
}
_CONTEXT_MARKERS = ("too many input tokens", "exceed context limit", "exceeds the context", "input length")


def finish_reason(stop_reason: Any) -> str | None:
    """Converse `stopReason` → OpenAI `finish_reason` (unknown reasons: `stop`)."""
    if not stop_reason:
        return None
    return _FINISH.get(str(stop_reason), "stop")


def usage_from(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    cached = token_count(usage.get("cacheReadInputTokens"))
    written = token_count(usage.get("cacheWriteInputTokens"))
    return Usage(
        prompt=token_count(usage.get("inputTokens")) + cached + written,
        completion=token_count(usage.get("outputTokens")),
        cached=cached,
        cache_write=written,
    )


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """A `toolUse` block as an OpenAI tool call (arguments as a JSON string)."""
    return {
        "id": str(block.get("toolUseId") or new_id("tooluse_")),
        "type": "function",
        "function": {"name": str(block.get("name") or ""), "arguments": _encode(block.get("input") or {}).decode()},
    }


def parse_converse(body: bytes, model: str, json_tool: str | None) -> Completion:
    """A Converse answer as a chat completion; `json_tool`: the forced tool whose input is the answer."""
    data = decode_object(body)
    message = (data.get("output") or {}).get("message")
    if not isinstance(message, dict):
        raise ProviderError(ErrorKind.SERVER, "malformed Converse response: no output.message")
    reason = data.get("stopReason")
    text: list[str] = []
    answer: str | None = None  # the forced JSON tool's input: the whole content (any preamble dropped)
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            if json_tool is not None and use.get("name") == json_tool:
                answer = _encode(use.get("input") or {}).decode()
            else:
                calls.append(tool_call(use))
        elif isinstance(block.get("reasoningContent"), dict):
            thought = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(thought, str):
                reasoning.append(thought)
    if answer is not None:
        text = [answer]
    if reason in UNUSABLE and not text and not calls:
        raise ProviderError(ErrorKind.SERVER, f"Bedrock produced no usable output ({reason})")
    finish = finish_reason(reason) or "stop"
    if finish == "tool_calls" and not calls:
        finish = "stop"  # the forced JSON tool: its input is the answer
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    usage = usage_from(data.get("usage"))
    completion = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": out, "finish_reason": finish, "logprobs": None}],
        "usage": usage.to_openai(),
    }
    return Completion(completion, usage, model)


# ----------------------------------------------------------------------------- errors


def classify(status: int, error_type: str, message: str) -> ErrorKind:
    """A Bedrock error (HTTP status, exception name, message) → kind."""
    name = error_type.split(":", 1)[0].strip().lower()
    kind = _KINDS.get(name)
    if kind is ErrorKind.BAD_REQUEST or (kind is None and status in (0, 400, 413)):
        lowered = message.lower()
        if mentions_context_length(message) or any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ErrorKind.CONTEXT_LENGTH
    if kind is not None:
        return kind
    if status == 424:  # ModelErrorException's status without its name
        return ErrorKind.SERVER
    return kind_from_status(status) if status else ErrorKind.SERVER


def _error_body(body: bytes) -> dict[str, Any]:
    try:
        data = _decode(body) if body.strip() else {}
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {"message": body[:200].decode("utf-8", "replace").strip()}
    return data if isinstance(data, dict) else {}


def error_message(data: dict[str, Any]) -> str:
    return str(data.get("message") or data.get("Message") or "").strip()


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx answer → ProviderError (the adapter's `error`)."""
    data = _error_body(body)
    error_type = _header(headers, "x-amzn-errortype") or str(data.get("__type") or data.get("code") or "")
    error_type = error_type.rsplit("#", 1)[-1]  # `__type` may be namespaced: `com.amazon...#ThrottlingException`
    text = error_message(data) or f"HTTP {status}"
    kind = classify(status, error_type, text)
    name = error_type.split(":", 1)[0]
    where = f"provider answered {status}" + (f" ({name})" if name else "")
    return upstream_error(kind, where, text, status=status, retry_after=parse_retry_after(headers))


def error_from_exception(error_type: str, payload: bytes) -> ProviderError:
    """An exception message inside an event stream (`:exception-type` header, JSON payload)."""
    text = error_message(_error_body(payload)) or error_type
    kind = classify(0, error_type, text)
    return upstream_error(kind, f"provider stream exception ({error_type})", text)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, found in headers.items():
            if key.lower() == name:
                return found
        return ""
    return value


__all__ = [
    "UNUSABLE",
    "classify",
    "error_from_exception",
    "error_from_response",
    "finish_reason",
    "parse_converse",
    "tool_call",
    "usage_from",
]
