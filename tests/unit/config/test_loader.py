"""Config loading: ${ENV} interpolation, validation errors with file, line and key."""

from __future__ import annotations

import pytest

from modelyard.config.loader import ConfigError, load_config, parse_config

BASE = """\
deployments:
  - name: gpt
    provider: openai
    model: gpt-4o
    api_key: ${OPENAI_API_KEY}
    price: {input: 2.5, output: 10}
    limits:
      rpm: ${RPM:-500}
models:
  smart:
    strategy: cost
    candidates: [gpt]
"""


def test_env_interpolation_with_default_and_number_conversion():
    config = parse_config(BASE, env={"OPENAI_API_KEY": "sk-test"})
    dep = config.deployments[0]
    assert dep.api_key == "sk-test" and dep.limits.rpm == 500
    assert parse_config(BASE, env={"OPENAI_API_KEY": "k", "RPM": "42"}).deployments[0].limits.rpm == 42


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (BASE, {}, "cfg.yaml:5: deployments[0].api_key: environment variable OPENAI_API_KEY is not set"),
        (
            BASE.replace("output: 10", "output: ten"),
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:6: deployments[0].price.output: Expected `float`, got `str`",
        ),
        (
            BASE.replace("provider: openai", "provider: openia"),
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:3: deployments[0].provider: unknown provider 'openia': one of openai, anthropic, gemini,",
        ),
        (
            BASE.replace("    model: gpt-4o\n", "    model: gpt-4o\n    modle: x\n"),
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:5: deployments[0].modle: Object contains unknown field `modle`",
        ),
        (
            BASE.replace("candidates: [gpt]", "candidates: [gtp]"),
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:12: models.smart.candidates[0]: unknown deployment 'gtp'",
        ),
        (
            BASE + "  other:\n    candidates: [gpt]\n    fallbacks: [nowhere]\n",
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:15: models.other.fallbacks[0]: unknown fallback 'nowhere'",
        ),
        ("deployments: [\n", {}, "cfg.yaml:2: invalid YAML"),
        (
            BASE.replace("  - name: gpt\n", "  - name: gpt\n    provider: openai\n", 1),
            {"OPENAI_API_KEY": "k"},
            "cfg.yaml:4: deployments[0].provider: duplicate key 'provider'",
        ),
    ],
)
def test_errors_name_file_line_and_key(text, env, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cfg.yaml", env=env)
    assert str(info.value).startswith(expected), str(info.value)


def test_duplicate_deployment_names():
    text = BASE.replace("models:", "  - {name: gpt, provider: openai, model: x}\nmodels:")
    with pytest.raises(ConfigError, match="duplicate deployment name 'gpt'"):
        parse_config(text, source="c.yaml", env={"OPENAI_API_KEY": "k"})


def test_load_config_from_env_var_and_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "my.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("MODELYARD_CONFIG", str(path))
    assert load_config().source == str(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


QUEUE_BASE = """\
deployments:
  - {name: d, provider: openai, model: m, api_base: "http://x/v1", limits: LIMITS}
models:
  m: {candidates: [d], fallbacks: FALLBACKS}
QUEUE
"""


@pytest.mark.parametrize(
    ("limits", "fallbacks", "queue", "expected"),
    [
        ("{rpm: 0}", "[]", "", "deployments[0].limits.rpm"),
        ("{rpm: -5}", "[]", "", "deployments[0].limits.rpm"),
        ("{burst_s: 0}", "[]", "", "deployments[0].limits.burst_s"),
        ("{burst_s: .nan}", "[]", "", "deployments[0].limits.burst_s"),
        ("{burst_s: .inf}", "[]", "", "deployments[0].limits.burst_s"),
        ("{max_concurrency: 0}", "[]", "", "deployments[0].limits.max_concurrency"),
        ("{}", "[{model: ghost, when: saturated}]", "", "models.m.fallbacks"),
        ("{}", "[{model: d, when: sometimes}]", "", "models.m.fallbacks[0]"),
        ("{}", "[]", "queue: {classes: [{name: a, weight: 0}], default_class: a}", "queue.classes[0].weight"),
        ("{}", "[]", "queue: {classes: [{name: a, weight: .nan}], default_class: a}", "queue.classes[0].weight"),
        ("{}", "[]", "queue: {classes: [{name: a}, {name: a}], default_class: a}", "queue"),
        ("{}", "[]", "queue: {default_class: nope}", "queue"),
        ("{}", "[]", "queue: {classes: [{name: 'a b'}], default_class: 'a b'}", "queue.classes[0].name"),
        ("{}", "[]", "queue: {max_wait_ms: -1}", "queue.max_wait_ms"),
        ("{}", "[]", "queue: {max_length: 0}", "queue.max_length"),
    ],
)
def test_bad_queue_and_limit_values_are_refused_at_load_naming_the_key(
    limits: str, fallbacks: str, queue: str, expected: str
) -> None:
    text = QUEUE_BASE.replace("LIMITS", limits).replace("FALLBACKS", fallbacks).replace("QUEUE", queue)
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="q.yaml")
    assert "q.yaml:" in str(info.value) and expected in str(info.value), str(info.value)


def test_fallback_marks_split_into_error_fallbacks_and_saturation_tiers() -> None:
    text = (
        QUEUE_BASE.replace("LIMITS", "{}").replace("QUEUE", "").replace("FALLBACKS", "[d, {model: d, when: saturated}]")
    )
    group = parse_config(text).models["m"]
    assert group.error_fallbacks == ["d"] and group.saturation_fallbacks == ["d"]
