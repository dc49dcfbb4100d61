"""The regex and JSON Schema primitives the assertions use: the guardrails' own, cached per suite value.

Patterns are RE2 (linear time: a suite's pattern cannot hang a run whatever the answer) compiled by
`schema.patterns.compile_pattern`, and validators come from `schema.patterns.make_validator` (the draft
a schema names, else 2020-12), so a pattern or schema means the same in a suite as in a guardrail.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from modelyard.schema.patterns import SchemaValidator, compile_pattern, make_validator


def compile_regex(pattern: str) -> tuple[Any | None, str | None]:
    """The compiled RE2 pattern, or None and why it does not compile (lookarounds and backrefs do not)."""
    try:
        return compile_pattern(pattern), None
    except ValueError as exc:
        return None, str(exc)


@lru_cache(maxsize=256)
def _cached_regex(pattern: str) -> Any:
    compiled, problem = compile_regex(pattern)
    if compiled is None:
        raise ValueError(problem)
    return compiled


def regex_search(pattern: str, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text` (compiled once per pattern)."""
    return _cached_regex(pattern).search(text) is not None


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON Schema (the draft it names, else 2020-12), or None."""
    try:
        make_validator(schema)
    except ValueError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=256)
def _validator(key: str) -> SchemaValidator:
    return make_validator(json.loads(key))


def schema_errors(schema: dict[str, Any] | bool, value: Any) -> str | None:
    """The first reason `value` does not match `schema`, or None (validators cached per schema)."""
    if isinstance(schema, bool):
        return None if schema else "the schema is `false`: nothing matches"
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = validator.first_error(value)
    if error is None:
        return None
    return f"{error.path + ': ' if error.path else ''}{error.message}"


def parse_json(text: str) -> tuple[Any, str | None]:
    """The JSON value of an answer (a ```json fence around it is allowed), or None and why not."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        return json.loads(body), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at char {exc.pos}"
