"""Regexes inside JSON Schemas run on RE2: a client's schema cannot make the gateway backtrack."""

from __future__ import annotations

import time

import pytest

from modelyard.guardrails import check_output
from modelyard.guardrails.patterns import make_validator
from modelyard.schema.chat import JsonSchemaFormat, ResponseFormatJsonSchema

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
    elapsed = _timed(lambda: list(validator.iter_errors(instance)))
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    assert (not list(validator.iter_errors(instance))) is valid


def test_schema_keywords_still_validate() -> None:
    validator = make_validator(
        {
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": "^[0-9]+$"}},
            "patternProperties": {"^x-": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    assert not list(validator.iter_errors({"id": "42", "x-a": 1}))
    assert list(validator.iter_errors({"id": "4a"}))  # pattern
    assert list(validator.iter_errors({"x-a": "no"}))  # patternProperties' subschema
    assert list(validator.iter_errors({"other": 1}))  # additionalProperties


def test_a_pattern_re2_refuses_fails_when_the_validator_is_made() -> None:
    with pytest.raises(ValueError, match="RE2"):
        make_validator({"type": "string", "pattern": r"(a)\1"})  # backreference: not in RE2
    with pytest.raises(ValueError, match="unevaluatedProperties"):
        make_validator({"patternProperties": {"a": {}}, "unevaluatedProperties": False})


def test_a_response_format_schema_from_the_client_cannot_hang_the_check() -> None:
    fmt = ResponseFormatJsonSchema(
        json_schema=JsonSchemaFormat(name="x", schema={"type": "object", "properties": {"v": {"pattern": EVIL}}})
    )
    g = guards({"check": "json_schema", "action": "retry"})
    elapsed = _timed(lambda: check_output(g, '{"v": "' + CRAFTED + '"}', finish_reason="stop", response_format=fmt))
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"
    verdict = check_output(g, '{"v": "' + CRAFTED + '"}', finish_reason="stop", response_format=fmt)
    assert verdict.retry is not None
