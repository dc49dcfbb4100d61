"""The wire-neutral shapes the simulator works in, and the protocol every wire format implements.

Each wire module reads its provider's request into an `Ask`, the behaviour turns an `Ask` into `Reply`s,
and the wire module writes them back in its own format. The app only ever sees these shapes, so a fault,
a latency or a counter is implemented once for the three formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from modelyard.schema.errors import ModelyardError

ToolMode = Literal["none", "auto", "required"]
Finish = Literal["stop", "length", "stop_sequence", "tool_calls"]
#: What went wrong, in words every wire format maps to its own status and error body.
ErrKind = Literal["bad_request", "auth", "not_found", "rate_limit", "server_error", "unavailable", "context_length"]


class BadRequest(ModelyardError):
    """The request cannot be served as sent; answered 400 in the provider's own error format."""


_decode = msgspec.json.Decoder().decode


def decode_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; BadRequest otherwise."""
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


@dataclass(slots=True)
class ToolSpec:
    name: str
    parameters: dict[str, Any] | None = None


@dataclass(slots=True)
class Ask:
    """What a chat request asks for, whatever wire it came in on."""

    model: str
    prompt_tokens: int
    last_user_text: str = ""
    #: The system (and developer) instructions, joined.
    system_text: str = ""
    #: The content of the conversation's last message when that message is a tool result.
    tool_result: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_mode: ToolMode = "auto"
    tool_name: str | None = None
    parallel_tools: bool = True
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    stream: bool = False
    #: OpenAI `stream_options.include_usage`.
    include_usage: bool = False
    #: Gemini: `alt=sse` (else a stream is one JSON array sent piece by piece).
    sse: bool = True
    #: The request's `seed` (OpenAI chat): answer keys draw right or wrong from (model, prompt, seed).
    seed: int | None = None
    #: The prompt cut for the prompt cache (`sim.prompt_cache.prefix_segments`); None: the app cuts the body.
    prefix: list[bytes] | None = None


@dataclass(slots=True)
class EmbedAsk:
    model: str
    texts: list[str]
    dimensions: int | None = None
    base64: bool = False


@dataclass(slots=True)
class ToolCallOut:
    #: Random hex; each wire adds its own prefix (`call_`, `toolu_`).
    key: str
    name: str
    #: The arguments as a JSON document (OpenAI's `arguments`), and decoded (Anthropic/Gemini objects).
    arguments: str
    args: Any


@dataclass(slots=True)
class Reply:
    """One generated answer (one choice)."""

    text: str
    finish: Finish
    completion_tokens: int
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    stop_sequence: str | None = None
    #: Included in `completion_tokens`, as OpenAI counts them.
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Answer:
    """Everything a wire needs to write a response."""

    ask: Ask
    replies: list[Reply]
    #: Hex id drawn from the request's RNG; wires add their prefix (`chatcmpl-`, `msg_`).
    key: str
    created: int
    prompt_tokens: int
    #: Prompt tokens read from the prompt cache (part of `prompt_tokens`).
    cached_tokens: int = 0
    #: Prompt tokens this request wrote to the prompt cache (Anthropic `cache_creation_input_tokens`).
    cache_write_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.replies)

    @property
    def reasoning_tokens(self) -> int:
        return sum(r.reasoning_tokens for r in self.replies)


@dataclass(slots=True)
class Event:
    """One stream event before framing: its JSON payload, SSE name, and the tokens it carries (pacing)."""

    data: bytes
    name: str | None = None
    tokens: float = 0.0


@dataclass(slots=True)
class StreamPlan:
    events: list[Event]
    #: How many leading events a cut stream may send: everything before the first finishing event.
    cut_limit: int


class Wire(Protocol):
    """One provider's wire format: requests in, responses, streams and errors out. No I/O."""

    name: str
    #: Error message templates by kind, in the provider's words; formatted with `model`, `prompt`,
    #: `limit`, `retry` and `detail`.
    messages: dict[str, str]

    def parse_chat(self, body: bytes, model: str | None) -> Ask: ...

    def parse_embed(self, body: bytes, model: str | None, batch: bool) -> EmbedAsk: ...

    def completion(self, answer: Answer) -> bytes: ...

    def stream(self, answer: Answer) -> StreamPlan: ...

    def frame(self, events: list[Event], ask: Ask, complete: bool) -> list[bytes]: ...

    def embeddings(self, ask: EmbedAsk, vectors: list[list[float]], prompt_tokens: int, batch: bool) -> bytes: ...

    def error(self, kind: ErrKind, message: str, retry_after: float | None = None) -> tuple[int, bytes]: ...
