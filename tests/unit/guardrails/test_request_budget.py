"""A client's own checks are bounded before anything is compiled (`compile_checks(..., trusted=False)`):
keyword characters over the whole request, and the size of a per-request `json_schema`. The operator's
checks (trusted) have no such bound."""

from __future__ import annotations

import time

import msgspec
import pytest

from modelyard.guardrails.compile import REQUEST_KEYWORD_CHARS, REQUEST_SCHEMA_BYTES, compile_checks
from modelyard.schema.guardrails import CheckSpec


def keywords(chars: int, name: str = "k") -> CheckSpec:
    """A keywords check whose words hold `chars` characters in all (words of 100)."""
    words = [f"{i:05d}" + "w" * 95 for i in range(chars // 100)]
    return CheckSpec(check="keywords", words=words, name=name)


def test_keyword_characters_are_counted_over_all_the_requests_checks() -> None:
    half = REQUEST_KEYWORD_CHARS // 2
    assert compile_checks([keywords(half, "a"), keywords(half, "b")], trusted=False)  # exactly the budget
    with pytest.raises(ValueError, match=f"at most {REQUEST_KEYWORD_CHARS} characters") as info:
        compile_checks([keywords(half, "a"), keywords(half, "b"), keywords(100, "c")], trusted=False)
    assert "`c`" in str(info.value)  # names the check that went over


def test_the_refusal_is_fast_even_for_a_huge_request() -> None:
    huge = [CheckSpec(check="keywords", words=[f"{i:04d}" + "w" * 196 for i in range(1000)]) for _ in range(32)]
    start = time.perf_counter()
    with pytest.raises(ValueError):
        compile_checks(huge, trusted=False)
    assert time.perf_counter() - start < 0.05


def test_a_per_request_schema_is_bounded() -> None:
    properties = {f"p{i}": {"type": "string", "description": "d" * 100} for i in range(800)}
    big = {"type": "object", "properties": properties}
    assert len(msgspec.json.encode(big)) > REQUEST_SCHEMA_BYTES
    with pytest.raises(ValueError, match="64 KiB"):
        compile_checks([CheckSpec(check="json_schema", json_schema=big)], trusted=False)
    small = {"type": "object", "properties": dict(list(properties.items())[:10])}
    assert compile_checks([CheckSpec(check="json_schema", json_schema=small)], trusted=False)


def test_operator_checks_are_not_bounded() -> None:
    assert compile_checks([keywords(REQUEST_KEYWORD_CHARS + 100)]).output_checks


def test_operator_only_checks_are_still_refused() -> None:
    with pytest.raises(ValueError, match="only be configured by the operator"):
        compile_checks([CheckSpec(check="regex", patterns=["x"])], trusted=False)
