"""Anthropic streaming, translated: Messages stream events → canonical chat.completion.chunk dicts.

Anthropic streams typed events (message_start, content_block_*, message_delta, message_stop) instead of
chunks; thinking deltas become `reasoning_content`, and each block's signature rides a `thinking_blocks`
delta (the extension the canonical message carries). The native pass-through relays events as they come
instead (providers/anthropic_native.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from modelyard.providers.anthropic_parse import error_from_event, finish_reason, usage_from
from modelyard.providers.base import SSEEvent, StreamStamp, decode_event, new_id
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
#: What a translator hands out: chunk dicts, or a text delta's chunk as encoded bytes (`_TextDeltas`).
Chunk = dict[str, Any] | msgspec.Raw
_TEXT_DELTA = b'"text_delta","text":"'
#: How a text delta event ends: its text is the last member of `delta`, and `delta` the last of the event (so
#: no member after the string, such as a repeated "text" that a decoder would keep instead, can go unseen:
#: the string runs from the learned head to these bytes and holds no quote).
_TEXT_END = b'"}}'
_CONTENT = b'"content":"'
#: What a JSON string's bytes may not hold for the encoder to write them back unchanged: a quote, a backslash
#: (an escape, which the encoder may write another way) or a control character (which it escapes).
_NOT_VERBATIM = re.compile(rb'["\\\x00-\x1f]')


class _TextDeltas:
    """The plain text deltas of one text block, recognised by their bytes: the same bytes before a text string
    that holds no quote, backslash or control character (valid UTF-8) and ends the event are that block's
    next delta, and its chunk is the template of an empty content chunk with those bytes spliced in. That is
    byte for byte what decoding the event and encoding its chunk writes (msgspec escapes nothing else),
    without the decode, the dicts and the encode."""

    __slots__ = ("head", "prefix", "suffix")

    def __init__(self, head: bytes, prefix: bytes, suffix: bytes) -> None:
        self.head = head
        self.prefix = prefix
        self.suffix = suffix

    @classmethod
    def learn(cls, data: bytes, empty_chunk: Callable[[], bytes]) -> _TextDeltas | None:
        """The shape of the text delta `data` (its bytes up to the text), whose chunks are `empty_chunk()` with
        the text in its content; None if the text member is not where this shape expects it."""
        start = data.find(_TEXT_DELTA)
        template = empty_chunk()
        at = template.rfind(_CONTENT + b'"')
        if start < 0 or at < 0:
            return None
        cut = at + len(_CONTENT)
        return cls(data[: start + len(_TEXT_DELTA)], template[:cut], template[cut:])

    def chunk(self, data: bytes) -> msgspec.Raw | None:
        """The chunk of a text delta of this shape, or None (anything else: decoded as usual)."""
        head = self.head
        start = len(head)
        close = len(data) - len(_TEXT_END)
        if (
            close <= start  # too short for this shape, or an empty string (which emits nothing)
            or not data.startswith(head)
            or not data.endswith(_TEXT_END)
            or _NOT_VERBATIM.search(data, start, close) is not None  # also: no quote before the last
        ):
            return None
        text = data[start:close]
        if not text.isascii():
            try:
                text.decode()
            except UnicodeDecodeError:
                return None  # the decoder refuses it: the usual path raises the stream's error
        return msgspec.Raw(self.prefix + text + self.suffix)


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
        #: The latest text block's deltas, once one of them was decoded (`_TextDeltas`).
        self._text: _TextDeltas | None = None

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[Chunk]:
        text = self._text
        if text is not None:
            raw = text.chunk(event.data)
            if raw is not None:
                return [raw]
        if not event.data.strip():
            return []
        data = decode_event(event.data, after_first_byte=self._emitted)
        kind = data.get("type") or event.event
        if kind == "content_block_delta":  # the hot path first
            chunks = self._on_delta(data)
            # A new text block's first decoded delta teaches its shape (a delta of the learned block that had
            # to be decoded, an escape in it, is not looked at again).
            if chunks and (text is None or not event.data.startswith(text.head)) and self._is_text_delta(data):
                self._text = _TextDeltas.learn(event.data, self._empty_chunk) or text
            return chunks
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

    def _empty_chunk(self) -> bytes:
        return _encode(self._chunk({"content": ""}, content=False))

    def _is_text_delta(self, data: dict[str, Any]) -> bool:
        delta = data.get("delta") or {}
        known = self._blocks.get(int(data.get("index", 0)))
        return delta.get("type") == "text_delta" and known is not None and known[0] == "text"

    def _on_message_start(self, data: dict[str, Any]) -> list[Chunk]:
        self._text = None  # its chunks carry this message's id and model
        message = data.get("message") or {}
        if message.get("model"):
            self.model = str(message["model"])
        if message.get("id"):
            self.stamp.id = str(message["id"])
        self.usage = usage_from(message.get("usage"), self.usage)
        # The role chunk carries no content, so an error right after it still allows a clean retry.
        return [self._chunk({"role": "assistant", "content": ""}, content=False)]

    def _on_block_start(self, data: dict[str, Any]) -> list[Chunk]:
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
        chunks: list[Chunk] = [self._chunk({"tool_calls": [call]})]
        if block.get("input"):  # the input normally streams as input_json_delta; keep one given up front
            chunks.append(self._args_chunk(call_index, _encode(block["input"]).decode()))
        return chunks

    def _args_chunk(self, call_index: int, fragment: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})

    def _on_delta(self, data: dict[str, Any]) -> list[Chunk]:
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

    def _on_message_delta(self, data: dict[str, Any]) -> list[Chunk]:
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
