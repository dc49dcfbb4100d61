"""Gemini API egress (Google AI Studio, `generativelanguage.googleapis.com`): generateContent and embeddings.

Requests are rebuilt from the canonical Struct (Gemini's shape differs too much to pass the caller's JSON
through): system messages become `systemInstruction`, turns alternate `user`/`model`, tool results become
`functionResponse` parts named after the call they answer, and sampling knobs move to `generationConfig`.
Schemas go out as `parametersJsonSchema`/`responseJsonSchema`, the fields that take real JSON Schema, so
OpenAI-style schemas (`additionalProperties`, `$defs`/`$ref`, `anyOf`) need no lossy rewriting.

Thought signatures: Gemini 3 rejects a replayed `functionCall` that lacks the signature it was issued with.
OpenAI clients only echo a tool call's id, so the signature travels inside it
(`call_<24 hex>_ts_<url-safe base64>`); history that never came from Gemini (another provider, a failover)
gets Google's documented placeholder signature instead. `options: {thought_signatures: false}` turns both
off.

Finish reasons the model uses for unusable output (MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL,
MALFORMED_RESPONSE) become a retryable ProviderError(server) when no candidate produced anything: an empty
answer is useless to the client and a second attempt usually succeeds. A candidate with usable output keeps
it and finishes with "stop".

`parallel_tool_calls: false` (and Anthropic's `disable_parallel_tool_use`, which arrives as it): Gemini's
`functionCallingConfig` has only `mode` and `allowedFunctionNames`, no switch for parallel calls, so the
adapter keeps the first function call of each candidate and drops the others, in answers and in streams
(the first call carries Gemini 3's thought signature, so the replayed turn stays valid).

The work is split by job: answers, usage, errors and the thought-signature codec (providers/gemini_parse.py)
and the stream translator (gemini_stream.py); this module holds the adapter, its options, and the requests it
builds.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from modelyard.config.model import Deployment
from modelyard.config.providers import ProviderOptions
from modelyard.providers.base import Completion, HttpCall, StreamStamp, embeddings_answer
from modelyard.providers.data_url import parse_data_url
from modelyard.providers.gemini_audio import GeminiAudioEndpoints
from modelyard.providers.gemini_parse import (
    classify,
    decode_object,
    error_from_response,
    finish_reason,
    parse_response,
    retry_delay,
    signature_from_id,
    split_parts,
    tool_call_id,
    usage_from,
)
from modelyard.providers.gemini_stream import GeminiStreamTranslator
from modelyard.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatRequest,
    Content,
    DeveloperMessage,
    EmbeddingRequest,
    FilePart,
    FunctionTool,
    ImagePart,
    RefusalPart,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    SystemMessage,
    TextPart,
    ToolChoiceAllowed,
    ToolChoiceFunction,
    ToolMessage,
    UserMessage,
    text_of,
)
from modelyard.schema.errors import ErrorKind, ProviderError, bad_request

DEFAULT_BASE = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"
#: Google's documented placeholder for function calls Gemini did not issue itself (foreign history).
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
    "bmp": "image/bmp",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "md": "text/markdown",
    "csv": "text/csv",
    "html": "text/html",
    "json": "application/json",
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "aiff": "audio/aiff",
    "mp4": "video/mp4",
    "mov": "video/mov",
    "webm": "video/webm",
    "mpeg": "video/mpeg",
}
_AUDIO_MIME = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "aiff": "audio/aiff",
    "pcm16": "audio/pcm",
    "opus": "audio/ogg",
}

_TOOL_MODES = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
#: reasoning_effort → Gemini 3 `thinkingLevel`: every Gemini 3 model takes "low" and "high", not all take
#: the others, so those two are the portable choice.
_THINKING_LEVEL = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high"}
#: reasoning_effort → Gemini 2.x `thinkingBudget` (tokens), the values Google's OpenAI layer documents.
_THINKING_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}


# ============================================================================ the adapter


class GeminiOptions(ProviderOptions, kw_only=True, forbid_unknown_fields=True):
    """`options:` of a Gemini deployment; the mappings are Gemini's own JSON, sent as given."""

    #: The API version in the URL when `api_base` does not name one (`v1`, `v1beta`).
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v\d+\w*$")] = DEFAULT_API_VERSION
    #: Carry thought signatures inside tool-call ids and sign foreign history (see the module docstring).
    thought_signatures: bool = True
    #: `taskType` of embedding requests (`RETRIEVAL_QUERY`, `SEMANTIC_SIMILARITY`, ...).
    task_type: Annotated[str, msgspec.Meta(pattern=r"^[A-Z_]+$")] | None = None
    #: `safetySettings` of every chat request (`[{category: ..., threshold: ...}]`).
    safety_settings: list[dict[str, Any]] | None = None
    #: `cachedContent`: the name of a context cache (`cachedContents/...`).
    cached_content: str | None = None
    #: Merged last into `generationConfig` (wins over what the request sets).
    generation_config: dict[str, Any] | None = None
    #: `thinkingConfig` as given, instead of the one derived from `reasoning_effort`.
    thinking_config: dict[str, Any] | None = None
    #: `includeThoughts`; unset: on when the request asks for reasoning.
    include_thoughts: bool | None = None


