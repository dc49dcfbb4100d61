"""Rules tables, the planner, per-request overrides and explanations."""

from __future__ import annotations

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.config.routing_options import RuleSpec, as_struct
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.routing.rules import RuleError, compile_rules, first_match
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.constraints import Constraints
from modelyard.schema.errors import GatewayError

CONFIG = """
deployments:
  - {name: opus, provider: anthropic, model: claude-opus, price: {input: 15, output: 75}, quality: 0.95}
  - {name: sonnet, provider: anthropic, model: claude-sonnet, price: {input: 3, output: 15}, quality: 0.85}
  - {name: haiku, provider: anthropic, model: claude-haiku, price: {input: 0.8, output: 4}, quality: 0.6}
  - {name: mini, provider: openai, model: gpt-mini, price: {input: 0.15, output: 0.6}, quality: 0.55}
models:
  fast:
    strategy: cost
    candidates: [mini, haiku]
  agent:
    strategy: rules
    candidates: [opus, sonnet, haiku]
    rules:
      - when: {task: [reasoning, coding], complexity: high}
        use: [opus, sonnet]
      - when: {task: [reasoning, coding]}
        use: [sonnet]
      - when: {task: search}
        use: fast
      - when: {prompt_tokens: {gt: 5000}}
        use: [sonnet]
      - when: {has_tools: true}
        use: [sonnet, opus]
      - when: {tags: [vip]}
        use: [opus]
      - use: [haiku]
    fallbacks: [fast]
"""


@pytest.fixture
def router() -> Router:
    return Router(parse_config(CONFIG), seed=1)


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (RequestFeatures(task="coding", complexity="high"), ["opus", "sonnet"]),
        (RequestFeatures(task="reasoning", complexity="low"), ["sonnet"]),
        (RequestFeatures(task="search"), ["mini", "haiku"]),
        (RequestFeatures(prompt_tokens=6000), ["sonnet"]),
        (RequestFeatures(needs_tools=True), ["sonnet", "opus"]),
        (RequestFeatures(tags=("vip",)), ["opus"]),
        (RequestFeatures(task="chat"), ["haiku"]),
    ],
)
def test_route_to_agent_as_a_rules_table(router, features, expected):
    plan = router.plan("agent", features, explain=True)
    assert [d.name for d in plan.order] == expected
    assert plan.fallbacks == ("fast",)


def test_explain_lists_chosen_kept_and_skipped(router):
    plan = router.plan(
        "fast",
        RequestFeatures(prompt_tokens=10, max_output_tokens=50),
        explain=True,
        overrides=ModelyardOptions(constraints=Constraints(max_cost_per_request=0.0001)),
    )
    explained = plan.explain()
    decisions = {c["deployment"]: c["decision"] for c in explained["candidates"]}
    assert decisions == {"mini": "chosen", "haiku": "skipped"}
    skipped = next(c for c in explained["candidates"] if c["deployment"] == "haiku")
    assert "max_cost_per_request" in skipped["reason"]
    assert explained["strategy"] == "cost"


def test_overrides_strategy_candidates_and_direct_deployment(router):
    plan = router.plan("fast", RequestFeatures(), strategy="priority")
    assert plan.strategy == "priority"
    plan = router.plan("fast", RequestFeatures(), overrides=ModelyardOptions(candidates=["opus", "haiku"]))
    assert [d.name for d in plan.order] == ["haiku", "opus"]  # cost strategy over the override's candidates
    plan = router.plan("sonnet", RequestFeatures())
    assert [d.name for d in plan.order] == ["sonnet"] and plan.strategy == "direct"


def test_unknown_model_and_unknown_override(router):
    with pytest.raises(GatewayError) as info:
        router.plan("nope", RequestFeatures())
    assert info.value.status == 404 and info.value.code == "model_not_found"
    with pytest.raises(GatewayError) as info:
        router.plan("fast", RequestFeatures(), overrides=ModelyardOptions(candidates=["ghost"]))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"when": {"task": "x"}, "use": ["ghost"]}], "unknown deployment"),
        ([{"use": "ghost"}], "neither a model nor a deployment"),
        ([{"use": "m"}], "cannot delegate to its own model"),
        ([{"use": []}], "must name a model or list deployments"),
        ([{"when": {"prompt_tokens": {}}, "use": ["a"]}], "prompt_tokens needs"),
    ],
)
def test_rule_errors_are_clear(rules, message):
    specs = [as_struct(rule, RuleSpec) for rule in rules]
    with pytest.raises(RuleError, match=message):
        compile_rules(specs, "m", {"m", "other"}, {"a"})


@pytest.mark.parametrize(
    "rule",
    [
        {"when": {"colour": "red"}, "use": ["a"]},
        {"when": {"prompt_tokens": {"about": 3}}, "use": ["a"]},
        {"when": {"task": "x"}, "then": ["a"]},
        {"when": {"has_tools": "maybe"}, "use": ["a"]},
    ],
)
def test_a_rule_of_the_wrong_shape_is_refused_when_built(rule):
    with pytest.raises(msgspec.ValidationError):
        as_struct(rule, RuleSpec)


def test_rule_conditions_match_and_explain_themselves():
    specs = [
        as_struct(rule, RuleSpec)
        for rule in (
            {"when": {"task": ["reasoning", "coding"], "complexity": "high"}, "use": ["a"]},
            {"when": {"metadata.tier": [1, "gold"], "tags": "vip"}, "use": ["a"]},
            {"when": {"prompt_tokens": {"gt": 100, "lte": 200}, "has_tools": True}, "use": "other"},
            {"when": {"prompt_tokens": 7, "stream": False}, "use": ["a"]},
            {"use": ["a"]},
        )
    ]
    rules = compile_rules(specs, "m", {"m", "other"}, {"a"})
    assert [rule.text for rule in rules] == [
        "task=['reasoning', 'coding'], complexity=high",
        "tags=vip, metadata.tier=[1, 'gold']",
        "has_tools=True, prompt_tokens={'gt': 100, 'lte': 200}",
        "stream=False, prompt_tokens=7",
        "default",
    ]

    def first(**features):
        rule = first_match(rules, RequestFeatures(**features))
        return rule.index if rule else None

    assert first(task="coding", complexity="high") == 0
    assert first(task="coding", complexity="low") == 4
    assert first(metadata={"tier": "1"}, tags=("vip",)) == 1
    assert first(metadata={"tier": "gold"}) == 4  # the tag is missing
    assert first(prompt_tokens=150, needs_tools=True) == 2
    assert first(prompt_tokens=250, needs_tools=True) == 4
    assert first(prompt_tokens=7) == 3
    assert first(prompt_tokens=7, stream=True) == 4


def test_config_with_bad_strategy_fails_at_load():
    bad = CONFIG.replace("strategy: cost", "strategy: cheapest-ish")
    with pytest.raises(RuleError, match="unknown strategy"):
        Router(parse_config(bad))
