"""Canonical answers → the `/v1/messages` ingress's wire: Anthropic Messages, SSE events and errors.

A canonical completion becomes an Anthropic Message (`chat_completion_to_message`) and a canonical chunk
stream Anthropic's typed SSE events (`ChunksToAnthropicEvents`), so that the official `anthropic` SDK works
against the gateway unchanged; errors take Anthropic's envelope, and a pass-through answer gets the model
name the client asked for (`rename_answer_model`). No I/O.

- signed thinking: answers carry the provider's `thinking_blocks`, so a client gets `signature` (and
  `signature_delta` events) back from Anthropic, and `signature: ""` for reasoning another vendor produced.
- `stop_reason: stop_sequence`: reported with the matched sequence when the answer says which one ended it
  (Anthropic's `stop_sequence`, vLLM-style `stop_reason` strings) or when the text still contains one (the
  text is then cut there, as Anthropic would have stopped).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from modelyard.providers.base import new_id
from modelyard.providers.sse import encode_event
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

#: HTTP status → Anthropic `error.type` (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

#: ErrorKind → Anthropic `error.type`, for error events in the middle of a stream.
KIND_ERROR_TYPES: dict[ErrorKind, str] = {
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.CONNECTION: "api_error",
    ErrorKind.SERVER: "api_error",
    ErrorKind.CONTEXT_LENGTH: "invalid_request_error",
    ErrorKind.CONTENT_FILTER: "invalid_request_error",
    ErrorKind.AUTH: "api_error",  # the gateway's provider credentials failed, not the caller's key
    ErrorKind.BAD_REQUEST: "invalid_request_error",
    ErrorKind.GUARDRAIL: "invalid_request_error",  # an answer failed the gateway's guardrails (422)
    ErrorKind.GUARDRAIL_BLOCKED: "invalid_request_error",
}

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --------------------------------------------------------------------------- errors


def anthropic_error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error envelope: `{"type": "error", "error": {"type": ..., "message": ...}}`."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


# --------------------------------------------------------------------------- pass-through answers


def rename_answer_model(native: bytes, upstream: Any, requested: str) -> bytes:
    """A pass-through answer naming the model the client asked for instead of the deployment's model.

    The one change made to the provider's bytes, the mirror of the request's `model` rewrite: Claude Code
    takes an answer naming another model for a model switch and drops its thinking from the next turn
    (which Anthropic then refuses). `native` is a Message body or a `message_start` event, whose first
    `"model":` is the message's own (it comes before any content); left as is when not found.
    """
    if not isinstance(upstream, str) or upstream == requested:
        return native
    new = _encode(requested)
    for sep in (b'"model":', b'"model": '):
        old = sep + _encode(upstream)
        if old in native:
            return native.replace(old, sep + new, 1)
    return native


def rename_event_model(event: bytes, requested: str) -> bytes:
    """`rename_answer_model` for one re-framed `message_start` event (`event: ...\ndata: {...}\n\n`)."""
    at = event.find(b"data: ")
    if at < 0:
        return event
    try:
        data = _decode(event[at + 6 :].strip())
    except (msgspec.DecodeError, UnicodeDecodeError):
        return event
    message = data.get("message") if isinstance(data, dict) else None
    upstream = message.get("model") if isinstance(message, dict) else None
    return rename_answer_model(event, upstream, requested)


# --------------------------------------------------------------------------- answers


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Canonical usage → Anthropic's, whose `input_tokens` excludes cache reads and writes."""
    out: dict[str, Any] = {
        "input_tokens": max(0, usage.prompt - usage.cached - usage.cache_write),
        "output_tokens": usage.completion,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cached,
    }
    if usage.reasoning:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning}
    return out


def stop_reason(finish: Any, stop_sequence: Any = None) -> str:
    if finish == "stop" and isinstance(stop_sequence, str):
        return "stop_sequence"
    return _FINISH_TO_STOP.get(str(finish), "end_turn")


