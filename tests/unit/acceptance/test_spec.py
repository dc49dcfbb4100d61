"""Suite loading: the example loads, every kind of mistake is reported at its file:line, the JSON Schema export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from modelyard.acceptance.spec import SCHEMA_VERSION, load_suite, parse_suite, suite_json_schema
from modelyard.config.loader import ConfigError, ConfigErrors

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "acceptance" / "suite.yaml"

HEAD = "schema: modelyard.acceptance/v1\nname: s\ntasks:\n  t:\n    cases:\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_suite(text, "suite.yaml")
    exc = caught.value
    return [str(e) for e in (exc.errors if isinstance(exc, ConfigErrors) else [exc])]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_example_loads_with_three_tasks_and_its_python_check() -> None:
    suite = load_suite(EXAMPLE)
    assert list(suite.spec.tasks) == ["classification", "extraction", "code_fix"]
    assert suite.case_count == sum(len(t.cases) for t in suite.spec.tasks.values()) > 20
    assert "checks:parses" in suite.functions
    assert suite.path_of(suite.spec.simulator) == EXAMPLE.parent / "fleet.yaml"


def test_wrong_schema_version_points_at_its_line() -> None:
    text = "name: s\nschema: modelyard.acceptance/v9\ntasks: {}\n"
    (error,) = errors_of(text)
    assert error.startswith("suite.yaml:2: schema: ")
    assert SCHEMA_VERSION in error


def test_unknown_key_is_reported_at_its_line() -> None:
    text = HEAD + "      - id: a\n        prompt: hi\n        colour: red\n        assert: [{contains: x}]\n"
    (error,) = errors_of(text)
    assert error.startswith(f"suite.yaml:{line_of(text, 'colour')}: tasks.t.cases[0].colour: ")


@pytest.mark.parametrize(
    ("case", "needle", "key", "message"),
    [
        ("prompt: hi\n        assert: [{contains: x, regex: y}]", "assert", "assert[0]", "exactly one of"),
        ("prompt: hi\n        assert: [{case_sensitive: false}]", "assert", "assert[0]", "found: none"),
        ('prompt: hi\n        assert: [{regex: "(?<=a)b"}]', "regex", "assert[0].regex", "not an RE2 pattern"),
        (
            "prompt: hi\n        assert: [{json_schema: {type: 12}}]",
            "json_schema",
            "json_schema",
            "invalid JSON schema",
        ),
        ("prompt: hi\n        assert: [{python: 'no_such_mod:fn'}]", "python", "python", "cannot import"),
        ("prompt: hi\n        assert: [{python: 'json:no_such_fn'}]", "python", "python", "no function"),
        ("prompt: hi\n        assert: [{similar: 0.8}]", "similar", "similar", "reference"),
        ("prompt: hi\n        messages: []\n        assert: [{contains: x}]", "- id", "cases[0]", "exactly one of"),
        ("prompt: hi\n        assert: []", "- id", "cases[0]", "at least one assertion"),
        (
            "messages: [{role: wizard, content: hi}]\n        assert: [{contains: x}]",
            "wizard",
            "messages[0].role",
            "not a valid chat request",
        ),
        (
            "prompt: hi\n        tools: [{type: function}]\n        assert: [{contains: x}]",
            "tools",
            "tools[0]",
            "not a valid chat request",
        ),
        (
            "prompt: hi\n        assert: [{tool_call: {name: f, arguments: {type: 7}}}]",
            "tool_call",
            "tool_call",
            "invalid JSON schema",
        ),
    ],
)
def test_each_semantic_mistake_is_reported_at_its_key(case: str, needle: str, key: str, message: str) -> None:
    text = HEAD + "      - id: a\n        " + case + "\n"
    (error,) = errors_of(text)
    match = re.match(r"suite\.yaml:(\d+): (\S+): (.*)", error)
    assert match, error
    assert int(match.group(1)) == line_of(text, needle)
    assert match.group(2).endswith(key)
    assert message in match.group(3)


def test_every_problem_is_listed_in_one_pass_in_line_order() -> None:
    text = (
        HEAD + "      - id: a\n        prompt: hi\n        assert: [{regex: '(?=x)'}]\n"
        "      - id: a\n        prompt: hi\n        assert: [{python: 'nope:fn'}]\n"
    )
    errors = errors_of(text)
    assert len(errors) == 3  # the regex, the duplicate id, the import
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines)
    assert any("duplicate case id 'a'" in e for e in errors)


def test_missing_config_and_simulator_files_are_load_errors(tmp_path: Path) -> None:
    text = (
        "schema: modelyard.acceptance/v1\nname: s\nconfig: nope.yaml\nsimulator: fleet.yaml\n" + HEAD.split("\n", 2)[2]
    )
    text += "      - id: a\n        prompt: hi\n        assert: [{contains: x}]\n"
    file = tmp_path / "suite.yaml"
    file.write_text(text)
    with pytest.raises(ConfigErrors) as caught:
        load_suite(file)
    assert [e.line for e in caught.value.errors] == [3, 4]


def test_a_python_check_beside_the_suite_is_importable(tmp_path: Path) -> None:
    (tmp_path / "my_suite_checks.py").write_text("def ok(text, context):\n    return text == 'x'\n")
    file = tmp_path / "suite.yaml"
    file.write_text(HEAD + "      - id: a\n        prompt: hi\n        assert: [{python: 'my_suite_checks:ok'}]\n")
    suite = load_suite(file)
    assert suite.functions["my_suite_checks:ok"]("x", {}) is True


def test_the_exported_schema_validates_the_example_and_is_the_docs_copy() -> None:
    schema = suite_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = yaml.safe_load(EXAMPLE.read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**data, "schema": "modelyard.acceptance/v2"})
    docs = ROOT / "docs" / "acceptance.schema.json"
    assert json.loads(docs.read_text()) == schema, "regenerate: python -m modelyard.acceptance.spec > " + str(docs)
