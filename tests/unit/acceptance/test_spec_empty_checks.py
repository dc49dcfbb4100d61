"""Assertions that cannot mean anything are load errors at their file:line: `contains: []`,
`not_contains: []` (or an empty string in them), `judge: ""`, and a `judge` with no model to grade with
(none on the assertion, no `judge_model:`, no `route:`): never a run-time surprise."""

from __future__ import annotations

import pytest

from modelyard.acceptance.spec import parse_suite
from modelyard.config.loader import ConfigError, ConfigErrors

HEAD = "schema: modelyard.acceptance/v1\nname: s\n{extra}tasks:\n  t:\n    cases:\n      - id: a\n        prompt: hi\n"


def only_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_suite(text, "suite.yaml")
    exc = caught.value
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    assert len(errors) == 1, errors
    return str(errors[0])


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("assertion", "extra", "key", "message"),
    [
        ("contains: []", "", "contains", "at least one non-empty string"),
        ("not_contains: []", "", "not_contains", "at least one non-empty string"),
        ('contains: ""', "", "contains", "at least one non-empty string"),
        ('not_contains: [x, ""]', "", "not_contains", "at least one non-empty string"),
        ('judge: ""', "route: r\n", "judge", "needs a rubric"),
        ('judge: {rubric: "  "}', "route: r\n", "judge", "needs a rubric"),
        ('judge: "is it polite?"', "", "judge", "no model to grade with"),
        ('judge: {rubric: "is it polite?"}', "", "judge", "judge_model"),
    ],
)
def test_empty_or_ungradable_assertions_fail_at_load(assertion: str, extra: str, key: str, message: str) -> None:
    text = HEAD.format(extra=extra) + f"        assert:\n          - {assertion}\n"
    error = only_error(text)
    line = line_of(text, assertion)
    assert error.startswith(f"suite.yaml:{line}: tasks.t.cases[0].assert[0].{key}: "), error
    assert message in error


@pytest.mark.parametrize(
    ("assertion", "extra"),
    [
        ("contains: [x]", ""),
        ("not_contains: y", ""),
        ('judge: "is it polite?"', "route: r\n"),
        ('judge: "is it polite?"', "judge_model: grader\n"),
        ('judge: {rubric: "is it polite?", model: grader}', ""),
    ],
)
def test_meaningful_assertions_still_load(assertion: str, extra: str) -> None:
    text = HEAD.format(extra=extra) + f"        assert:\n          - {assertion}\n"
    assert parse_suite(text, "suite.yaml").case_count == 1