def _message_id(completion_id: Any) -> str:
    if not isinstance(completion_id, str) or not completion_id:
        return new_id("msg_")
    if completion_id.startswith("msg_"):
        return completion_id
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = _decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}  # keep what the model wrote


def matched_stop_sequence(choice: dict[str, Any], stop_sequences: Collection[str] | None) -> str | None:
    """Which of the client's stop sequences ended an answer, when the upstream says so.

    Anthropic reports it (`stop_sequence`, kept on the canonical choice by its adapter); vLLM and others
    put the matched string in `stop_reason`. OpenAI itself says only `stop`, so nothing is claimed then.
    """
    reported = choice.get("stop_sequence")
    if isinstance(reported, str) and reported:
        return reported
    other = choice.get("stop_reason")
    if stop_sequences and isinstance(other, str) and other in stop_sequences:
        return other
    return None


def _cut_at_stop(text: str, stop_sequences: Collection[str] | None) -> tuple[str, str | None]:
    """An answer whose text still holds a stop sequence (the upstream ignored `stop`) is cut there."""
    if not stop_sequences or not text:
        return text, None
    cut, found = len(text), None
    for seq in stop_sequences:
        at = text.find(seq) if seq else -1
        if 0 <= at < cut:
            cut, found = at, seq
    return (text[:cut], found) if found is not None else (text, None)


def _thinking_content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Thinking blocks for an answer: the signed ones when the provider signed them, else the bare
    reasoning text with an empty signature (a client returning it gets it dropped, not refused)."""
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list) and blocks:
        out = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking":
                out.append({"type": "redacted_thinking", "data": str(block.get("data") or "")})
            elif block.get("type") == "thinking":
                text, signature = block.get("thinking") or "", block.get("signature") or ""
                out.append({"type": "thinking", "thinking": str(text), "signature": str(signature)})
        if out:
            return out
    if message.get("reasoning_content"):
        return [{"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}]
    return []


def chat_completion_to_message(
    completion: dict[str, Any],
    model: str,
    *,
    thinking: bool = False,
    stop_sequences: Collection[str] | None = None,
) -> dict[str, Any]:
    """A canonical chat.completion → an Anthropic Message object.

    `stop_sequences`: the client's `stop_sequences`, to report which one ended a non-Anthropic answer."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = _thinking_content(message) if thinking else []
    text = message.get("content") or message.get("refusal")
    stop_sequence = matched_stop_sequence(choice, stop_sequences)
    if text and stop_sequence is None and choice.get("finish_reason") in ("stop", "length"):
        text, stop_sequence = _cut_at_stop(text, stop_sequences)
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        call_id = call.get("id") or new_id("toolu_")
        content.append(
            {"type": "tool_use", "id": call_id, "name": fn.get("name", ""), "input": _tool_input(fn.get("arguments"))}
        )
    finish = "stop" if stop_sequence is not None else choice.get("finish_reason")
    reason = stop_reason(finish, stop_sequence)
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence if reason == "stop_sequence" else None,
        "usage": anthropic_usage(Usage.from_openai(completion.get("usage"))),
    }


# --------------------------------------------------------------------------- streaming


def _event(data: dict[str, Any]) -> bytes:
    return encode_event(_encode(data), data["type"])


