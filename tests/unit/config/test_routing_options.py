"""A model group's constraints, options and rules are typed: a typo is a `file:line: key` error, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.config.loader import ConfigError, ConfigErrors, parse_config
from modelyard.config.routing_options import Constraints, ModelOptions, RuleSpec, RuleWhen, TokenBounds
from modelyard.routing.router import Router

DEPLOYMENTS = """\
deployments:
  - {name: a, provider: openai, model: m-a, api_base: "http://a/v1", quality: 0.9}
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", quality: 0.5}
"""

TYPOS = (
    DEPLOYMENTS
    + """\
models:
  smart:
    strategy: cost
    candidates: [a, b]
    options: {max_attempt: 3}
    constraints:
      min_qualty: 0.9
  agent:
    strategy: rules
    candidates: [a, b]
    rules:
      - when: {task: coding}
        use: [a]
      - when:
          taks: search
        use: [b]
      - use: [b]
"""
)

EXPECTED = [
    "cfg.yaml:8: models.smart.options.max_attempt: Object contains unknown field `max_attempt`",
    "cfg.yaml:10: models.smart.constraints.min_qualty: Object contains unknown field `min_qualty`",
    "cfg.yaml:18: models.agent.rules[1].when.taks: Object contains unknown field `taks`",
]


def test_every_typo_of_every_group_is_reported_with_its_line() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(TYPOS, source="cfg.yaml")
    assert [str(error) for error in info.value.errors] == EXPECTED
    assert str(info.value) == "\n".join(EXPECTED)
    assert isinstance(info.value, ConfigError) and info.value.line == 8  # callers catching ConfigError still do


def test_modelyard_check_reports_all_three(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(TYPOS, encoding="utf-8")
    result = CliRunner().invoke(app, ["check", "-c", str(path)], terminal_width=400)
    assert result.exit_code == 2
    shown = " ".join(result.output.split())
    assert shown.count("error:") == 3
    for line in EXPECTED:
        assert line.replace("cfg.yaml", str(path)) in shown


def test_a_group_error_is_reported_beside_an_error_elsewhere() -> None:
    text = TYPOS.replace("quality: 0.5}", "quality: 0.5, wieght: 2}")
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, source="cfg.yaml")
    assert [error.line for error in info.value.errors] == [3, 8, 10, 18]
    assert info.value.errors[0].key == "deployments[1].wieght"


def test_adapter_option_and_provider_errors_are_reported_with_the_groups() -> None:
    """A deployment's options typo or unknown provider does not hide the model groups' typos below it."""
    options_typo = TYPOS.replace('api_base: "http://a/v1"', 'api_base: "http://a/v1", options: {stream_usag: false}')
    with pytest.raises(ConfigErrors) as info:
        parse_config(options_typo, source="cfg.yaml")
    assert [str(error) for error in info.value.errors] == [
        "cfg.yaml:2: deployments[0].options.stream_usag: Object contains unknown field `stream_usag`",
        *EXPECTED,
    ]
    provider_typo = TYPOS.replace("name: b, provider: openai", "name: b, provider: opneai")
    with pytest.raises(ConfigErrors) as info:
        parse_config(provider_typo, source="cfg.yaml")
    assert [error.key for error in info.value.errors] == [
        "deployments[1].provider",
        "models.smart.options.max_attempt",
        "models.smart.constraints.min_qualty",
        "models.agent.rules[1].when.taks",
    ]
    assert "unknown provider 'opneai'" in str(info.value.errors[0])


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "constraints: {max_latency_ms: -1}",
            "cfg.yaml:7: models.m.constraints.max_latency_ms: Expected `float` >= 0.0",
        ),
        (
            "constraints: {min_quality: .nan}",
            "cfg.yaml:7: models.m.constraints.min_quality: Expected `float` >= -1000000.0",
        ),
        (
            "constraints: {max_cost_per_request: x}",
            "models.m.constraints.max_cost_per_request: Expected `float | null`",
        ),
        ("options: {max_attempts: 0}", "cfg.yaml:7: models.m.options.max_attempts: Expected `int` >= 1"),
        ("options: {lambda: -0.1}", "cfg.yaml:7: models.m.options.lambda: Expected `float` >= 0.0"),
        ("options: {weighted_tiers: sometimes}", "models.m.options.weighted_tiers: Expected `bool`"),
        ("rules: [{when: {prompt_tokens: {about: 3}}, use: [a]}]", "models.m.rules[0].when.prompt_tokens.about: "),
        ("rules: [{when: {task: x}, then: [a]}]", "cfg.yaml:7: models.m.rules[0].then: Object contains unknown field"),
        ("rules: [{when: {metdata.tier: gold}, use: [a]}]", "models.m.rules[0].when.metdata.tier: Object contains"),
        ("rules: [{when: {has_tools: maybe}, use: [a]}]", "models.m.rules[0].when.has_tools: Expected `bool | null`"),
        ("rules: [{when: {task: x}}]", "models.m.rules[0]: Object missing required field `use`"),
    ],
)
def test_values_are_checked_with_file_line_and_key(section: str, expected: str) -> None:
    text = DEPLOYMENTS + f"models:\n  m:\n    candidates: [a, b]\n    {section}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cfg.yaml")
    assert expected in str(info.value)


VALID = (
    DEPLOYMENTS
    + """\
