"""The canonical request/response shape: OpenAI Chat Completions.

Requests are decoded once into these msgspec Structs (validated, typed, fast) for routing and for the
adapters that translate to other wire formats. The raw JSON dict is kept beside the Struct so that
OpenAI-compatible egress can pass fields we do not model (vendor extras such as vLLM's `top_k`) through
untouched. Responses and stream chunks are plain dicts in the OpenAI shape, built by adapters and encoded
straight to the client.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Struct

from modelyard.schema.constraints import Constraints
from modelyard.schema.guardrails import CheckSpec

# --------------------------------------------------------------------------- content parts


class ImageURL(Struct, kw_only=True, omit_defaults=True):
    url: str
    detail: str | None = None


class InputAudio(Struct, kw_only=True):
    data: str
    format: str


class FileRef(Struct, kw_only=True, omit_defaults=True):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class TextPart(Struct, tag_field="type", tag="text", kw_only=True):
    text: str


class ImagePart(Struct, tag_field="type", tag="image_url", kw_only=True):
    image_url: ImageURL


class AudioPart(Struct, tag_field="type", tag="input_audio", kw_only=True):
    input_audio: InputAudio


class FilePart(Struct, tag_field="type", tag="file", kw_only=True):
    file: FileRef


class RefusalPart(Struct, tag_field="type", tag="refusal", kw_only=True):
    refusal: str


ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart
Content = str | list[ContentPart]

# --------------------------------------------------------------------------- tools


class FunctionDef(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Struct, tag_field="type", tag="function", kw_only=True):
    function: FunctionDef


class CustomToolDef(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(Struct, tag_field="type", tag="custom", kw_only=True):
    custom: CustomToolDef


Tool = FunctionTool | CustomTool


class FunctionCall(Struct, kw_only=True):
    name: str
    arguments: str


class ToolCall(Struct, tag_field="type", tag="function", kw_only=True):
    id: str
    function: FunctionCall


class NamedFunction(Struct, kw_only=True):
    name: str


class ToolChoiceFunction(Struct, tag_field="type", tag="function", kw_only=True):
    function: NamedFunction


class ToolChoiceCustom(Struct, tag_field="type", tag="custom", kw_only=True):
    custom: NamedFunction


class AllowedTools(Struct, kw_only=True):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class ToolChoiceAllowed(Struct, tag_field="type", tag="allowed_tools", kw_only=True):
    allowed_tools: AllowedTools


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceCustom | ToolChoiceAllowed

# --------------------------------------------------------------------------- messages


class SystemMessage(Struct, tag_field="role", tag="system", kw_only=True, omit_defaults=True):
    content: Content
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer", kw_only=True, omit_defaults=True):
    content: Content
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user", kw_only=True, omit_defaults=True):
    content: Content
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant", kw_only=True, omit_defaults=True):
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    name: str | None = None
    reasoning_content: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool", kw_only=True, omit_defaults=True):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage

# --------------------------------------------------------------------------- request


class JsonSchemaFormat(Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormatText(Struct, tag_field="type", tag="text", kw_only=True):
    pass


class ResponseFormatJsonObject(Struct, tag_field="type", tag="json_object", kw_only=True):
    pass


class ResponseFormatJsonSchema(Struct, tag_field="type", tag="json_schema", kw_only=True):
    json_schema: JsonSchemaFormat


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema


class StreamOptions(Struct, kw_only=True, omit_defaults=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ModelyardOptions(Struct, kw_only=True, omit_defaults=True):
    """Per-request routing overrides (`extra_body={"modelyard": {...}}`); stripped before egress."""

    strategy: str | None = None
    candidates: list[str] | None = None
    #: Checked when the request is decoded: known names, finite numbers in range (400 with `param` otherwise).
    constraints: Constraints | None = None
    fallbacks: list[str] | None = None
    task: str | None = None
    tags: list[str] | None = None
    explain: bool | None = None
    #: Checks this request adds (built-in ones only: `REQUEST_ALLOWED`); it cannot remove configured ones.
    guardrails: Annotated[list[CheckSpec], msgspec.Meta(max_length=32)] | None = None
    #: The request's priority class (`queue.classes`), capped by its key's `max_priority`.
    priority: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    #: Use the exact-match response cache for this request even if it is not deterministic (true), or not at
    #: all (false); only where the model's cache is enabled.
    cache: bool | None = None


#: Client numbers are checked when a request is decoded (msgspec refuses NaN and ±inf against these bounds):
#: OpenAI's documented ranges, and caps far above any model's that keep counters and estimates finite.
MAX_OUTPUT_TOKENS = 10_000_000
MAX_N = 128
OutputTokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_OUTPUT_TOKENS)]  # 0: Anthropic's cache pre-warm
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class ChatRequest(Struct, kw_only=True, omit_defaults=True):
    """The fields of an OpenAI chat request that modelyard reads or translates."""

    model: str
    messages: list[Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: OutputTokens | None = None
    max_completion_tokens: OutputTokens | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_N)] | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning_effort: str | None = None
    modelyard: ModelyardOptions | None = None

    @property
    def output_limit(self) -> int | None:
        """The caller's cap on generated tokens, whichever field carried it."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class EmbeddingRequest(Struct, kw_only=True, omit_defaults=True):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65_536)] | None = None
    user: str | None = None


