"""The ingress codec: what one wire format (OpenAI chat, Anthropic messages, the Responses API) must say
to run on the gateway's one request pipeline (server/pipeline.py).

A codec turns the client's body into the canonical request (`decode`), and the canonical answer back into
its own wire (`answer`, `stream`), or forwards the upstream's own bytes when the executor took the native
pass-through path (`Completion.native` / `StreamResult.native` say so). Everything else (auth, admission,
routing, retries, the stream pump with its batching, hold-back and disconnect watch, the spend record
before the last byte) is the pipeline's, written once.

Codecs are stateless singletons (one per route); per-request state lives in `Inbound.state`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from modelyard.routing.executor import Chunk, NativeBody, StreamResult, Success
from modelyard.schema.chat import ChatRequest, Usage
from modelyard.schema.errors import ProviderError
from modelyard.server.http import Headers, Request

if TYPE_CHECKING:
    from modelyard.routing.features import RequestFeatures
    from modelyard.server.context import RequestContext

__all__ = ["NO_HEADERS", "Codec", "Inbound", "NativeBody", "StreamEncoder"]

#: Shared empty header list for codecs that add none (never mutate it).
NO_HEADERS: Headers = []


class Inbound:
    """What `Codec.decode` produced for one request."""

    __slots__ = ("features", "native", "raw", "req", "state")

    def __init__(
        self, req: ChatRequest, raw: dict[str, Any], native: NativeBody | None = None, state: Any = None
    ) -> None:
        #: The canonical request, validated.
        self.req = req
        #: The canonical OpenAI-chat raw dict (vendor extras pass through to OpenAI-compatible egress).
        self.raw = raw
        #: The client's own body for pass-through, or None (then every attempt is translated).
        self.native = native
        #: Codec-private (the Anthropic `thinking` flag, the Responses conversation, ...).
        self.state = state
        #: Filled in by the pipeline once computed (the codec's stream encoder may read prompt tokens).
        self.features: RequestFeatures | None = None


class StreamEncoder(Protocol):
    """One streamed answer in the ingress's wire: the pipeline sends what each method returns.

    Chunks are canonical (dicts or `msgspec.Raw` OpenAI chunks) when `StreamResult.native` is None, and
    `msgspec.Raw` upstream events already framed (`event: NAME\\ndata: DATA\\n\\n`) when it names a format.
    """

    def start(self) -> bytes:
        """Bytes before the first batch (b"" for chat; `message_start` for translated Anthropic)."""
        ...

    def batch(self, chunks: list[Chunk]) -> bytes:
        """One network read's worth of chunks, encoded (may be b"": nothing to send yet)."""
        ...

    def finish(self, usage: Usage, cost: float) -> bytes:
        """The tail after the last batch (sent in one write with the held last batch): usage, [DONE]..."""
        ...

    def error(self, error: ProviderError) -> bytes:
        """The error event that ends a stream that broke after its first byte (never a silent clean end)."""
        ...


class Codec(Protocol):
    """One ingress wire format."""

    #: "openai-chat" | "anthropic-messages" | "openai-responses"
    wire: ClassVar[str]
    #: Whether the semantic cache may answer this ingress (only chat: a cached answer is a chat body).
    semantic_cache: ClassVar[bool]

    async def decode(self, body: bytes, request: Request, ctx: RequestContext) -> Inbound:
        """The client's body as a canonical request; GatewayError (4xx with `param`) when it is bad. May
        await (a store lookup for `previous_response_id`)."""
        ...

    def headers(self, ctx: RequestContext) -> Headers:
        """Headers this ingress adds to every answer, JSON or stream (`request-id` on /v1/messages);
        NO_HEADERS when none."""
        ...

    def answer(self, inbound: Inbound, success: Success, ctx: RequestContext) -> bytes:
        """The JSON answer body: the canonical completion in this wire, or, when
        `success.completion.native` is not None, those bytes unchanged."""
        ...

    def stream(self, inbound: Inbound, result: StreamResult) -> StreamEncoder:
        """A fresh encoder for one streamed answer (`result.native` tells canonical from native events)."""
        ...

    def commit(self, inbound: Inbound, ctx: RequestContext) -> Awaitable[None] | None:
        """Work due before the answer's last byte, after `answer` / `StreamEncoder.finish` built it (the
        Responses API stores the response so a `previous_response_id` right after finds it). None when
        there is none (no coroutine made on the hot path)."""
        ...

    def error_body(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI-shaped error body (`{"error": {...}}`) in this ingress's own error shape."""
        ...