models:
  cheap:
    strategy: cost
    candidates: [a, b]
    constraints: {min_quality: 0.7, max_latency_ms: 4000, max_cost_per_request: 0.05}
    options: {max_attempts: 3, backoff_base_s: 0.2, max_backoff_s: 1, retry_after_cap_s: 2,
              failover_on_content_filter: true}
  tiers:
    candidates: [a, b]
    options: {weighted_tiers: true}
  fast:
    strategy: least-latency
    candidates: [a, b]
    options: {latency_buffer: 0.25}
  learned:
    strategy: learned
    candidates: [a, b]
    options: {lambda: 0.3}
  agent:
    strategy: rules
    candidates: [a, b]
    rules:
      - when: {task: [reasoning, coding], complexity: high, metadata.tier: gold, metadata.team: [x, 1]}
        use: [a]
        strategy: cost
      - when: {prompt_tokens: {gt: 8000}, has_tools: true, tags: batch, key: ci}
        use: fast
      - when: {metadata: {tier: silver}, json: false, stream: true, has_images: false}
        use: b
      - when: null
        use: [b]
"""
)


def test_valid_settings_load_into_their_structs() -> None:
    config = parse_config(VALID, source="cfg.yaml")
    models = config.models
    assert models["cheap"].constraints == Constraints(min_quality=0.7, max_latency_ms=4000, max_cost_per_request=0.05)
    assert models["cheap"].options == ModelOptions(
        max_attempts=3, backoff_base_s=0.2, max_backoff_s=1, retry_after_cap_s=2, failover_on_content_filter=True
    )
    assert models["tiers"].options.weighted_tiers and models["fast"].options.latency_buffer == 0.25
    assert models["learned"].options.lambda_ == 0.3 and models["tiers"].options.lambda_ is None
    rules = models["agent"].rules
    assert rules[0] == RuleSpec(
        use=["a"],
        strategy="cost",
        when=RuleWhen(task=["reasoning", "coding"], complexity="high", metadata={"tier": "gold", "team": ["x", 1]}),
    )
    assert rules[1].when == RuleWhen(prompt_tokens=TokenBounds(gt=8000), has_tools=True, tags="batch", key="ci")
    assert rules[2].when == RuleWhen(metadata={"tier": "silver"}, json=False, stream=True, has_images=False)
    assert rules[3] == RuleSpec(use=["b"])
    assert Router(config).health is not None  # the routing table compiles every rule


def test_settings_given_in_code_as_mappings_are_converted() -> None:
    config = parse_config(DEPLOYMENTS + "models:\n  m:\n    candidates: [a]\n", source="cfg.yaml")
    group = type(config.models["m"])(
        candidates=["a"],
        constraints={"min_quality": 0.5},  # type: ignore[arg-type]
        options={"lambda": 0.1},  # type: ignore[arg-type]
        rules=[{"when": {"metadata.tier": "gold"}, "use": ["a"]}],  # type: ignore[list-item]
    )
    assert group.constraints == Constraints(min_quality=0.5) and group.options.lambda_ == 0.1
    assert group.rules == [RuleSpec(use=["a"], when=RuleWhen(metadata={"tier": "gold"}))]


def test_request_overrides_replace_only_the_bounds_they_set() -> None:
    model = Constraints(min_quality=0.7, max_latency_ms=4000)
    assert model.overridden_by(None) is model
    assert model.overridden_by(Constraints()) is model
    assert model.overridden_by(Constraints(min_quality=0.9, max_cost_per_request=0.01)) == Constraints(
        min_quality=0.9, max_latency_ms=4000, max_cost_per_request=0.01
    )


COMPILE_MISTAKES = (
    DEPLOYMENTS
    + """\
models:
  smart:
    strategy: cots
    candidates: [a, b]
  agent:
    strategy: rules
    candidates: [a, b]
    rules:
      - when: {task: coding}
        use: [zz]
  quick:
    candidates: [a]
    hedge_after_ms: soon
"""
)


@pytest.mark.parametrize("command", [["check", "-c"], ["serve", "--port", "1", "-c"]])
def test_routing_table_mistakes_are_listed_at_their_lines(tmp_path: Path, command: list[str]) -> None:
    """Mistakes found when the routing table compiles (after the schema passed) are listed like the schema's,
    each at its file:line, by `check` and by `serve`, which refuses to start on them."""
    path = tmp_path / "cfg.yaml"
    path.write_text(COMPILE_MISTAKES, encoding="utf-8")
    result = CliRunner().invoke(app, [*command, str(path)], terminal_width=400)
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert shown.count("error:") == 3, shown
    for line, key in (
        (6, "models.smart.strategy: unknown strategy 'cots'"),
        (13, "models.agent.rules[0].use: unknown deployment 'zz'"),
        (16, "models.quick.hedge_after_ms: a number of milliseconds"),
    ):
        assert f"{path}:{line}: {key}" in shown
