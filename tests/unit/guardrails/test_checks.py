"""Each check on its own: what fires, what does not, and what redaction leaves."""

from __future__ import annotations

import time

import pytest

from modelyard.guardrails import check_output
from modelyard.guardrails.recognisers import PII, SECRETS
from modelyard.schema.chat import JsonSchemaFormat, ResponseFormatJsonSchema
from modelyard.schema.guardrails import PII_KINDS, SECRET_KINDS

from .helpers import PII_SAMPLES, SECRET_SAMPLES, guards


def test_kind_lists_match_the_recognisers() -> None:
    assert tuple(r.kind for r in PII) == PII_KINDS
    assert tuple(r.kind for r in SECRETS) == SECRET_KINDS


@pytest.mark.parametrize("kind", PII_KINDS)
def test_every_pii_kind_is_found_and_redacted(kind: str) -> None:
    value = PII_SAMPLES[kind]
    g = guards({"check": "pii", "action": "redact"})
    verdict = check_output(g, f"Here it is: {value}. Bye", finish_reason="stop")
    assert verdict.text == f"Here it is: [{kind}]. Bye"
    assert verdict.findings[0].kinds == (kind,)
    assert verdict.blocked is None


@pytest.mark.parametrize("kind", SECRET_KINDS)
def test_every_secret_kind_is_found(kind: str) -> None:
    g = guards({"check": "secrets", "action": "redact", "replacement": "<{kind}>"})
    verdict = check_output(g, f"key:\n{SECRET_SAMPLES[kind]}\nthat was it", finish_reason="stop")
    assert verdict.text == f"key:\n<{kind}>\nthat was it"


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # Luhn digit wrong
        "IBAN GB82 WEST 1234 5698 7654 33",  # checksum wrong
        "ssn 000-12-3456",  # area 000 is never issued
        "nino BG 12 34 56 C",  # prefix BG is never issued
        "call 123",  # too short for a phone number
        "the year 2024 and 12 apples",
    ],
)
def test_invalid_lookalikes_are_not_pii(text: str) -> None:
    verdict = check_output(guards({"check": "pii"}), text, finish_reason="stop")
    assert not verdict.findings[0].fired, verdict.findings[0]


def test_private_key_without_end_line_is_redacted_to_the_end() -> None:
    g = guards({"check": "secrets", "action": "redact"})
    verdict = check_output(g, "cut off:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN", finish_reason="length")
    assert verdict.text == "cut off:\n[private_key]"


def test_pii_kinds_restrict_what_is_looked_for() -> None:
    g = guards({"check": "pii", "kinds": ["email"], "action": "redact"})
    verdict = check_output(g, "a@b.io 4111 1111 1111 1111", finish_reason="stop")
    assert verdict.text == "[email] 4111 1111 1111 1111"


def test_keywords_match_whole_words_case_insensitively() -> None:
    g = guards({"check": "keywords", "words": ["Project X", "c++"], "action": "redact", "replacement": "***"})
    verdict = check_output(g, "About PROJECT x and C++; not project xy.", finish_reason="stop")
    assert verdict.text == "About *** and ***; not project xy."


def test_regex_patterns_redact_with_the_check_name() -> None:
    g = guards({"check": "regex", "name": "ticket", "patterns": [r"TCK-\d{4}"], "action": "redact"})
    assert check_output(g, "see TCK-1234", finish_reason="stop").text == "see [ticket]"


def test_catastrophic_backtracking_pattern_returns_in_milliseconds() -> None:
    g = guards({"check": "regex", "patterns": [r"(a+)+$"]})
    text = "a" * 50_000 + "!"
    start = time.perf_counter()
    verdict = check_output(g, text, finish_reason="stop")
    elapsed = time.perf_counter() - start
    assert not verdict.findings[0].fired
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms"


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_json_schema_from_the_spec() -> None:
    g = guards({"check": "json_schema", "json_schema": SCHEMA})
    assert check_output(g, '{"n": 1}', finish_reason="stop").blocked is None
    blocked = check_output(g, '{"n": "one"}', finish_reason="stop").blocked
    assert blocked is not None and "/n" not in blocked.message and "at n" in blocked.message
    assert check_output(g, "not json", finish_reason="stop").blocked is not None


def test_json_schema_from_the_request() -> None:
    g = guards({"check": "json_schema", "action": "retry"})
    fmt = ResponseFormatJsonSchema(json_schema=JsonSchemaFormat(name="x", schema=SCHEMA))
    assert check_output(g, '{"n": 2}', finish_reason="stop", response_format=fmt).retry is None
    assert check_output(g, '{"m": 2}', finish_reason="stop", response_format=fmt).retry is not None
    as_dict = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    assert check_output(g, "{}", finish_reason="stop", response_format=as_dict).retry is not None
    # json_object: any object; no JSON asked for: the check passes whatever the text
    assert check_output(g, "[1]", finish_reason="stop", response_format={"type": "json_object"}).retry is not None
    assert check_output(g, '{"a": 1}', finish_reason="stop", response_format={"type": "json_object"}).retry is None
    assert check_output(g, "plain prose", finish_reason="stop", response_format=None).retry is None


