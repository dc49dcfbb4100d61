"""Structured answers: reading JSON out of model text, validating it, and the repair prompt."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import ValidationError
from jsonschema.validators import validator_for

from modelyard.schema.errors import ModelyardError

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(?P<body>.*?)\n?```\s*$", re.DOTALL)


class AnswerInvalid(ModelyardError):
    """An answer that is not JSON, or not valid against the step's schema."""


def response_format(name: str, schema: dict[str, Any] | bool) -> dict[str, Any]:
    """The OpenAI `response_format` asking for JSON that matches `schema`."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"
    body = schema if isinstance(schema, dict) else {}
    return {"type": "json_schema", "json_schema": {"name": safe, "schema": body, "strict": False}}


def parse_structured(text: str, schema: dict[str, Any] | bool) -> Any:
    """The JSON value in `text` (code fences allowed), validated; raises AnswerInvalid saying why."""
    match = _FENCE.match(text)
    body = match.group("body") if match else text
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise AnswerInvalid(f"the answer is not JSON ({exc})") from None
    return validate(value, schema)


def validate(value: Any, schema: dict[str, Any] | bool) -> Any:
    """`value` if it is valid against `schema`; raises AnswerInvalid naming the first problem and where."""
    validator = validator_for(schema)(schema)
    error: ValidationError | None = next(iter(sorted(validator.iter_errors(value), key=str)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise AnswerInvalid(f"at {where}: {error.message}")
    return value


def repair_message(problem: str) -> str:
    return (
        f"Your answer did not validate against the required JSON Schema: {problem}. "
        "Reply again with only the corrected JSON value, no prose and no code fences."
    )


def example_for_schema(schema: Any, name: str = "value", depth: int = 0) -> Any:
    """A small deterministic instance of a JSON Schema (used by the scripted backend and plan)."""
    if not isinstance(schema, dict) or depth > 8:
        return name
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_for_schema(schema[key][0], name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {key: example_for_schema(sub, key, depth + 1) for key, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(3, int(schema.get("maxItems", 3))))
        item = schema.get("items") or {}
        return [_numbered(example_for_schema(item, name, depth + 1), i) for i in range(count)]
    return _scalar(kind, schema, name)


def _scalar(kind: Any, schema: dict[str, Any], name: str) -> Any:
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return int(low) + (1 if kind == "integer" else 0) if kind == "integer" else float(low) + 0.5
    if kind == "null":
        return None
    text = f"{name} example"
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _numbered(value: Any, index: int) -> Any:
    return f"{value} {index + 1}" if isinstance(value, str) else value
