"""ConverseStream: the AWS event-stream framing and its events as canonical chat.completion.chunk dicts.

The body is `application/vnd.amazon.eventstream`: binary messages (prelude, headers, payload, CRC32s),
decoded by botocore's `EventStreamBuffer` (which checks both checksums). An event message becomes an
`SSEEvent(data=<JSON payload>, event=<:event-type>)`; an exception message (`:message-type: exception`,
e.g. a `throttlingException` mid-stream) or an error message is a ProviderError, raised after the events
that arrived before it in the same read have been handed on.

Events: messageStart, then per content block contentBlockStart (tool use only), contentBlockDelta (text,
toolUse input fragments, reasoningContent), contentBlockStop; messageStop carries the stop reason and the
`metadata` event after it the usage, so the stream is done only once metadata arrived.
"""

from __future__ import annotations

from typing import Any

import msgspec

try:
    from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
except ImportError as exc:  # the `aws` extra
    raise ImportError("Bedrock deployments need botocore: pip install 'modelyard[aws]'") from exc

from modelyard.providers.base import SSEEvent, StreamStamp, decode_event, new_id
from modelyard.providers.bedrock_parse import UNUSABLE, error_from_exception, finish_reason, usage_from
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class EventStreamDecoder:
    """AWS event-stream bytes → SSEEvents (the StreamDecoder the transport feeds), via botocore."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._pending: ProviderError | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._raise_pending()
        self._buffer.add_data(data)
        events: list[SSEEvent] = []
        try:
            for message in self._buffer:
                error = _exception(message)
                if error is not None:
                    if not events:
                        raise error
                    self._pending = error  # hand on what came before it first
                    break
                events.append(_event(message))
        except ParserError as exc:
            raise ProviderError(ErrorKind.SERVER, f"malformed event stream: {type(exc).__name__}") from None
        return events

    def flush(self) -> list[SSEEvent]:
        self._raise_pending()
        return []  # a partial message left in the buffer is a cut stream: the translator's finish says so

    def _raise_pending(self) -> None:
        error, self._pending = self._pending, None
        if error is not None:
            raise error


def _header(message: EventStreamMessage, name: str) -> str:
    value = message.headers.get(name)
    return value if isinstance(value, str) else ""


def _exception(message: EventStreamMessage) -> ProviderError | None:
    kind = _header(message, ":message-type")
    if kind == "exception":
        return error_from_exception(_header(message, ":exception-type") or "exception", bytes(message.payload))
    if kind == "error":
        code = _header(message, ":error-code") or "error"
        text = _header(message, ":error-message") or code
        return error_from_exception(code, _encode({"message": text}))
    return None


def _event(message: EventStreamMessage) -> SSEEvent:
    return SSEEvent(data=bytes(message.payload), event=_header(message, ":event-type") or None)


class BedrockStreamTranslator:
    """ConverseStream events → canonical chunks; usage kept in `self.usage`, never emitted."""

    def __init__(self, stamp: StreamStamp, json_tool: str | None = None) -> None:
        self.stamp = stamp
        self.usage = Usage()
        self.model = stamp.model
        #: The forced JSON tool (JSON mode emulation): its input deltas are the answer's content.
        self._json_tool = json_tool
        self._stopped = False
        self._done = False
        self._emitted = False
        self._started = False
        self._tool_count = 0
        #: Converse block index → ("tool", call index) or ("json", -1); text blocks need no entry.
        self._blocks: dict[int, tuple[str, int]] = {}

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data.strip():
            return []
        data = decode_event(event.data, after_first_byte=self._emitted)
        kind = event.event
        if kind == "contentBlockDelta":  # the hot path first
            return self._on_delta(data)
        if kind == "contentBlockStart":
            return self._on_start(data)
        if kind == "messageStart":
            return self._role()
        if kind == "messageStop":
            return self._on_stop(data)
        if kind == "metadata":
            self.usage = usage_from(data.get("usage"))
            self._done = self._stopped
        return []  # contentBlockStop, and event types added after this was written

    def finish(self) -> list[dict[str, Any]]:
        if not self._stopped:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before messageStop", after_first_byte=True)
        return []  # metadata missing: the answer is whole, only its usage is unknown (estimated upstream)

    # ------------------------------------------------------------------ events

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, *, content: bool = True) -> dict[str, Any]:
        self._emitted = self._emitted or content
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        return {
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def _role(self) -> list[dict[str, Any]]:
        # The role chunk carries no content, so an error right after it still allows a clean retry.
        return [] if self._started else [self._chunk({"content": ""}, content=False)]

    def _on_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        use = (data.get("start") or {}).get("toolUse")
        if not isinstance(use, dict):
            return []
        index = int(data.get("contentBlockIndex") or 0)
        if self._json_tool is not None and use.get("name") == self._json_tool:
            self._blocks[index] = ("json", -1)
            return []
        call_index = self._tool_count
        self._tool_count += 1
        self._blocks[index] = ("tool", call_index)
        call = {
            "index": call_index,
            "id": str(use.get("toolUseId") or new_id("tooluse_")),
            "type": "function",
            "function": {"name": str(use.get("name") or ""), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _on_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        text = delta.get("text")
        if isinstance(text, str):
            # With the JSON tool forced, text is preamble around the answer: only the tool's input is content.
            return [self._chunk({"content": text})] if text and self._json_tool is None else []
        use = delta.get("toolUse")
        if isinstance(use, dict):
            fragment = str(use.get("input") or "")
            known = self._blocks.get(int(data.get("contentBlockIndex") or 0))
            if not fragment or known is None:
                return []
            kind, call_index = known
            if kind == "json":
                return [self._chunk({"content": fragment})]
            return [self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str) and reasoning["text"]:
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []  # signatures, redacted reasoning and citations: nothing in the OpenAI shape carries them

    def _on_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._stopped = True
        reason = data.get("stopReason")
        if reason in UNUSABLE and not self._emitted:
            raise ProviderError(ErrorKind.SERVER, f"Bedrock produced no usable output ({reason})")
        finish = finish_reason(reason) or "stop"
        if finish == "tool_calls" and self._tool_count == 0:
            finish = "stop"  # the forced JSON tool: its input was the answer
        return [self._chunk({}, finish)]


__all__ = ["BedrockStreamTranslator", "EventStreamDecoder"]