class GeminiAdapter(GeminiAudioEndpoints):
    """The Gemini API wire format (`models/{model}:generateContent`, `:streamGenerateContent`, embeddings);
    audio transcription and translation through generateContent (providers/gemini_audio.py)."""

    name: ClassVar[str] = "gemini"
    options_type: ClassVar[type[GeminiOptions]] = GeminiOptions

    # ------------------------------------------------------------------ requests

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        body = build_request(dep, req, raw)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return HttpCall("POST", f"{_model_url(dep)}:{method}", _headers(dep), _encode(body))

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        opts: GeminiOptions = dep.options
        model = _model_path(dep.model)
        entries = []
        for text in _embedding_texts(req):
            entry: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if req.dimensions is not None:
                entry["outputDimensionality"] = req.dimensions
            if opts.task_type:
                entry["taskType"] = opts.task_type
            entries.append(entry)
        return HttpCall("POST", f"{_model_url(dep)}:batchEmbedContents", _headers(dep), _encode({"requests": entries}))

    # ------------------------------------------------------------------ answers

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        return parse_response(body, dep.model, _signatures_on(dep), req.parallel_tool_calls is False)

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        data = decode_object(body)
        vectors = data.get("embeddings")
        if vectors is None and isinstance(data.get("embedding"), dict):  # :embedContent's single answer
            vectors = [data["embedding"]]
        if not isinstance(vectors, list):
            raise ProviderError(ErrorKind.SERVER, "malformed embeddings response: no embeddings")
        as_base64 = req.encoding_format == "base64"
        items = []
        for index, vector in enumerate(vectors):
            values = [float(v) for v in (vector or {}).get("values") or []]
            embedding: Any = _float32_base64(values) if as_base64 else values
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        reported = (data.get("usageMetadata") or {}).get("promptTokenCount")
        prompt = int(reported) if reported else sum(len(text) // 4 for text in _embedding_texts(req))
        return embeddings_answer(items, dep.model, prompt)

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(
            StreamStamp(model=dep.model), signatures=_signatures_on(dep), single_call=req.parallel_tool_calls is False
        )

    # ------------------------------------------------------------------ errors

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return error_from_response(status, headers, body)


# ============================================================================ URLs and headers


def _headers(dep: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if dep.api_key:
        headers["x-goog-api-key"] = dep.api_key
    if dep.headers:
        headers.update(dep.headers)
    return headers


def _model_path(model: str) -> str:
    """`models/{id}`; names that already carry a collection (`models/...`, `tunedModels/...`) are kept."""
    return model if "/" in model else f"models/{model}"


def _model_url(dep: Deployment) -> str:
    opts: GeminiOptions = dep.options
    base = (dep.api_base or DEFAULT_BASE).rstrip("/")
    last = base.rsplit("/", 1)[-1]
    if not (last.startswith("v") and last[1:2].isdigit()):  # api_base may already name the version
        base = f"{base}/{opts.api_version}"
    return f"{base}/{_model_path(dep.model)}"


def _signatures_on(dep: Deployment) -> bool:
    opts: GeminiOptions = dep.options
    return opts.thought_signatures


# ============================================================================ request: messages


def build_request(dep: Deployment, req: ChatRequest, raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The generateContent body for a canonical request (also what the simulator and tests inspect)."""
    contents, system = _contents(req, _signatures_on(dep))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    declarations = _declarations(req)
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
    tool_config = _tool_config(req)
    if tool_config:
        body["toolConfig"] = tool_config
    config = _generation_config(dep, req, raw or {})
    if config:
        body["generationConfig"] = config
    opts: GeminiOptions = dep.options
    if opts.safety_settings:
        body["safetySettings"] = opts.safety_settings
    if opts.cached_content:
        body["cachedContent"] = opts.cached_content
    return body


def _contents(req: ChatRequest, signatures: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Gemini turns (same-role neighbours merged) and the system instruction's parts."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for the functionResponse that answers it
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        if isinstance(msg, SystemMessage | DeveloperMessage):
            text = text_of(msg.content)
            if text:
                system.append({"text": text})
            continue
        if isinstance(msg, UserMessage):
            _append(contents, "user", _user_parts(msg.content, where))
        elif isinstance(msg, AssistantMessage):
            _append(contents, "model", _assistant_parts(msg, names, signatures, where))
        elif isinstance(msg, ToolMessage):
            _append(contents, "user", [_tool_result(msg, names, where)])
    return contents, system


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _user_parts(content: Content, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, RefusalPart):
            parts.append({"text": part.refusal})
        elif isinstance(part, ImagePart):
            parts.append(_image_part(part.image_url.url, param))
        elif isinstance(part, AudioPart):
            parts.append(_audio_part(part, param))
        elif isinstance(part, FilePart):
            parts.append(_file_part(part, param))
    return parts


def _image_part(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        return {"fileData": {"mimeType": _guess_mime(url) or "image/jpeg", "fileUri": url}}
    raise bad_request("image_url must be an http(s) URL or a base64 data URL", param=param)


def _audio_part(part: AudioPart, param: str) -> dict[str, Any]:
    fmt = part.input_audio.format.lower()
    mime = _AUDIO_MIME.get(fmt)
    if mime is None:
        raise bad_request(f"audio format {fmt!r} is not supported by Gemini", param=param)
    return {"inlineData": {"mimeType": mime, "data": part.input_audio.data}}


def _file_part(part: FilePart, param: str) -> dict[str, Any]:
    ref = part.file
    guessed = _guess_mime(ref.filename or "")
    if ref.file_data:
        if ref.file_data.startswith("data:"):
            mime, data = parse_data_url(ref.file_data, param)
            return {"inlineData": {"mimeType": mime, "data": data}}
        if guessed is None:
            raise bad_request("file_data without a data: URL needs a filename with a known extension", param=param)
        return {"inlineData": {"mimeType": guessed, "data": ref.file_data}}
    file_id = ref.file_id or ""
    if file_id.startswith(("https://", "files/")):  # a Gemini Files API upload
        uri = file_id if file_id.startswith("https://") else f"{DEFAULT_BASE}/{DEFAULT_API_VERSION}/{file_id}"
        return {"fileData": {"mimeType": guessed or "application/pdf", "fileUri": uri}}
    raise bad_request("Gemini cannot read this file: send file_data (base64) or a Gemini Files API URI", param=param)


def _guess_mime(name: str) -> str | None:
    path = name.split("?", 1)[0].split("#", 1)[0]
    last = path.rsplit("/", 1)[-1]
    if "." not in last:
        return None
    return _MIME_BY_EXTENSION.get(last.rsplit(".", 1)[-1].lower())


def _assistant_parts(
    msg: AssistantMessage, names: dict[str, str], signatures: bool, where: str
) -> list[dict[str, Any]]:
    parts = _user_parts(msg.content, where) if msg.content else []
    calls: list[dict[str, Any]] = []
    for j, call in enumerate(msg.tool_calls or []):
        names[call.id] = call.function.name
        part: dict[str, Any] = {
            "functionCall": {"name": call.function.name, "args": _arguments(call.function.arguments, where, j)}
        }
        signature = signature_from_id(call.id) if signatures else None
        if signature:
            part["thoughtSignature"] = signature
        calls.append(part)
    if signatures and calls and not any("thoughtSignature" in c for c in calls):
        calls[0]["thoughtSignature"] = PLACEHOLDER_SIGNATURE  # history Gemini did not write
    return parts + calls


def _arguments(arguments: str, where: str, j: int) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        args = _decode(arguments)
    except (msgspec.DecodeError, UnicodeDecodeError):
        args = None
    if not isinstance(args, dict):
        raise bad_request(
            "tool call arguments must be a JSON object", param=f"{where}.tool_calls[{j}].function.arguments"
        )
    return args


def _tool_result(msg: ToolMessage, names: Mapping[str, str], where: str) -> dict[str, Any]:
    name = names.get(msg.tool_call_id)
    if name is None:
        raise bad_request(
            f"tool message answers unknown tool_call_id {msg.tool_call_id!r}: no earlier "
            "assistant tool call has that id",
            param=f"{where}.tool_call_id",
        )
    text = text_of(msg.content)
    response: Any = None
    if text.lstrip().startswith("{"):
        try:
            response = _decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError):
            response = None
    if not isinstance(response, dict):
        response = {"output": text}  # Gemini's documented key for a plain function output
    return {"functionResponse": {"name": name, "response": response}}


# ============================================================================ request: tools and config


def _declarations(req: ChatRequest) -> list[dict[str, Any]]:
    choice = req.tool_choice
    # allowed_tools in "auto" mode: Gemini's AUTO has no allow-list, so only the allowed tools are declared
    # ("required" uses ANY + allowedFunctionNames and keeps every declaration).
    narrowed = isinstance(choice, ToolChoiceAllowed) and choice.allowed_tools.mode == "auto"
    allowed = set(_allowed_names(req)) if narrowed else None
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools or []):
        if not isinstance(tool, FunctionTool):
            raise bad_request("Gemini supports only function tools", param=f"tools[{i}]")
        fn = tool.function
        if allowed is not None and fn.name not in allowed:
            continue
        decl: dict[str, Any] = {"name": fn.name}
        if fn.description:
            decl["description"] = fn.description
        if fn.parameters:
            decl["parametersJsonSchema"] = _schema(fn.parameters)
        out.append(decl)
    return out


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema for Gemini's `*JsonSchema` fields: only the `$schema` dialect marker is dropped."""
    return {k: v for k, v in schema.items() if k != "$schema"}


def _allowed_names(req: ChatRequest) -> list[str]:
    choice = req.tool_choice
    if not isinstance(choice, ToolChoiceAllowed):
        return []
    names = []
    for tool in choice.allowed_tools.tools:
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
        if isinstance(name, str):
            names.append(name)
    return names


def _tool_config(req: ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None or not req.tools:
        return None
    config: dict[str, Any]
    if isinstance(choice, str):
        config = {"mode": _TOOL_MODES[choice]}
    elif isinstance(choice, ToolChoiceFunction):
        config = {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    elif isinstance(choice, ToolChoiceAllowed):
        if choice.allowed_tools.mode == "required":
            config = {"mode": "ANY", "allowedFunctionNames": _allowed_names(req)}
        else:
            config = {"mode": "AUTO"}  # the declarations were narrowed to the allowed ones
    else:
        raise bad_request("Gemini supports only function tools", param="tool_choice")
    return {"functionCallingConfig": config}


def _generation_config(dep: Deployment, req: ChatRequest, raw: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    pairs: tuple[tuple[str, Any], ...] = (
        ("maxOutputTokens", req.output_limit),
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("topK", raw.get("top_k")),
        ("seed", req.seed),
        ("candidateCount", req.n),
        ("presencePenalty", req.presence_penalty),
        ("frequencyPenalty", req.frequency_penalty),
    )
    for key, value in pairs:
        if value is not None:
            config[key] = value
    if req.stop_list:
        config["stopSequences"] = req.stop_list
    if req.logprobs:
        config["responseLogprobs"] = True
        if req.top_logprobs is not None:
            config["logprobs"] = req.top_logprobs
    fmt = req.response_format
    if isinstance(fmt, ResponseFormatJsonObject | ResponseFormatJsonSchema):
        config["responseMimeType"] = "application/json"
        if isinstance(fmt, ResponseFormatJsonSchema) and fmt.json_schema.schema:
            config["responseJsonSchema"] = _schema(fmt.json_schema.schema)
    thinking = _thinking_config(dep, req)
    if thinking:
        config["thinkingConfig"] = thinking
    opts: GeminiOptions = dep.options
    if opts.generation_config:
        config.update(opts.generation_config)
    return config


def _thinking_config(dep: Deployment, req: ChatRequest) -> dict[str, Any] | None:
    """reasoning_effort → thinkingConfig: `thinkingLevel` for Gemini 3, `thinkingBudget` before it."""
    opts: GeminiOptions = dep.options
    if opts.thinking_config is not None:
        return dict(opts.thinking_config)
    effort = (req.reasoning_effort or "").lower()
    include = opts.include_thoughts
    if effort not in _THINKING_BUDGET:
        return {"includeThoughts": True} if include else None
    thinking: dict[str, Any]
    if "gemini-3" in dep.model:
        thinking = {"thinkingLevel": _THINKING_LEVEL[effort]}
    else:
        thinking = {"thinkingBudget": _THINKING_BUDGET[effort]}
    thinking["includeThoughts"] = bool(include if include is not None else effort != "none")
    return thinking


def _embedding_texts(req: EmbeddingRequest) -> list[str]:
    value = req.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return [str(item) for item in value]
    raise bad_request("Gemini embeds text only; token-id input is not supported", param="input")


def _float32_base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


__all__ = [
    "PLACEHOLDER_SIGNATURE",
    "GeminiAdapter",
    "GeminiStreamTranslator",
    "build_request",
    "classify",
    "finish_reason",
    "retry_delay",
    "signature_from_id",
    "split_parts",
    "tool_call_id",
    "usage_from",
]
