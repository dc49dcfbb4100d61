"""Anthropic Messages (`POST /v1/messages`), so the official `anthropic` SDK and Claude Code work against
the gateway.

The body is translated into the canonical shape (server/anthropic_translate.py) and kept as the client sent
it for native pass-through: an attempt at a deployment whose adapter speaks `anthropic-messages` sends the
client's body (only `model` rewritten) and the client gets the provider's bytes back; any other attempt is
translated there and back (a Message object, or the Messages event sequence).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from modelyard.providers.sse import encode_event
from modelyard.routing.executor import Chunk, NativeBody, StreamResult, Success, as_dict
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ProviderError
from modelyard.server.anthropic_translate import (
    KIND_ERROR_TYPES,
    ChunksToAnthropicEvents,
    anthropic_error_body,
    chat_completion_to_message,
    messages_request_to_chat,
    wants_thinking,
)
from modelyard.server.codecs.base import Inbound, StreamEncoder
from modelyard.server.http import Headers, Request
from modelyard.server.validation import decode_body, validate_chat

if TYPE_CHECKING:
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode

WIRE = "anthropic-messages"
#: Client headers forwarded on pass-through (the API version, and the betas the request relies on).
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")


class Messages:
    """The `anthropic-messages` codec (stateless; `Inbound.state` holds the request's `thinking` flag)."""

    wire: ClassVar[str] = WIRE
    semantic_cache: ClassVar[bool] = False  # the semantic cache serves /v1/chat/completions only

    async def decode(self, body: bytes, request: Request, ctx: RequestContext) -> Inbound:
        native = decode_body(body)
        raw = messages_request_to_chat(native)
        req = validate_chat(raw)
        headers = {}
        for name in FORWARDED_HEADERS:
            value = request.header(name)
            if value is not None:
                headers[name.decode()] = value
        return Inbound(req, raw, NativeBody(WIRE, native, headers), wants_thinking(native))

    def headers(self, ctx: RequestContext) -> Headers:
        """The anthropic SDK reads `request-id` (`_request_id`, error messages): the gateway's request id."""
        return [(b"request-id", ctx.request_id.encode())]

    def answer(self, inbound: Inbound, success: Success, ctx: RequestContext) -> bytes:
        completion = success.completion
        if completion.native is not None:
            return completion.native
        return _encode(chat_completion_to_message(completion.body, completion.model, thinking=bool(inbound.state)))

    def stream(self, inbound: Inbound, result: StreamResult) -> StreamEncoder:
        if result.native is not None:
            return NativeEvents()
        prompt = inbound.features.prompt_tokens if inbound.features is not None else 0
        return TranslatedEvents(ChunksToAnthropicEvents(result.model, thinking=bool(inbound.state)), prompt)

    def commit(self, inbound: Inbound, ctx: RequestContext) -> None:
        return None

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """Anthropic's error shape, so the anthropic SDK raises its own typed errors."""
        error = body.get("error")
        message = str(error.get("message") or "error") if isinstance(error, dict) else "error"
        return anthropic_error_body(status, message)


class TranslatedEvents:
    """The Messages event sequence built from canonical chunks; `message_stop` is the last byte."""

    __slots__ = ("_events", "_prompt")

    def __init__(self, events: ChunksToAnthropicEvents, prompt_tokens: int) -> None:
        self._events = events
        self._prompt = prompt_tokens

    def start(self) -> bytes:
        return b"".join(self._events.start(Usage(prompt=self._prompt)))

    def batch(self, chunks: list[Chunk]) -> bytes:
        feed = self._events.feed
        return b"".join([event for chunk in chunks for event in feed(as_dict(chunk))])

    def finish(self, usage: Usage, cost: float) -> bytes:
        return b"".join(self._events.finish(usage))

    def error(self, error: ProviderError) -> bytes:
        return self._events.error(KIND_ERROR_TYPES.get(error.kind, "api_error"), error.message)


class NativeEvents:
    """The provider's own events, already framed by its adapter: passed on byte for byte."""

    __slots__ = ()

    def start(self) -> bytes:
        return b""

    def batch(self, chunks: list[Chunk]) -> bytes:
        return b"".join(chunks)  # type: ignore[arg-type]  # msgspec.Raw is a bytes-like buffer

    def finish(self, usage: Usage, cost: float) -> bytes:
        return b""  # message_stop came from the provider, in the held last batch

    def error(self, error: ProviderError) -> bytes:
        kind = KIND_ERROR_TYPES.get(error.kind, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": error.message}}
        return encode_event(_encode(body), "error")
