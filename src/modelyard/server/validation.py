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