class ChunksToAnthropicEvents:
    """Canonical chunks → Anthropic SSE events, one content block at a time, in Anthropic's order."""

    def __init__(
        self,
        model: str,
        message_id: str | None = None,
        *,
        thinking: bool = False,
        stop_sequences: Collection[str] | None = None,
    ) -> None:
        self.model = model
        self.message_id = message_id or new_id("msg_")
        self.thinking = thinking
        self.stop_sequences = stop_sequences
        self._started = False
        self._closed = False
        self._next_index = 0
        self._open: tuple[str, int] | None = None  # (block kind, Anthropic index) of the open block
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index → Anthropic block index
        self._finish: Any = None
        self._stop_sequence: Any = None

    def start(self, usage_hint: Usage | None = None) -> list[bytes]:
        """message_start (with the prompt's usage when known) and a ping."""
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(usage_hint or Usage()),
        }
        return [_event({"type": "message_start", "message": message}), _event({"type": "ping"})]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self._closed:
            return []
        out = self.start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if self.thinking:
                if delta.get("reasoning_content"):
                    out += self._text("thinking", delta["reasoning_content"])
                blocks = delta.get("thinking_blocks")
                if isinstance(blocks, list):
                    out += self._signed(blocks)
            text = delta.get("content") or delta.get("refusal")
            if text:
                out += self._text("text", text)
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._stop_sequence = matched_stop_sequence(choice, self.stop_sequences)
        return out

    def finish(self, usage: Usage) -> list[bytes]:
        """Close the open block, then message_delta (stop reason, final usage) and message_stop."""
        if self._closed:
            return []
        out = self.start() + self._close()
        self._closed = True
        reason = stop_reason(self._finish, self._stop_sequence)
        sequence = self._stop_sequence if reason == "stop_sequence" else None
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(_event({"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}))
        out.append(_event({"type": "message_stop"}))
        return out

    def error(self, kind_type: str, message: str) -> bytes:
        """An `error` event (e.g. overloaded_error) that ends the stream."""
        self._closed = True
        return _event({"type": "error", "error": {"type": kind_type, "message": message}})

    # ------------------------------------------------------------------ blocks

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [_event({"type": "content_block_stop", "index": index})]

    def _begin(self, block: dict[str, Any], kind: str) -> list[bytes]:
        out = self._close()
        index = self._next_index
        self._next_index += 1
        self._open = (kind, index)
        out.append(_event({"type": "content_block_start", "index": index, "content_block": block}))
        return out

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open[0] != kind:
            if kind == "text":
                out = self._begin({"type": "text", "text": ""}, kind)
            else:
                out = self._begin({"type": "thinking", "thinking": "", "signature": ""}, kind)
        index = self._open[1] if self._open else 0
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta", "thinking": text}
        out.append(_event({"type": "content_block_delta", "index": index, "delta": delta}))
        return out

    def _signed(self, blocks: list[Any]) -> list[bytes]:
        """`thinking_blocks` deltas: a signature closes the open thinking block (`signature_delta`); a
        redacted block is a whole block of its own."""
        out: list[bytes] = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking" and block.get("data"):
                out += self._begin({"type": "redacted_thinking", "data": str(block["data"])}, "redacted")
                out += self._close()
            elif block.get("type") == "thinking" and block.get("signature"):
                if self._open is None or self._open[0] != "thinking":
                    out += self._begin({"type": "thinking", "thinking": "", "signature": ""}, "thinking")
                index = self._open[1] if self._open else 0
                delta = {"type": "signature_delta", "signature": str(block["signature"])}
                out.append(_event({"type": "content_block_delta", "index": index, "delta": delta}))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        position = int(call.get("index", 0))
        fn = call.get("function") or {}
        out: list[bytes] = []
        if position not in self._tool_blocks:
            call_id = call.get("id") or new_id("toolu_")
            name = fn.get("name") or ""
            block: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            out = self._begin(block, "tool")
            self._tool_blocks[position] = self._next_index - 1
        arguments = fn.get("arguments")
        if isinstance(arguments, dict):
            arguments = _encode(arguments).decode()
        if arguments:
            # Fragments of an earlier call (interleaved parallel calls) still name that call's block.
            out.append(
                _event(
                    {
                        "type": "content_block_delta",
                        "index": self._tool_blocks[position],
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    }
                )
            )
        return out


__all__ = [
    "ERROR_TYPES",
    "KIND_ERROR_TYPES",
    "ChunksToAnthropicEvents",
    "anthropic_error_body",
    "anthropic_error_type",
    "anthropic_usage",
    "chat_completion_to_message",
    "matched_stop_sequence",
    "rename_answer_model",
    "rename_event_model",
    "stop_reason",
]
