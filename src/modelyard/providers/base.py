"""The adapter contract: one pure translator per wire format, no I/O.

An adapter turns a canonical request into an `HttpCall`, and a provider's answer (body, SSE events,
error status) back into the canonical OpenAI shape or a typed `ProviderError`. The transport
(`providers.transport`) owns sockets and timeouts, so every adapter can be table-tested without a network.

The contract (`Adapter`) is six methods, `name` and `options_type`; it is all an adapter outside the
package must implement (`provider: mypkg.adapters:MyAdapter`, docs/adapters.md). What comes later is
optional: small `Capability` protocols below (native pass-through, token counting, stream framing other
than SSE, credential refresh, non-chat endpoints) that an adapter may implement and the pipeline finds with
`discover()`, once per adapter, so new features extend the contract without breaking an adapter that has
none of them.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec

from modelyard.config.model import Deployment
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Usage
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import CLIENT_ACTIONABLE, GENERIC_MESSAGES, ErrorKind, ProviderError

__all__ = [
    "Adapter",
    "Capabilities",
    "Completion",
    "CredentialRefresh",
    "Endpoints",
    "HttpCall",
    "NativePassthrough",
    "SSEEvent",
    "StreamDecoder",
    "StreamFraming",
    "StreamStamp",
    "StreamTranslator",
    "TokenCounter",
    "decode_event",
    "decode_object",
    "discover",
    "embeddings_answer",
    "kind_from_status",
    "mentions_context_length",
    "new_id",
    "parse_retry_after",
    "redact",
    "upstream_error",
    "with_model",
]


@dataclass(slots=True)
class HttpCall:
    """One HTTP request to a provider, fully built. Headers hold credentials: never log them."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class SSEEvent(msgspec.Struct, gc=False):
    """One server-sent event: the `event:` name (None when absent) and the joined `data:` payload. A msgspec
    struct: built in C (0.07 µs against a slotted dataclass's 0.19), and a stream makes one per event."""

    data: bytes
    event: str | None = None


@dataclass(slots=True)
class Completion:
    """A finished non-streaming answer in the canonical shape, with its usage for accounting."""

    body: dict[str, Any]
    usage: Usage
    model: str
    #: The provider's own bytes when the answer came through native pass-through (sent to the client as is),
    #: or a non-JSON answer of a non-chat endpoint (speech audio), sent with `media_type`.
    native: bytes | None = None
    #: The content type of `native` when it is not JSON (`audio/mpeg`); None: JSON.
    media_type: str | None = None


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
    """A wire format. Stateless: one instance serves every deployment of its provider.

    `dep.options` is an instance of `options_type` (converted when the Deployment was built; a typo in the
    YAML is a `file:line` error at load), so methods read it by attribute. Methods are pure: no I/O, no
    clock they depend on, errors as `ProviderError` (answers) or `GatewayError` (a request this wire format
    cannot express, a 400).
    """

    #: A short name for logs and messages (`openai`); the config names the adapter by `provider:`.
    name: ClassVar[str]
    #: The msgspec Struct of this adapter's `options:` (kw_only, forbid_unknown_fields, typed fields).
    options_type: ClassVar[type[msgspec.Struct]]

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        """The HTTP request for a chat completion (`raw`: the caller's JSON, for vendor extras)."""
        ...

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        """A 2xx body as a canonical chat completion with its usage; ProviderError when malformed."""
        ...

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> StreamTranslator:
        """A fresh translator for one streamed answer (the transport frames SSE events for it)."""
        ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """A non-2xx answer as a typed ProviderError (its kind drives retry and failover)."""
        ...

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        """The HTTP request for embeddings; a wire format without them raises GatewayError (400)."""
        ...

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        """A 2xx embeddings body in the canonical (OpenAI) shape."""
        ...


# ----------------------------------------------------------------------------- optional capabilities
#
# Each is a small protocol an adapter may implement besides the contract. The executor asks
# `discover(adapter)` once per adapter (at start, not per request) and takes the generic path when a
# capability is absent.


@runtime_checkable
class NativePassthrough(Protocol):
    """Forwards a request already in this adapter's own wire format (e.g. `/v1/messages` to Anthropic)
    without the round trip through the canonical shape; the answer goes back as the provider sent it.

    The executor takes this path for an attempt when the request carries the client's own body in a format
    of `native_formats` (discovered once per adapter at start); any other attempt of the same request (a
    failover to another wire) is translated as usual.
    """

    #: The wire formats it accepts as is, e.g. frozenset({"anthropic-messages"}).
    native_formats: ClassVar[frozenset[str]]

    def native_call(
        self,
        dep: Deployment,
        fmt: str,
        body: dict[str, Any],
        stream: bool,
        headers: Mapping[str, str],
        *,
        raw: bytes = b"",
    ) -> HttpCall:
        """The HTTP request: `body` is the client's JSON (the adapter sets `model` to `dep.model`), `raw` the
        bytes the client sent (`with_model` splices the model into them, so the upstream gets the client's
        bytes), `headers` the client headers the gateway let through (`anthropic-beta`, `anthropic-version`)."""
        ...

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        """A 2xx native body: `Completion(body=<decoded, for bookkeeping>, usage, model, native=body)`; the
        bytes go to the client unchanged."""
        ...

    def native_stream(self, dep: Deployment, fmt: str) -> StreamTranslator:
        """A translator whose `feed` returns each event re-framed as `msgspec.Raw(b"event: NAME\\ndata:
        DATA\\n\\n")`, tracks usage, model and `done`, raises ProviderError on an in-stream error event,
        and has `answered: bool` (substance seen: until then a failure still fails over invisibly)."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """Counts a request's prompt tokens with the provider's own tokenizer endpoint (exact, not estimated)."""

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall: ...

    def parse_count_tokens(self, dep: Deployment, body: bytes) -> int: ...


class StreamDecoder(Protocol):
    """Frames a streamed body into events (what `providers.sse.SSEParser` does for SSE)."""

    def feed(self, data: bytes) -> list[SSEEvent]: ...

    def flush(self) -> list[SSEEvent]: ...


@runtime_checkable
class StreamFraming(Protocol):
    """A stream framed otherwise than as server-sent events (NDJSON, AWS event-stream): the transport uses
    this decoder instead of SSE, and the adapter's StreamTranslator receives the same `SSEEvent`s."""

    def stream_decoder(self, dep: Deployment) -> StreamDecoder: ...


