"""Anthropic streaming, translated: Messages stream events → canonical chat.completion.chunk dicts.

Anthropic streams typed events (message_start, content_block_*, message_delta, message_stop) instead of
chunks; thinking deltas become `reasoning_content`, and each block's signature rides a `thinking_blocks`
delta (the extension the canonical message carries). The native pass-through relays events as they come
instead (providers/anthropic_native.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.providers.anthropic_parse import error_from_event, finish_reason, usage_from
from modelyard.providers.base import SSEEvent, StreamStamp, decode_event, new_id
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class AnthropicStreamTranslator:
    """Anthropic stream events → canonical chunks; usage kept in `self.usage`, never emitted."""

    def __init__(self, stamp: StreamStamp) -> None:
        self.stamp = stamp
        self.usage = Usage()
        self.model = stamp.model
        self._done = False
        self._emitted = False
        self._tool_count = 0
        #: Anthropic block index → ("text" | "thinking" | "tool", tool-call index or -1); others ignored.
        self._blocks: dict[int, tuple[str, int]] = {}

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data.strip():
            return []
        data = decode_event(event.data, after_first_byte=self._emitted)
        kind = data.get("type") or event.event
        if kind == "content_block_delta":  # the hot path first
            return self._on_delta(data)
        if kind == "content_block_start":
            return self._on_block_start(data)
        if kind == "message_start":
            return self._on_message_start(data)
        if kind == "message_delta":
            return self._on_message_delta(data)
        if kind == "message_stop":
            self._done = True
        elif kind == "error":
            raise error_from_event(data, after_first_byte=self._emitted)
        return []  # content_block_stop, ping, and event types added after this was written

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before message_stop", after_first_byte=True)
        return []

    # ------------------------------------------------------------------ events

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, *, content: bool = True) -> dict[str, Any]:
        self._emitted = self._emitted or content
        return {
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def _on_message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = data.get("message") or {}
        if message.get("model"):
            self.model = str(message["model"])
        if message.get("id"):
            self.stamp.id = str(message["id"])
        self.usage = usage_from(message.get("usage"), self.usage)
        # The role chunk carries no content, so an error right after it still allows a clean retry.
        return [self._chunk({"role": "assistant", "content": ""}, content=False)]

    def _on_block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = int(data.get("index", 0))
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = ("text", -1)
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if kind == "thinking":
            self._blocks[index] = ("thinking", -1)
            return [self._chunk({"reasoning_content": block["thinking"]})] if block.get("thinking") else []
        if kind == "redacted_thinking" and block.get("data"):
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": str(block["data"])}]})]
        if kind != "tool_use":
            return []  # server_tool_use and server tool results stay at Anthropic
        call_index = self._tool_count
        self._tool_count += 1
        self._blocks[index] = ("tool", call_index)
        call = {
            "index": call_index,
            "id": block.get("id") or new_id("toolu_"),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        chunks = [self._chunk({"tool_calls": [call]})]
        if block.get("input"):  # the input normally streams as input_json_delta; keep one given up front
            chunks.append(self._args_chunk(call_index, _encode(block["input"]).decode()))
        return chunks

    def _args_chunk(self, call_index: int, fragment: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})

    def _on_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        known = self._blocks.get(int(data.get("index", 0)))
        delta = data.get("delta") or {}
        if known is None:
            return []
        kind, call_index = known
        dtype = delta.get("type")
        if dtype == "text_delta" and kind == "text":
            text = delta.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if dtype == "input_json_delta" and kind == "tool":
            fragment = delta.get("partial_json") or ""
            return [self._args_chunk(call_index, fragment)] if fragment else []
        if dtype == "thinking_delta" and kind == "thinking":
            thinking = delta.get("thinking") or ""
            return [self._chunk({"reasoning_content": thinking})] if thinking else []
        if dtype == "signature_delta" and kind == "thinking" and delta.get("signature"):
            # The signature closes the thinking block streamed so far (the `thinking_blocks` extension).
            block = {"type": "thinking", "thinking": "", "signature": str(delta["signature"])}
            return [self._chunk({"thinking_blocks": [block]})]
        return []  # citations_delta: nothing in the OpenAI shape carries it

    def _on_message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.usage = usage_from(data.get("usage"), self.usage)  # cumulative counts: overwrite
        delta = data.get("delta") or {}
        reason = finish_reason(delta.get("stop_reason"))
        if reason is None:
            return []
        chunk = self._chunk({}, reason)
        if delta.get("stop_reason") == "stop_sequence" and delta.get("stop_sequence"):
            chunk["choices"][0]["stop_sequence"] = delta["stop_sequence"]
        return [chunk]


__all__ = ["AnthropicStreamTranslator"]