# --------------------------------------------------------------------------- usage


class Usage(Struct, kw_only=True):
    """Token counts in OpenAI's sense: `prompt` includes cached and cache-write tokens."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    #: Server-side web searches the provider ran and bills per search (Anthropic
    #: `usage.server_tool_use.web_search_requests`), priced by `Price.web_search`.
    web_searches: int = 0
    #: Units of the non-chat endpoints (schema/endpoints.py), priced by `Price.audio_minute`, `characters`,
    #: `image` and `search_unit`: seconds of audio transcribed, characters spoken, images made, rerank search
    #: units (one per query and up to 100 documents, as Cohere bills them).
    audio_seconds: float = 0.0
    characters: int = 0
    images: int = 0
    search_units: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "cache_write_tokens": self.cache_write},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        if not usage:
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        if not isinstance(prompt_details, dict):
            prompt_details = {}
        if not isinstance(completion_details, dict):
            completion_details = {}
        return cls(
            prompt=token_count(usage.get("prompt_tokens")),
            completion=token_count(usage.get("completion_tokens")),
            cached=token_count(prompt_details.get("cached_tokens")),
            cache_write=token_count(prompt_details.get("cache_write_tokens")),
            reasoning=token_count(completion_details.get("reasoning_tokens")),
        )


# --------------------------------------------------------------------------- helpers

#: The most tokens one count of a provider's usage may report (a billion: far above any context window).
MAX_TOKEN_COUNT = 10**9


def token_count(value: Any) -> int:
    """A provider's token count as the gateway believes it: a whole number in [0, MAX_TOKEN_COUNT]; anything
    else (negative, 1e308, NaN, text, a bool) counts 0. A provider's usage is not trusted: a count beyond
    64 bits made every later read of the spend log fail, a negative one a negative cost."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return 0
        value = int(value)
    return value if 0 <= value <= MAX_TOKEN_COUNT else 0


_decoder = msgspec.json.Decoder()
_request_decoder = msgspec.json.Decoder(ChatRequest)
_encoder = msgspec.json.Encoder()


def decode_json(data: bytes) -> Any:
    return _decoder.decode(data)


def encode_json(obj: Any) -> bytes:
    return _encoder.encode(obj)


def chat_request_from_dict(raw: dict[str, Any]) -> ChatRequest:
    """Validate a decoded body; raises msgspec.ValidationError naming the bad path."""
    return msgspec.convert(raw, ChatRequest)


def text_of(content: Content | None) -> str:
    """The text of a message's content, parts joined; images and audio contribute nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))
