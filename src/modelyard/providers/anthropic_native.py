"""Anthropic native pass-through: the client's own Messages bodies out, the provider's own bytes back.

For `/v1/messages` to an Anthropic deployment (`NativePassthrough`): the client's body goes out with only
`model` rewritten, and the provider's answer comes back unchanged, parsed only for usage, the model and the
first-byte failover decision. The adapter (providers/anthropic.py) adds the URL and headers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.providers.anthropic_parse import decode_object, error_from_event, usage_from
from modelyard.providers.base import Completion, SSEEvent, decode_event, with_model
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

#: The wire format `/v1/messages` bodies are in (NativePassthrough.native_formats).
NATIVE_FORMAT = "anthropic-messages"


def check_format(fmt: str) -> None:
    """Only Messages bodies pass through this adapter."""
    if fmt != NATIVE_FORMAT:
        raise GatewayError(400, f"the Anthropic adapter does not pass {fmt!r} bodies through")


def native_body(body: dict[str, Any], raw: bytes, model: str, stream: bool) -> bytes:
    """The bytes to send for the client's Messages body, `model` set to `model` (see the adapter's
    `native_call`): the client's own bytes with the value spliced in where that is unambiguous."""
    if bool(body.get("stream")) == stream:
        spliced = with_model(raw, body, model)
        if spliced is not None:
            return spliced
    out = dict(body)
    out["model"] = model
    if stream and out.get("stream") is not True:
        out["stream"] = True
    elif not stream and "stream" in out:
        del out["stream"]
    return _encode(out)


def native_completion(body: bytes, default_model: str) -> Completion:
    """The provider's bytes kept as `native` (sent on unchanged); usage and model read for accounting."""
    data = decode_object(body)
    if data.get("type") == "error":
        raise error_from_event(data, after_first_byte=False)
    if not isinstance(data.get("content"), list):
        raise ProviderError(ErrorKind.SERVER, "malformed response: no content")
    return Completion(data, usage_from(data.get("usage")), str(data.get("model") or default_model), native=body)


class NativeAnthropicStream:
    """Anthropic's own events, re-framed byte for byte (`event: NAME\ndata: DATA\n\n`) as `msgspec.Raw`.

    Parsed only for what the gateway needs: usage (message_start, message_delta), the model, the end
    (message_stop), in-stream errors, and `answered`: a content block with substance was seen. Until then
    the executor may still fail over invisibly (message_start, ping and an empty block opening carry none).
    Content deltas after the first are not decoded at all.
    """

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self.model = model
        self.answered = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        name = event.event
        data = event.data
        if name == "content_block_delta" and self.answered:  # the hot path: no decoding
            return [msgspec.Raw(b"event: content_block_delta\ndata: " + data + b"\n\n")]
        if not data.strip():
            return [msgspec.Raw(_frame(name, data))]
        payload = decode_event(data, after_first_byte=self.answered)
        kind = payload.get("type") or name
        if kind == "error":
            raise error_from_event(payload, after_first_byte=self.answered)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                if message.get("model"):
                    self.model = str(message["model"])
                self.usage = usage_from(message.get("usage"), self.usage)
        elif kind == "message_delta":
            self.usage = usage_from(payload.get("usage"), self.usage)
        elif kind == "message_stop":
            self._done = True
        elif not self.answered and kind in ("content_block_start", "content_block_delta"):
            self.answered = _has_substance(payload)
        return [msgspec.Raw(_frame(name, data))]

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before message_stop", after_first_byte=True)
        return []


def _frame(name: str | None, data: bytes) -> bytes:
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _has_substance(payload: dict[str, Any]) -> bool:
    """A block opening or delta that carries something a client would show or act on."""
    if payload.get("type") == "content_block_start":
        block = payload.get("content_block")
        if not isinstance(block, dict):
            return False
        if block.get("type") in ("text", "thinking"):
            return bool(block.get("text") or block.get("thinking"))
        return True  # tool_use, server_tool_use, redacted_thinking, results: substance from the start
    delta = payload.get("delta")
    if not isinstance(delta, dict):
        return False
    return any(delta.get(k) for k in ("text", "thinking", "partial_json", "signature", "citation"))


__all__ = ["NATIVE_FORMAT", "NativeAnthropicStream", "check_format", "native_body", "native_completion"]
