"""Gemini streaming: streamGenerateContent SSE events → canonical chat.completion.chunk dicts.

Each event is a whole GenerateContentResponse fragment and Gemini sends no terminal marker, so the stream is
complete once every candidate seen has a finishReason. Parallel tool calls off: the first function call of
each candidate only (see providers/gemini.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.providers.base import SSEEvent, StreamStamp, decode_event
from modelyard.providers.gemini_parse import (
    UNUSABLE,
    candidate_index,
    error_from_object,
    finish_reason,
    no_candidates,
    split_parts,
    unusable_output,
    usage_from,
)
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode


class GeminiStreamTranslator:
    """Each SSE event is a whole GenerateContentResponse fragment; Gemini sends no terminal marker, so the
    stream is complete once every candidate seen has a finishReason."""

    def __init__(self, stamp: StreamStamp, *, signatures: bool = True, single_call: bool = False) -> None:
        self.stamp = stamp
        #: Parallel tool calls off: the first function call of each candidate only.
        self._single_call = single_call
        self.usage = Usage()
        self.model = stamp.model
        self._signatures = signatures
        self._seen: set[int] = set()
        self._finished: set[int] = set()
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._calls: dict[int, int] = {}  # candidate → tool calls emitted so far
        self._emitted = False

    @property
    def done(self) -> bool:
        return bool(self._finished) and self._seen <= self._finished

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = event.data.strip()
        if not data:
            return []
        obj = decode_event(data, after_first_byte=self._emitted)
        if isinstance(obj.get("error"), dict):
            raise error_from_object(obj["error"], 0, after_first_byte=self._emitted)
        if obj.get("usageMetadata"):
            self.usage = usage_from(obj["usageMetadata"])
        if obj.get("modelVersion"):
            self.model = str(obj["modelVersion"])
        if obj.get("responseId") and not self._emitted:  # the same on every event; ours until then
            self.stamp.id = str(obj["responseId"])
        candidates = obj.get("candidates") or []
        if not candidates and (obj.get("promptFeedback") or {}).get("blockReason"):
            raise no_candidates(obj)
        chunks = []
        for cand in candidates:
            chunk = self._chunk(cand)
            if chunk is not None:
                chunks.append(chunk)
        self._emitted = self._emitted or bool(chunks)
        return chunks

    def _chunk(self, cand: dict[str, Any]) -> dict[str, Any] | None:
        index = candidate_index(cand)
        self._seen.add(index)
        text, thoughts, calls = split_parts((cand.get("content") or {}).get("parts"), self._signatures)
        delta: dict[str, Any] = {}
        if thoughts:
            delta["reasoning_content"] = thoughts
        if text:
            delta["content"] = text
        if calls and self._single_call:
            calls = calls[: max(0, 1 - self._calls.get(index, 0))]
        if calls:
            first = self._calls.get(index, 0)
            delta["tool_calls"] = [{"index": first + k, **call} for k, call in enumerate(calls)]
            self._calls[index] = first + len(calls)
        reason = cand.get("finishReason")
        if reason:
            self._finished.add(index)
            if reason in UNUSABLE and index not in self._started and not delta and not self._emitted:
                raise unusable_output(cand)  # nothing reached the client: a retry is invisible to it
        finish = finish_reason(reason, self._calls.get(index, 0) > 0)
        if not delta and finish is None:
            return None
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **delta}
        return {
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def finish(self) -> list[dict[str, Any]]:
        if not self._finished:
            raise ProviderError(
                ErrorKind.CONNECTION, "stream ended before Gemini sent a finishReason", after_first_byte=True
            )
        return []


__all__ = ["GeminiStreamTranslator"]
