"""Request validation with OpenAI-shaped 4xx errors that name the offending parameter."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import GatewayError

_decode = msgspec.json.Decoder().decode
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_TAG = re.compile(r"Invalid value '([^']*)'")


def decode_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise GatewayError(400, "Request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = _decode(body)
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"Invalid JSON body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object", code="invalid_json")
    return data


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
        return GatewayError(400, f"Missing required parameter: '{param}'.", param=param,
                            code="missing_required_parameter")
    tag = _TAG.search(message)
    if tag and param and param.endswith(".type") and ".content[" in param:
        return GatewayError(400, f"Unsupported content part type '{tag.group(1)}' at '{param}' (supported: text, "
                            "image_url, input_audio, file, refusal).", param=param, code="unsupported_content_part")
    if tag and param and param.endswith(".role"):
        return GatewayError(400, f"Invalid message role '{tag.group(1)}' at '{param}' (expected system, developer, "
                            "user, assistant or tool).", param=param, code="invalid_value")
    where = f" at '{param}'" if param else ""
    return GatewayError(400, f"Invalid request{where}: {message}", param=param, code="invalid_value")


def validate_chat(raw: dict[str, Any]) -> ChatRequest:
    try:
        req = msgspec.convert(raw, ChatRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    if not req.messages:
        raise GatewayError(400, "'messages' must contain at least one message.", param="messages",
                           code="invalid_value")
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
