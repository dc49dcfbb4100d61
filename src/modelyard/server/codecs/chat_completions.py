"""OpenAI Chat Completions (`POST /v1/chat/completions`): the canonical wire, so decoding is validation and
encoding is adding `usage.cost` (and the explanation when asked)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from modelyard.providers.base import new_id
from modelyard.routing.executor import Chunk, StreamResult, Success
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ProviderError
from modelyard.server.codecs.base import NO_HEADERS, Inbound
from modelyard.server.http import Headers, Request
from modelyard.server.validation import decode_body, validate_chat

if TYPE_CHECKING:
    from modelyard.routing.attempts import AttemptRecord
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode
_DONE = b"data: [DONE]\n\n"


class ChatCompletions:
    """The `openai-chat` codec (stateless; one instance serves every request)."""

    wire: ClassVar[str] = "openai-chat"
    semantic_cache: ClassVar[bool] = True

    async def decode(self, body: bytes, request: Request, ctx: RequestContext) -> Inbound:
        raw = decode_body(body)
        return Inbound(validate_chat(raw), raw)

    def headers(self, ctx: RequestContext) -> Headers:
        return NO_HEADERS

    def answer(self, inbound: Inbound, success: Success, ctx: RequestContext) -> bytes:
        completion = success.completion
        if completion.native is not None:
            return completion.native
        body = completion.body
        usage = body.get("usage")
        if isinstance(usage, dict):
            usage["cost"] = round(success.cost_usd, 10)
        if ctx.explain is not None:
            body["modelyard"] = {"explain": ctx.explain, "attempts": [record_dict(r) for r in success.records]}
        return _encode(body)

    def stream(self, inbound: Inbound, result: StreamResult) -> ChatStream:
        return ChatStream(inbound.req.wants_usage_in_stream, result)

    def commit(self, inbound: Inbound, ctx: RequestContext) -> None:
        return None

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return body


class ChatStream:
    """SSE `data:` lines, one per chunk; the tail is the priced usage chunk (when asked for) and `[DONE]`."""

    __slots__ = ("_last", "_result", "_usage")

    def __init__(self, wants_usage: bool, result: StreamResult) -> None:
        self._usage = wants_usage
        self._result = result
        self._last: dict[str, Any] | None = None  # for the id, created and model of the usage chunk

    def start(self) -> bytes:
        return b""

    def batch(self, chunks: list[Chunk]) -> bytes:
        last = chunks[-1]
        if isinstance(last, dict):
            self._last = last
        return b"".join([b"data: " + _encode(chunk) + b"\n\n" for chunk in chunks])

    def finish(self, usage: Usage, cost: float) -> bytes:
        if not self._usage:
            return _DONE
        last = self._last or {}
        priced = usage.to_openai()
        priced["cost"] = round(cost, 10)
        final: dict[str, Any] = {
            "id": last.get("id") or new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": last.get("created") or int(time.time()),
            "model": last.get("model") or self._result.model,
            "choices": [],
            "usage": priced,
        }
        return b"data: " + _encode(final) + b"\n\n" + _DONE

    def error(self, error: ProviderError) -> bytes:
        return b"data: " + _encode(error.to_body()) + b"\n\n"


def cached_answer(body: dict[str, Any]) -> bytes:
    """A semantic-cache hit: the earlier answer with a new id and time, at no cost (nothing was called)."""
    answer = {**body, "id": new_id("chatcmpl-"), "created": int(time.time())}
    answer["usage"] = {**(body.get("usage") or {}), "cost": 0.0}
    return _encode(answer)


def record_dict(record: AttemptRecord) -> dict[str, Any]:
    """One attempt for the explained answer body."""
    return {
        "deployment": record.deployment,
        "provider": record.provider,
        "outcome": record.outcome,
        "latency_ms": round(record.latency_ms, 1),
        "status": record.status,
        "hedge": record.hedge,
        "cost_usd": round(record.cost_usd, 10),
    }