def test_json_schema_validators_are_cached_per_schema_and_bounded() -> None:
    g = guards({"check": "json_schema"})
    judge = g.output_checks[0].judge  # type: ignore[union-attr]
    for i in range(300):
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"maxProperties": i}}}
        check_output(g, "{}", finish_reason="stop", response_format=fmt)
    assert len(judge.cache) == 256  # type: ignore[attr-defined]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"maxProperties": 299}}}
    before = judge.cache[next(reversed(judge.cache))]  # type: ignore[attr-defined]
    check_output(g, "{}", finish_reason="stop", response_format=fmt)
    assert judge.cache[next(reversed(judge.cache))] is before  # type: ignore[attr-defined]


def test_empty_truncated_max_length() -> None:
    g = guards({"check": "empty"}, {"check": "truncated", "action": "retry"}, {"check": "max_length", "max_chars": 5})
    v = check_output(g, "  ", finish_reason="stop")
    assert [f.fired for f in v.findings] == [True, False, False]
    v = check_output(g, "", finish_reason="tool_calls", tool_calls=[{"id": "1"}])
    assert v.blocked is None
    v = check_output(g, "abc", finish_reason="length")
    assert v.retry is not None and v.retry.check == "truncated" and v.blocked is None
    v = check_output(g, "abcdef", finish_reason="stop")
    assert v.blocked is not None and v.blocked.check == "max_length"


def no_digits(text: str, context: object) -> bool | str | None:
    if any(ch.isdigit() for ch in text):
        return "digits are not allowed"
    return None if text else False


def test_python_check_returns_bool_str_or_none() -> None:
    g = guards({"check": "python", "function": f"{__name__}:no_digits"})
    assert check_output(g, "fine", finish_reason="stop").blocked is None
    blocked = check_output(g, "a1", finish_reason="stop").blocked
    assert blocked is not None and blocked.message.startswith("digits are not allowed")
    assert check_output(g, "", finish_reason="stop").blocked is not None


@pytest.mark.parametrize("kind", sorted(PII_SAMPLES))
def test_ascii_and_unicode_texts_are_redacted_at_the_same_places(kind: str) -> None:
    """ASCII texts are scanned as bytes (a speed path), others as str: both must cut at character offsets."""
    g = guards({"check": "pii", "action": "redact", "replacement": "<x>"})
    value = PII_SAMPLES[kind]
    for prefix in ("Note: ", "Grüße, ünïcödé 非 ", "😀😀 "):
        verdict = check_output(g, f"{prefix}{value} - done", finish_reason="stop")
        assert verdict.text == f"{prefix}<x> - done", (kind, prefix, verdict.text)


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("card 4111 1111 1111 1111.x@example.com done", ("4111", "example")),
        ("call +1 415 555 0134.alice@example.com done", ("415", "alice")),
    ],
)
def test_overlapping_kinds_are_redacted_as_their_union(text: str, leaked: tuple[str, ...]) -> None:
    verdict = check_output(guards({"check": "pii", "action": "redact"}), text, finish_reason="stop")
    assert verdict.text is not None
    assert not any(piece in verdict.text for piece in leaked), verdict.text
    assert verdict.text.endswith(" done")


@pytest.mark.parametrize("unit", ["a.b@c.de ", "+1 415 555 0134 x ", "4111 1111 1111 1111 "])
def test_a_text_full_of_lookalikes_is_scanned_in_bounded_time(unit: str) -> None:
    """A client's 1 MB of PII-like text must not hold the event loop for seconds (it was quadratic)."""
    text = unit * (1_000_000 // len(unit))
    g = guards({"check": "pii", "action": "redact", "replacement": "#"})
    started = time.perf_counter()
    verdict = check_output(g, text, finish_reason="stop")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert verdict.text is not None and not any(ch.isdigit() or ch == "@" for ch in verdict.text[-200:])


@pytest.mark.parametrize(
    "text, value",
    [
        ("pay with 4111111111111111 12/27 123 please", "4111111111111111"),
        ("pay with 4111 1111 1111 1111 12 27 cvv 123", "4111 1111 1111 1111"),
        ("call +44 20 7946 0958 12 times", "+44 20 7946 0958"),
    ],
)
def test_a_value_followed_by_more_digits_is_still_found(text: str, value: str) -> None:
    """The candidate pattern takes the digits after the value too; the value alone must still be tried."""
    verdict = check_output(guards({"check": "pii", "action": "redact"}), text, finish_reason="stop")
    assert verdict.text is not None and value not in verdict.text, verdict.text


FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


@pytest.mark.parametrize(
    "disguised",
    [
        "4111\u200b1111\u200b1111\u200b1111",  # zero-width spaces
        "4111\u00a01111\u00a01111\u00a01111",  # no-break spaces
        "4111 1111 1111 1111".translate(FULL_WIDTH),  # full-width digits
        "jane.doe\u200b@example.com",
        "jane.doe@example.com".translate(FULL_WIDTH),
    ],
)
def test_disguised_values_are_found_and_redacted_whole(disguised: str) -> None:
    text = f"Here: {disguised} - thanks"
    block = check_output(guards({"check": "pii", "action": "block"}), text, finish_reason="stop")
    assert block.blocked is not None, disguised
    redacted = check_output(
        guards({"check": "pii", "action": "redact", "replacement": "#"}), text, finish_reason="stop"
    )
    assert redacted.text == "Here: # - thanks"
