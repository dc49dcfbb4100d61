"""The adapter protocol: one pure translator per wire format, no I/O.

An adapter turns a canonical request into an `HttpCall`, and a provider's answer (body, SSE events,
error status) back into the canonical OpenAI shape or a typed `ProviderError`. The transport
(`providers.transport`) owns sockets and timeouts, so every adapter can be table-tested without a network.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import msgspec

from modelyard.config.model import Deployment
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.errors import CLIENT_ACTIONABLE, GENERIC_MESSAGES, ErrorKind, ProviderError


@dataclass(slots=True)
class HttpCall:
    """One HTTP request to a provider, fully built. Headers hold credentials: never log them."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event: the `event:` name (None when absent) and the joined `data:` payload."""

    data: bytes
    event: str | None = None


@dataclass(slots=True)
class Completion:
    """A finished non-streaming answer in the canonical shape, with its usage for accounting."""

    body: dict[str, Any]
    usage: Usage
    model: str


@dataclass(slots=True)
class StreamStamp:
    """What a translator stamps on every chunk it builds (ids and times the client sees)."""

    id: str = field(default_factory=lambda: new_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))
    model: str = ""


class StreamTranslator(Protocol):
    """Turns a provider's SSE events into canonical chunk dicts, keeping whatever state it needs."""

    usage: Usage
    #: The model name the provider reported (updated as events arrive).
    model: str

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        """Chunks for this event (dicts, or `msgspec.Raw` canonical JSON passed through as it came);
        raises ProviderError for an in-stream error event."""
        ...

    def finish(self) -> list[dict[str, Any]]:
        """Chunks owed at a clean end of the byte stream; raises ProviderError if the stream was cut."""
        ...

    @property
    def done(self) -> bool:
        """True once the provider's own end-of-stream marker was seen."""
        ...


class Adapter(Protocol):
    """A wire format. Stateless: one instance serves every deployment of its provider."""

    name: ClassVar[str]

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall: ...

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion: ...

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> StreamTranslator: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError: ...

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall: ...

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion: ...


#: Ids are unique per process by a counter and across processes by a random prefix drawn at start:
#: no system call per id (os.urandom costs one), and no two requests of any replica share an id.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta-seconds); None when absent or unparsable."""
    value = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


def kind_from_status(status: int) -> ErrorKind:
    """The default classification of an HTTP status, refined by each adapter from the error body."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if status == 413:
        return ErrorKind.CONTEXT_LENGTH
    if status >= 500:
        return ErrorKind.SERVER
    return ErrorKind.BAD_REQUEST


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "input is too long",
    "exceeds the maximum number of tokens",
)


def mentions_context_length(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _CONTEXT_MARKERS)


def upstream_error(
    kind: ErrorKind,
    where: str,
    text: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    after_first_byte: bool = False,
) -> ProviderError:
    """A ProviderError carrying a provider's own error text (`where`: e.g. "provider answered 400").

    The text is masked (ProviderError does that); a client sees it only when it can act on it (a bad
    request, context length, content filter). Otherwise (our key refused, the provider's 5xx, overload, its
    rate limits on our account) the client gets a generic message and the text stays in `detail` for logs.
    """
    detail = f"{where}: {text}"
    message = detail if kind in CLIENT_ACTIONABLE else f"{where}: {GENERIC_MESSAGES.get(kind, 'provider error')}"
    return ProviderError(
        kind, message, status=status, retry_after=retry_after, after_first_byte=after_first_byte, detail=detail
    )


def redact(text: str, *secrets: str | None) -> str:
    """Remove credentials from text that may reach a client or a log."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text
