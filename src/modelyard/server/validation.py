"""Request validation with OpenAI-shaped 4xx errors that name the offending parameter."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.constraints import CONSTRAINT_NAMES
from modelyard.schema.errors import GatewayError

_decode = msgspec.json.Decoder().decode

#: The deepest JSON a request may nest (tool schemas rarely pass 10). Deeper bodies are refused with a 400:
#: msgspec stops at Python's recursion limit with a RecursionError, and a body just under it would blow the
#: stack later, in any recursive walk over it (translation, token counting, encoding for a provider).
MAX_JSON_DEPTH = 64

#: Where a request's routing constraints sit (`schema.constraints.Constraints`: their names and ranges).
CONSTRAINTS_PARAM = "modelyard.constraints"
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_TAG = re.compile(r"Invalid value '([^']*)'")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")


def decode_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise GatewayError(400, "Request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"Invalid JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object", code="invalid_json")
    if _nests_too_deep(data):
        raise _too_deep()
    return data


def _nests_too_deep(data: dict[str, Any]) -> bool:
    """Whether a field nests deeper than MAX_JSON_DEPTH. `messages` is left out: it is the bulk of a body, its
    shape is fixed by the schema (so deep nesting fails validation at its first level), and nothing walks
    the free-form JSON inside it (tool inputs) recursively; the fields that are free-form and walked
    recursively (tool schemas, response formats, vendor extras) are all at the top level."""
    for key, value in data.items():
        if (
            (type(value) is dict or type(value) is list)
            and key != "messages"
            and _deeper_than(value, MAX_JSON_DEPTH - 1)
        ):
            return True
    return False


def _too_deep() -> GatewayError:
    return GatewayError(400, f"Invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether `data` nests more than `limit` containers deep (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return False


def validation_error(exc: msgspec.ValidationError) -> GatewayError:
    """Turn msgspec's message into an OpenAI error whose `param` is the JSON path of the bad field."""
    match = _AT.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = (match.group("path") or "") if match else ""
    param = path.lstrip(".") or None
    missing = _MISSING.search(message)
    if missing:
        field = missing.group(1)
        param = f"{param}.{field}" if param else field
        return GatewayError(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    unknown = _UNKNOWN.search(message)
    if unknown and param == CONSTRAINTS_PARAM:
        name = unknown.group(1)
        return GatewayError(
            400,
            f"Unknown routing constraint '{name[:64]}' (known: {', '.join(sorted(CONSTRAINT_NAMES))}).",
            param=f"{param}.{name}"[:96],
            code="invalid_value",
        )
    tag = _TAG.search(message)
    if tag and param and param.endswith(".type") and ".content[" in param:
        return GatewayError(
            400,
            f"Unsupported content part type '{tag.group(1)}' at '{param}' (supported: text, "
            "image_url, input_audio, file, refusal).",
            param=param,
            code="unsupported_content_part",
        )
    if tag and param and param.endswith(".role"):
        return GatewayError(
            400,
            f"Invalid message role '{tag.group(1)}' at '{param}' (expected system, developer, "
            "user, assistant or tool).",
            param=param,
            code="invalid_value",
        )
    where = f" at '{param}'" if param else ""
    return GatewayError(400, f"Invalid request{where}: {message}", param=param, code="invalid_value")


def validate_chat(raw: dict[str, Any]) -> ChatRequest:
    try:
        req = msgspec.convert(raw, ChatRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    if not req.messages:
        raise GatewayError(400, "'messages' must contain at least one message.", param="messages", code="invalid_value")
    if not req.model:
        raise GatewayError(400, "'model' must be a non-empty string.", param="model", code="invalid_value")
    if req.n is not None and req.n < 1:
        raise GatewayError(400, "'n' must be at least 1.", param="n", code="invalid_value")
    limit = req.output_limit
    if limit is not None and limit < 1:
        raise GatewayError(400, "'max_tokens' must be at least 1.", param="max_tokens", code="invalid_value")
    return req


def validate_embeddings(raw: dict[str, Any]) -> EmbeddingRequest:
    try:
        req = msgspec.convert(raw, EmbeddingRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    if isinstance(req.input, list) and not req.input:
        raise GatewayError(400, "'input' must not be empty.", param="input", code="invalid_value")
    return req


_WHOLE = re.compile(r"^[0-9]{1,12}$")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def whole_number(text: str | None, param: str, low: int, high: int, default: int | None = None) -> int | None:
    """A query or form value that must be a whole number in [low, high]: `default` when blank, else a 400
    naming `param`."""
    if text is None or text.strip() == "":
        return default
    text = text.strip()
    if not _WHOLE.match(text) or not low <= int(text) <= high:
        raise GatewayError(400, f"`{param}` must be a whole number from {low} to {high}", param=param)
    return int(text)


# --------------------------------------------------------------------------- the non-chat endpoints
#
# Audio, images and rerank (server/endpoints.py). Each check answers a 400 naming the `param` at fault; JSON
# values are checked for type (a bool is not a number), finiteness (NaN, inf) and range, form values (text)
# are parsed the same way, so a value the provider would refuse, or bill oddly, never leaves the gateway.

#: OpenAI's transcription answer formats (`text`, `srt`, `vtt`: plain text, not JSON).
TRANSCRIPTION_FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
#: OpenAI's speech audio formats.
SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
IMAGE_FORMATS = frozenset({"url", "b64_json"})
#: OpenAI's limits: 4,096 characters to speak, 10 images per request; Cohere's: 1,000 documents per query.
MAX_SPEECH_CHARS = 4096
MAX_IMAGES = 10
MAX_RERANK_DOCUMENTS = 1000
MAX_PROMPT_CHARS = 32_000


def _bad(param: str, message: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def finite_number(value: Any, param: str, low: float, high: float, *, form: bool = False) -> float:
    """A JSON number (or, from a `form`, text of one) in [low, high]: not a bool, not NaN or infinite."""
    if form and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _bad(param, f"`{param}` must be a number from {low:g} to {high:g}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= float(value) <= high):
        raise _bad(param, f"`{param}` must be a number from {low:g} to {high:g}")  # NaN fails the comparison
    return float(value)


def whole_value(value: Any, param: str, low: int, high: int, *, form: bool = False) -> int:
    """A JSON integer (or, from a `form`, text of one) in [low, high]; 2.0, true, "3" in JSON, NaN are refused."""
    if form and isinstance(value, str):
        number = whole_number(value, param, low, high)
        if number is None:
            raise _bad(param, f"`{param}` is empty")
        return number
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(param, f"`{param}` must be a whole number from {low} to {high}")
    return value


def _text(raw: dict[str, Any], param: str, *, required: bool, limit: int) -> str | None:
    value = raw.get(param)
    if value is None:
        if required:
            raise GatewayError(
                400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
            )
        return None
    if not isinstance(value, str):
        raise _bad(param, f"`{param}` must be a string")
    if len(value) > limit:
        raise _bad(param, f"`{param}` is longer than {limit} characters")
    return value


def _choice(raw: dict[str, Any], param: str, allowed: frozenset[str]) -> str | None:
    value = raw.get(param)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise _bad(param, f"`{param}` must be one of {', '.join(sorted(allowed))}")
    return value


def endpoint_model(raw: dict[str, Any]) -> str:
    """The `model` of a non-chat request (a non-empty string)."""
    model = _text(raw, "model", required=True, limit=256)
    if not model:
        raise _bad("model", "`model` must not be empty")
    return model


def validate_transcription_fields(fields: dict[str, Any]) -> None:
    """A transcription or translation form's text fields (values as the form carried them)."""
    for name in ("language", "prompt", "chunking_strategy"):
        _text(fields, name, required=False, limit=MAX_PROMPT_CHARS)
    _choice(fields, "response_format", TRANSCRIPTION_FORMATS)
    if "temperature" in fields:
        finite_number(fields["temperature"], "temperature", 0.0, 1.0, form=True)
    if "stream" in fields and str(fields["stream"]).strip().lower() not in ("false", "0", ""):
        raise _bad("stream", "streamed transcriptions are not supported by the gateway; leave `stream` unset")
    granularities = fields.get("timestamp_granularities[]", fields.get("timestamp_granularities"))
    if granularities is not None:
        values = granularities if isinstance(granularities, list) else [granularities]
        if any(v not in ("word", "segment") for v in values):
            raise _bad("timestamp_granularities", "`timestamp_granularities` values must be word or segment")


def validate_speech(raw: dict[str, Any]) -> str:
    """A speech request; the text to speak."""
    text = _text(raw, "input", required=True, limit=MAX_SPEECH_CHARS)
    assert text is not None
    if not text:
        raise _bad("input", "`input` must not be empty")
    voice = raw.get("voice")
    if voice is None:
        raise GatewayError(
            400, "Missing required parameter: 'voice'.", param="voice", code="missing_required_parameter"
        )
    if not (isinstance(voice, str) and 0 < len(voice) <= 256) and not (
        isinstance(voice, dict) and isinstance(voice.get("id"), str) and len(voice) == 1
    ):
        raise _bad("voice", '`voice` must be a voice name or {"id": ...}')
    _choice(raw, "response_format", SPEECH_FORMATS)
    if raw.get("speed") is not None:
        finite_number(raw["speed"], "speed", 0.25, 4.0)
    _text(raw, "instructions", required=False, limit=MAX_SPEECH_CHARS)
    if raw.get("stream_format") not in (None, "audio"):
        raise _bad("stream_format", "`stream_format` must be audio (server-sent speech events are not supported)")
    return text


def validate_image_generation(raw: dict[str, Any]) -> int:
    """An image generation request; the number of images it asks for."""
    prompt = _text(raw, "prompt", required=True, limit=MAX_PROMPT_CHARS)
    if not prompt:
        raise _bad("prompt", "`prompt` must not be empty")
    n = 1 if raw.get("n") is None else whole_value(raw["n"], "n", 1, MAX_IMAGES)
    _choice(raw, "response_format", IMAGE_FORMATS)
    if raw.get("stream"):
        raise _bad("stream", "streamed image generation is not supported by the gateway; leave `stream` unset")
    for name in ("size", "quality", "style", "background", "moderation", "output_format", "user"):
        _text(raw, name, required=False, limit=256)
    if raw.get("output_compression") is not None:
        whole_value(raw["output_compression"], "output_compression", 0, 100)
    if raw.get("partial_images") is not None:
        whole_value(raw["partial_images"], "partial_images", 0, 3)
    return n


def validate_rerank(raw: dict[str, Any]) -> list[str]:
    """A rerank request in Cohere's shape; its documents as text (an object document's `text`, else its
    string fields as `key: value` lines, as Cohere asks structured documents to be sent)."""
    query = _text(raw, "query", required=True, limit=MAX_PROMPT_CHARS)
    if not query:
        raise _bad("query", "`query` must not be empty")
    documents = raw.get("documents")
    if documents is None:
        raise GatewayError(
            400, "Missing required parameter: 'documents'.", param="documents", code="missing_required_parameter"
        )
    if not isinstance(documents, list) or not documents:
        raise _bad("documents", "`documents` must be a non-empty list of strings or objects")
    if len(documents) > MAX_RERANK_DOCUMENTS:
        raise _bad("documents", f"`documents` must have at most {MAX_RERANK_DOCUMENTS} items")
    texts: list[str] = []
    for doc in documents:
        if isinstance(doc, str):
            texts.append(doc)
        elif isinstance(doc, dict) and doc and all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
            texts.append(doc["text"] if "text" in doc else "\n".join(f"{k}: {v}" for k, v in doc.items()))
        else:
            raise _bad("documents", "`documents` must be strings or objects of string fields")
    if raw.get("top_n") is not None:
        whole_value(raw["top_n"], "top_n", 1, MAX_RERANK_DOCUMENTS)
    if raw.get("max_tokens_per_doc") is not None:
        whole_value(raw["max_tokens_per_doc"], "max_tokens_per_doc", 1, 1_000_000)
    if raw.get("return_documents") is not None and not isinstance(raw["return_documents"], bool):
        raise _bad("return_documents", "`return_documents` must be a boolean")
    return texts