@runtime_checkable
class CredentialRefresh(Protocol):
    """Short-lived credentials (OAuth tokens, signed requests): the one capability that may do I/O and keep
    state. The executor awaits `authorize` for every attempt, after the adapter built the call and before it
    is sent, inside the attempt (a failure to get a credential is that attempt's ProviderError(auth), and
    the walk fails over)."""

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        """`call` with a valid credential on it: a bearer token refreshed (and cached by the adapter) before
        it expires, or a signature over the method, URL, headers and body (SigV4). Blocking credential
        chains run on a worker thread, never on the event loop."""
        ...

    def credentials_rejected(self, dep: Deployment) -> None:
        """The provider refused the credential (an AUTH error): drop it so the next call refreshes."""
        ...


@runtime_checkable
class Endpoints(Protocol):
    """Endpoints beyond chat and embeddings (schema/endpoints.py: audio, images, rerank), named like OpenAI's
    paths. The executor calls them for deployments whose `kind` serves the endpoint."""

    #: What it serves, e.g. frozenset({"images/generations", "audio/transcriptions"}).
    endpoints: ClassVar[frozenset[str]]

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        """The provider's request (JSON, or multipart for an upload); GatewayError (400) for a field this
        provider cannot take."""
        ...

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        """A 2xx answer as the client's shape (`body`; or `native` bytes + `media_type` for audio) with its
        usage: the provider's own units when it reports them, else `req.units`."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one adapter can do beyond the contract: each field the adapter itself, typed, or None."""

    native: NativePassthrough | None = None
    count_tokens: TokenCounter | None = None
    framing: StreamFraming | None = None
    credentials: CredentialRefresh | None = None
    endpoints: Endpoints | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The capabilities present, for logs and `modelyard check`."""
        return tuple(name for name in self.__slots__ if getattr(self, name) is not None)


def discover(adapter: object) -> Capabilities:
    """The optional capabilities `adapter` implements (by their members, as `runtime_checkable` checks them).

    Called once per adapter when the pipeline is built, never per request; an adapter with none is fine.
    """
    return Capabilities(
        native=adapter if isinstance(adapter, NativePassthrough) else None,
        count_tokens=adapter if isinstance(adapter, TokenCounter) else None,
        framing=adapter if isinstance(adapter, StreamFraming) else None,
        credentials=adapter if isinstance(adapter, CredentialRefresh) else None,
        endpoints=adapter if isinstance(adapter, Endpoints) else None,
    )


_decode_json = msgspec.json.Decoder().decode


def decode_object(body: bytes) -> dict[str, Any]:
    """A provider's JSON object answer body; anything else is a malformed answer (a server-side failure, so
    the executor fails over)."""
    try:
        data = _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ProviderError(ErrorKind.SERVER, "malformed response body (not JSON)") from None
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.SERVER, "malformed response body (not an object)")
    return data


def embeddings_answer(items: list[dict[str, Any]], model: str, prompt_tokens: int) -> Completion:
    """Embedding vectors as OpenAI's list object (what every embeddings adapter answers with), billed by the
    prompt tokens."""
    body = {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return Completion(body, Usage(prompt=prompt_tokens), model)


def decode_event(data: bytes, *, after_first_byte: bool = False) -> dict[str, Any]:
    """One stream event's JSON object; anything else is a malformed stream (a server-side failure: before the
    first byte reached the client it fails over, after it the stream ends with an error event)."""
    try:
        payload = _decode_json(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ProviderError(
            ErrorKind.SERVER, "malformed stream event (not JSON)", after_first_byte=after_first_byte
        ) from None
    if not isinstance(payload, dict):
        raise ProviderError(
            ErrorKind.SERVER, "malformed stream event (not an object)", after_first_byte=after_first_byte
        )
    return payload


def with_model(raw: bytes, body: Mapping[str, Any], model: str) -> bytes | None:
    """The client's own bytes with only the top-level `model` value replaced by `model`, or None when that
    value cannot be found exactly once as the client wrote it (a nested object with the same `"model"` pair,
    an escaped spelling): the caller then re-encodes the decoded body. Byte-faithful pass-through: the
    upstream sees the client's whitespace, escapes and number spellings, not ours."""
    value = body.get("model")
    if not raw or not isinstance(value, str):
        return None
    spelled = msgspec.json.encode(value)
    found = re.findall(rb'"model"\s*:\s*' + re.escape(spelled), raw)
    if len(found) != 1:
        return None
    start = raw.find(found[0])
    end = start + len(found[0])
    return raw[: end - len(spelled)] + msgspec.json.encode(model) + raw[end:]


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
