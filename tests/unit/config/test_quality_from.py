"""`quality_from:`: an acceptance-results file becomes per-task deployment quality and acceptance at load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from modelyard.config.loader import ConfigError, load_config, parse_config

CONFIG = """\
deployments:
  - {name: cheap, provider: openai, model: small, quality: 0.6}
  - {name: strong, provider: openai, model: large, quality: {default: 0.9, coding: 0.95}}
  - {name: plain, provider: openai, model: other}
models:
  desk: {candidates: [cheap, strong, plain], strategy: cost}
quality_from: results/accept.json
"""

RESULTS: dict[str, Any] = {
    "schema": "modelyard.acceptance-results/v1",
    "suite": "desk",
    "generated_at": "2026-12-04T16:00:00Z",
    "deployments": {
        "cheap": {
            "classification": {"pass_rate": 0.97, "accepted": True, "cases": 30},
            "extraction": {"pass_rate": 0.4, "accepted": False, "cases": 30, "min_pass_rate": 0.9},
        },
        "strong": {"extraction": {"pass_rate": 0.93, "accepted": True, "cases": 30, "ci": [0.8, 0.98]}},
        "plain": {"classification": {"pass_rate": 0.5, "accepted": False, "cases": 4}},
    },
}


def write(tmp_path: Path, results: Any = RESULTS, config: str = CONFIG) -> Path:
    (tmp_path / "results").mkdir(exist_ok=True)
    text = results if isinstance(results, str) else json.dumps(results)
    (tmp_path / "results" / "accept.json").write_text(text, encoding="utf-8")
    path = tmp_path / "modelyard.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def test_pass_rates_become_per_task_quality_file_wins_yaml_stays_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    cheap, strong, plain = (config.deployment(n) for n in ("cheap", "strong", "plain"))
    assert cheap is not None and strong is not None and plain is not None
    assert cheap.quality_for("classification") == 0.97
    assert cheap.quality_for("extraction") == 0.4
    assert cheap.quality_for("summary") == 0.6  # the YAML's single quality stays the default
    assert strong.quality_for("extraction") == 0.93  # the file wins for the tasks it names
    assert strong.quality_for("coding") == 0.95 and strong.quality_for(None) == 0.9
    assert plain.quality_for("classification") == 0.5 and plain.quality_for("extraction") is None
    assert cheap.acceptance is not None and cheap.acceptance["extraction"].accepted is False
    assert cheap.acceptance["extraction"].min_pass_rate == 0.9
    assert strong.acceptance is not None and strong.acceptance["extraction"].cases == 30


def test_relative_to_the_config_file_not_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cheap = load_config(path).deployment("cheap")
    assert cheap is not None and cheap.quality_for("extraction") == 0.4


@pytest.mark.parametrize(
    ("results", "needle"),
    [
        (None, "cannot read acceptance results"),
        ("{not json", "not valid JSON"),
        ({**RESULTS, "schema": "modelyard.acceptance-results/v9"}, "not modelyard.acceptance-results/v1 results"),
        ({"schema": "modelyard.acceptance-results/v1"}, "missing required field `deployments`"),
        (
            {**RESULTS, "deployments": {"cheap": {"x": {"pass_rate": 1.5, "accepted": True}}}},
            "<= 1.0",
        ),
        ({**RESULTS, "deployments": {"cheap": {"x": {"pass_rate": 0.5}}}}, "accepted"),
    ],
)
def test_a_missing_or_bad_file_is_an_error_at_the_line_of_quality_from(
    tmp_path: Path, results: Any, needle: str
) -> None:
    path = write(tmp_path, results if results is not None else RESULTS)
    if results is None:
        (tmp_path / "results" / "accept.json").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 7 and info.value.key == "quality_from"
    assert str(info.value).startswith(f"{path}:7: quality_from: ")
    assert needle in str(info.value)


def test_an_unknown_deployment_is_a_warning_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = {
        **RESULTS,
        "deployments": {**RESULTS["deployments"], "retired": {"x": {"pass_rate": 1, "accepted": True}}},
    }
    with caplog.at_level(logging.WARNING, logger="modelyard.config"):
        config = load_config(write(tmp_path, results))
    assert config.deployment("retired") is None
    assert any("retired" in r.getMessage() and ":7: quality_from:" in r.getMessage() for r in caplog.records)
    cheap = config.deployment("cheap")
    assert cheap is not None and cheap.quality_for("classification") == 0.97  # the rest still applied


def test_without_quality_from_nothing_changes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, config=CONFIG.replace("quality_from: results/accept.json\n", "")))
    cheap = config.deployment("cheap")
    assert cheap is not None and cheap.acceptance is None and cheap.quality_for("extraction") == 0.6


def test_mapping_keys_are_named_in_errors_not_dots() -> None:
    base = "deployments:\n  - {name: a, provider: openai, model: m}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(
            base + "models:\n  x:\n    candidates: [a]\n    guardrails: [{check: json_schema, action: redact}]\n"
        )
    assert info.value.key == "models.x.guardrails[0]" and info.value.line == 6
    with pytest.raises(ConfigError) as info:
        parse_config(
            base + "guardrails:\n  fine: [{check: pii}]\n  strict:\n    - {check: pii}\n"
            "    - {check: json_schema, action: redact}\n"
        )
    assert info.value.key == "guardrails.strict[1]" and info.value.line == 7
