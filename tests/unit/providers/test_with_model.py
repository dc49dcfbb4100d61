"""`with_model`: the client's bytes with only the top-level model's value replaced, or None when the value is not
found exactly once as the client spelled it (the adapter then re-encodes, so nothing wrong is ever sent)."""

from __future__ import annotations

import json

import pytest

from modelyard.providers.base import with_model


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"model":"claude","max_tokens":5}', b'{"model":"sim-x","max_tokens":5}'),
        (
            b'{ "max_tokens" : 5 ,\n  "model" :\t"claude", "x": 1.50e1 }',
            b'{ "max_tokens" : 5 ,\n  "model" :\t"sim-x", "x": 1.50e1 }',
        ),
        (  # the pair quoted inside a string is escaped, so only the real key matches
            b'{"content":"say \\"model\\": \\"claude\\"","model":"claude"}',
            b'{"content":"say \\"model\\": \\"claude\\"","model":"sim-x"}',
        ),
    ],
)
def test_only_the_models_value_changes(raw: bytes, expected: bytes) -> None:
    assert with_model(raw, json.loads(raw), "sim-x") == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"claude","metadata":{"model":"claude"}}',  # the same pair nested: which one is ambiguous
        b'{"model":"\\u0063laude"}',  # escaped otherwise than we would spell it
        b"",  # no bytes kept
    ],
)
def test_ambiguous_or_unknown_spellings_are_left_to_re_encoding(raw: bytes) -> None:
    body = json.loads(raw) if raw else {"model": "claude"}
    assert with_model(raw, body, "sim-x") is None


def test_a_model_that_is_not_a_string_is_not_spliced() -> None:
    assert with_model(b'{"model":5}', {"model": 5}, "sim-x") is None
