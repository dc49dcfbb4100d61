"""Regexes and JSON Schemas compile in linear time: a client's schema cannot make the gateway backtrack, nor fetch."""

from __future__ import annotations

import time

import pytest

from modelyard.guardrails import check_output
from modelyard.schema.chat import JsonSchemaFormat, ResponseFormatJsonSchema
from modelyard.schema.patterns import make_validator

from .helpers import guards

EVIL = r"^(a+)+$"
#: Python's `re` needs ~2^n steps for this string against EVIL: n = 40 would run for hours.
CRAFTED = "a" * 40 + "!"


def _timed(fn: object) -> float:
    start = time.perf_counter()
    assert callable(fn)
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize(
    "schema, instance, valid",
    [
        ({"type": "string", "pattern": EVIL}, CRAFTED, False),
        # the crafted key matches no pattern, so its (wrong-typed) value is not checked
        ({"type": "object", "patternProperties": {EVIL: {"type": "integer"}}}, {CRAFTED: "x"}, True),
        ({"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False}, {CRAFTED: 1}, False),
    ],
)
def test_schema_regexes_are_linear(schema: dict[str, object], instance: object, valid: bool) -> None:
    validator = make_validator(schema)
    elapsed = _timed(lambda: validator.first_error(instance))
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    assert (validator.first_error(instance) is None) is valid


def test_schema_keywords_still_validate() -> None:
    validator = make_validator(
        {
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    assert validator.first_error({"id": "42", "x-a": 1}) is None
    error = validator.first_error({"id": "4a"})  # pattern
    assert error is not None and error.path == "id"
    assert validator.first_error({"x-a": "no"}) is not None  # patternProperties' subschema
    assert validator.first_error({"other": 1}) is not None  # additionalProperties


def test_a_pattern_that_needs_backtracking_fails_when_the_validator_is_made() -> None:
    with pytest.raises(ValueError, match="regex"):
        make_validator({"type": "string", "pattern": r"(a)\1"})  # a backreference: no linear-time engine has it


def test_a_schema_never_makes_the_gateway_fetch_a_reference() -> None:
    with pytest.raises(ValueError, match="invalid JSON schema"):
        make_validator({"$ref": "http://127.0.0.1:9/schema.json"})
    local = make_validator({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"})
    assert local.first_error(1) is None and local.first_error("x") is not None


def test_a_response_format_schema_from_the_client_cannot_hang_the_check() -> None:
    fmt = ResponseFormatJsonSchema(
        json_schema=JsonSchemaFormat(name="x", schema={"type": "object", "properties": {"v": {"pattern": EVIL}}})
    )
    g = guards({"check": "json_schema", "action": "retry"})
    elapsed = _timed(lambda: check_output(g, '{"v": "' + CRAFTED + '"}', finish_reason="stop", response_format=fmt))
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    verdict = check_output(g, '{"v": "' + CRAFTED + '"}', finish_reason="stop", response_format=fmt)
    assert verdict.retry is not None
