"""Anthropic Messages (`POST /v1/messages`), so the official `anthropic` SDK and Claude Code work against
the gateway.

The body is translated into the canonical shape (server/anthropic_request.py) and kept as the client sent
it for native pass-through: an attempt at a deployment whose adapter speaks `anthropic-messages` sends the
client's body (only `model` rewritten) and the client gets the provider's bytes back; any other attempt is
translated there and back (a Message object, or the Messages event sequence).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from modelyard.providers.sse import encode_event
from modelyard.routing.executor import Chunk, NativeBody, StreamResult, Success, as_dict
from modelyard.schema.chat import ChatRequest, Usage
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.server.anthropic_answer import (
    KIND_ERROR_TYPES,
    ChunksToAnthropicEvents,
    anthropic_error_body,
    chat_completion_to_message,
    rename_answer_model,
    rename_event_model,
)
from modelyard.server.anthropic_request import (
    allowed_betas,
    check_server_tools,
    messages_request_to_chat,
    passthrough_headers,
    server_tools_allowed,
    wants_thinking,
)
from modelyard.server.codecs.base import Inbound, StreamEncoder
from modelyard.server.http import Headers, Request
from modelyard.server.validation import decode_body, validate_chat

if TYPE_CHECKING:
    from modelyard.server.context import RequestContext

_encode = msgspec.json.Encoder().encode

WIRE = "anthropic-messages"
#: Client headers a pass-through may forward (the API version; the betas on the key's allowlist).
FORWARDED_HEADERS = (b"anthropic-version", b"anthropic-beta")


def read_messages(
    body: bytes, request: Request, ctx: RequestContext, *, counting: bool = False
) -> tuple[dict[str, Any], dict[str, Any], ChatRequest, dict[str, str], bool]:
    """A Messages body as /v1/messages and /v1/messages/count_tokens both read it: (the client's JSON without
    the gateway's `modelyard` options, the canonical raw dict, the validated canonical request, the client headers
    allowed upstream, whether the body carried `modelyard` options). Server tools are
    refused (400 at the tool) unless the operator or the key allows them; only allowlisted `anthropic-beta`
    values are kept (server.anthropic_betas, or the key's own list). `counting`: a count_tokens body, which has
    no `max_tokens` (the translation needs one; the provider must not get it)."""
    native = decode_body(body)
    if not isinstance(native, dict):
        raise GatewayError(400, "request body must be a JSON object")
    key = ctx.key
    settings = ctx.gateway.config.server
    tools_ok = server_tools_allowed(settings.anthropic_server_tools, key.anthropic_server_tools if key else None)
    check_server_tools(native, tools_ok)
    # The gateway's own options (`extra_body={"modelyard": ...}`) never go upstream (Anthropic refuses unknown
    # fields). This ingress takes no routing overrides (it is served inside the key's scope); it does take
    # per-request guardrails, which can only add checks.
    had_options = "modelyard" in native
    options = native.pop("modelyard", None)
    translated = {**native, "max_tokens": 1, "stream": False} if counting else native
    raw = messages_request_to_chat(translated, server_tools=tools_ok)
    if isinstance(options, dict):  # guardrails, and the response cache's switch (`cache: true/false`)
        kept = {name: options[name] for name in ("guardrails", "cache") if name in options}
        if kept:
            raw["modelyard"] = kept
    req = validate_chat(raw)
    client = {name.decode(): value for name in FORWARDED_HEADERS if (value := request.header(name)) is not None}
    betas = allowed_betas(settings.anthropic_betas, key.anthropic_betas if key else None)
    return native, raw, req, passthrough_headers(client, betas), had_options


class Messages:
    """The `anthropic-messages` codec (stateless; `Inbound.state`: the request's `thinking` flag and its
    `stop_sequences`)."""

    wire: ClassVar[str] = WIRE
    semantic_cache: ClassVar[bool] = False  # the semantic cache serves /v1/chat/completions only

    async def decode(self, body: bytes, request: Request, ctx: RequestContext) -> Inbound:
        """The canonical request, and the body as sent for pass-through. Server tools are refused (400 at the
        tool) unless the operator or the key allows them; only allowlisted `anthropic-beta` values are kept
        for the upstream (server.anthropic_betas, or the key's own list)."""
        native, raw, req, headers, options = read_messages(body, request, ctx)
        # The client's bytes go upstream as sent, unless they carried our options: then the body (without them)
        # is encoded again.
        native_body = NativeBody(WIRE, native, headers, b"" if options else body)
        stops = native.get("stop_sequences")  # to report which one ended a non-Anthropic answer
        return Inbound(req, raw, native_body, (wants_thinking(native), stops if isinstance(stops, list) else None))

    def headers(self, ctx: RequestContext) -> Headers:
        """The anthropic SDK reads `request-id` (`_request_id`, error messages): the gateway's request id."""
        return [(b"request-id", ctx.request_id.encode())]

    def answer(self, inbound: Inbound, success: Success, ctx: RequestContext) -> bytes:
        completion = success.completion
        if completion.native is not None:  # the provider's bytes, naming the model the client asked for
            return rename_answer_model(completion.native, completion.body.get("model"), inbound.req.model)
        thinking, stops = inbound.state
        message = chat_completion_to_message(completion.body, completion.model, thinking=thinking, stop_sequences=stops)
        return _encode(message)

    def stream(self, inbound: Inbound, result: StreamResult) -> StreamEncoder:
        if result.native is not None:
            return NativeEvents(inbound.req.model)
        prompt = inbound.features.prompt_tokens if inbound.features is not None else 0
        thinking, stops = inbound.state
        return TranslatedEvents(ChunksToAnthropicEvents(result.model, thinking=thinking, stop_sequences=stops), prompt)

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
    """The provider's own events, already framed by its adapter: passed on byte for byte, but for the model
    `message_start` names (the one the client asked for: `rename_event_model`)."""

    __slots__ = ("_model", "_renamed")

    def __init__(self, model: str) -> None:
        self._model = model
        self._renamed = False

    def start(self) -> bytes:
        return b""

    def batch(self, chunks: list[Chunk]) -> bytes:
        out = b"".join(chunks)  # type: ignore[arg-type]  # msgspec.Raw is a bytes-like buffer
        if not self._renamed and chunks:
            self._renamed = True
            first = bytes(chunks[0])  # type: ignore[arg-type]
            if first.startswith(b"event: message_start"):
                out = rename_event_model(first, self._model) + out[len(first) :]
        return out

    def finish(self, usage: Usage, cost: float) -> bytes:
        return b""  # message_stop came from the provider, in the held last batch

    def error(self, error: ProviderError) -> bytes:
        kind = KIND_ERROR_TYPES.get(error.kind, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": error.message}}
        return encode_event(_encode(body), "error")
