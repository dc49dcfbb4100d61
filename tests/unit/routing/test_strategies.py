"""Strategies and filters: unit tests plus hypothesis properties for the invariants."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.config.model import Limits
from modelyard.routing.candidates import filter_candidates
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import BreakerPolicy, HealthTracker
from modelyard.routing.limits import DeploymentLimits
from modelyard.routing.strategies import (
    cheapest,
    least_busy,
    least_latency,
    priority,
    weighted,
)
from modelyard.schema.errors import ErrorKind

from .helpers import ctx, dep


def test_priority_keeps_listed_order_within_one_tier():
    deps = [dep("a"), dep("b"), dep("c")]
    assert [d.name for d in priority(deps, ctx(deployments=deps))] == ["a", "b", "c"]


def test_priority_orders_tiers_and_weights_within_a_tier():
    deps = [dep("backup", tier=1), dep("p1", tier=0, weight=3), dep("p2", tier=0, weight=1)]
    firsts = Counter()
    for seed in range(2000):
        order = priority(deps, ctx(deployments=deps, seed=seed, explain=False))
        assert order[-1].name == "backup"
        firsts[order[0].name] += 1
    assert 0.70 < firsts["p1"] / 2000 < 0.80  # weight 3 of 4


def test_weighted_respects_weights_within_tolerance():
    deps = [dep("a", weight=1), dep("b", weight=2), dep("c", weight=7)]
    counts = Counter(weighted(deps, ctx(deployments=deps, seed=s, explain=False))[0].name for s in range(5000))
    assert abs(counts["a"] / 5000 - 0.1) < 0.02
    assert abs(counts["b"] / 5000 - 0.2) < 0.025
    assert abs(counts["c"] / 5000 - 0.7) < 0.025


def test_least_latency_prefers_fastest_and_measures_unmeasured_first():
    deps = [dep("slow"), dep("fast"), dep("new")]
    health = HealthTracker()
    for _ in range(5):
        health.on_start("slow", 0)
        health.on_success("slow", 0, 900)
        health.on_start("fast", 0)
        health.on_success("fast", 0, 100)
    order = least_latency(deps, ctx(deployments=deps, health=health))
    assert [d.name for d in order] == ["new", "fast", "slow"]
    order = least_latency(deps[:2], ctx(deployments=deps, health=health))
    assert [d.name for d in order] == ["fast", "slow"]


def test_least_latency_buffer_shares_load_between_near_equals():
    deps = [dep("a"), dep("b"), dep("c")]
    health = HealthTracker()
    for name, ms in (("a", 100), ("b", 105), ("c", 300)):
        health.on_start(name, 0)
        health.on_success(name, 0, ms)
    firsts = Counter(
        least_latency(deps, ctx(deployments=deps, health=health, seed=s, explain=False))[0].name for s in range(1000)
    )
    assert firsts["c"] == 0
    assert firsts["a"] > 350 and firsts["b"] > 350


def test_least_latency_uses_ttft_when_streaming():
    deps = [dep("a"), dep("b")]
    health = HealthTracker()
    health.on_start("a", 0)
    health.on_success("a", 0, total_ms=1000, ttft_ms=50)
    health.on_start("b", 0)
    health.on_success("b", 0, total_ms=500, ttft_ms=400)
    streaming = ctx(RequestFeatures(stream=True), deployments=deps, health=health, options={"latency_buffer": 0})
    assert least_latency(deps, streaming)[0].name == "a"
    plain = ctx(RequestFeatures(stream=False), deployments=deps, health=health, options={"latency_buffer": 0})
    assert least_latency(deps, plain)[0].name == "b"


def test_least_busy_picks_fewest_in_flight():
    deps = [dep("a"), dep("b"), dep("c")]
    health = HealthTracker()
    for name, n in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(n):
            health.on_start(name, 0)
    assert [d.name for d in least_busy(deps, ctx(deployments=deps, health=health))] == ["b", "c", "a"]


def test_cost_picks_cheapest_feasible_and_explains_skips():
    deps = [
        dep("big", price=(10, 30), quality=0.95),
        dep("mid", price=(1, 3), quality=0.8),
        dep("tiny", price=(0.1, 0.2), quality=0.5),
    ]
    c = ctx(deployments=deps, constraints={"min_quality": 0.7})
    order = cheapest(deps, c)
    assert [d.name for d in order] == ["mid", "big"]
    assert any(s.deployment == "tiny" and "quality" in s.reason for s in c.skipped)


def test_cost_constraints_latency_and_cost_cap():
    deps = [dep("slowcheap", price=(0.1, 0.1)), dep("fastdear", price=(5, 5))]
    health = HealthTracker()
    for _ in range(20):
        health.on_start("slowcheap", 0)
        health.on_success("slowcheap", 0, 5000)
    c = ctx(deployments=deps, health=health, constraints={"max_latency_ms": 1000})
    assert [d.name for d in cheapest(deps, c)] == ["fastdear"]
    # 100 prompt + 100 output tokens at $5/M each = $0.001
    c = ctx(deployments=deps, constraints={"max_cost_per_request": 0.0005})
    assert [d.name for d in cheapest(deps, c)] == ["slowcheap"]


def test_cost_quality_per_task():
    deps = [
        dep("coder", price=(1, 1), quality={"coding": 0.9, "default": 0.5}),
        dep("generalist", price=(2, 2), quality=0.8),
    ]
    coding = ctx(RequestFeatures(task="coding"), deployments=deps, constraints={"min_quality": 0.7})
    assert cheapest(deps, coding)[0].name == "coder"
    chat = ctx(RequestFeatures(task="chat"), deployments=deps, constraints={"min_quality": 0.7})
    assert [d.name for d in cheapest(deps, chat)] == ["generalist"]


def test_learned_uses_predicted_quality_and_falls_back_to_the_most_likely():
    from modelyard.routing.strategies import learned

    deps = [dep("cheap", price=(0.1, 0.1), quality=0.9), dep("strong", price=(5, 5), quality=0.9)]
    predicted = {"cheap": 0.3, "strong": 0.8}
    c = ctx(deployments=deps, constraints={"min_quality": 0.6})
    c.quality = lambda d: predicted[d.name]
    assert [d.name for d in learned(deps, c)] == ["strong"]  # predicted, not configured, quality decides
    c = ctx(deployments=deps, constraints={"min_quality": 0.95})
    c.quality = lambda d: predicted[d.name]
    assert [d.name for d in learned(deps, c)] == ["strong", "cheap"]  # nobody clears it: most likely first
    # quality - lambda x cost / dearest cost: cheap costs 2e-5 (0.02 of strong's 1e-3)
    c = ctx(deployments=deps, options={"lambda": 0.6})
    c.quality = lambda d: predicted[d.name]
    assert learned(deps, c)[0].name == "cheap"  # 0.3 - 0.012 = 0.288 against 0.8 - 0.6 = 0.2
    c = ctx(deployments=deps, options={"lambda": 0.4})
    c.quality = lambda d: predicted[d.name]
    assert learned(deps, c)[0].name == "strong"  # 0.292 against 0.4


def test_filters_context_window_capabilities_circuit_and_limits():
    deps = [
        dep("small-window", context_window=1000),
        dep("no-tools", capabilities=["vision"]),
        dep("open"),
        dep("limited", limits=Limits(rpm=1)),
        dep("ok"),
    ]
    health = HealthTracker(BreakerPolicy(failures=1, cooldown_s=60))
    health.on_start("open", 0)
    health.on_failure("open", 999.0, ErrorKind.SERVER)
    limits = DeploymentLimits()
    limits.take("limited", Limits(rpm=1), 1000.0, 10)
    features = RequestFeatures(prompt_tokens=900, max_output_tokens=200, needs_tools=True)
    c = ctx(features, deployments=deps, health=health, limits=limits)
    kept = filter_candidates(deps, c)
    assert [d.name for d in kept] == ["ok"]
    reasons = {s.deployment: s.reason for s in c.skipped}
    assert "context window" in reasons["small-window"]
    assert "tools" in reasons["no-tools"]
    assert "circuit open" in reasons["open"]
    assert "rpm" in reasons["limited"]


deployment_specs = st.lists(
    st.tuples(
        st.floats(min_value=0.01, max_value=50),  # input price
        st.floats(min_value=0.01, max_value=50),  # output price
        st.one_of(st.none(), st.floats(min_value=0, max_value=1)),  # quality
        st.one_of(st.none(), st.integers(min_value=100, max_value=5000)),  # context window
        st.booleans(),  # has tools
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    specs=deployment_specs,
    prompt=st.integers(min_value=1, max_value=4000),
    needs_tools=st.booleans(),
    min_quality=st.floats(min_value=0, max_value=1),
)
def test_property_never_choose_filtered_and_cost_is_cheapest_feasible(specs, prompt, needs_tools, min_quality):
    deps = [
        dep(f"d{i}", price=(pi, po), quality=q, context_window=w, capabilities=["tools"] if tools else ["vision"])
        for i, (pi, po, q, w, tools) in enumerate(specs)
    ]
    features = RequestFeatures(prompt_tokens=prompt, max_output_tokens=64, needs_tools=needs_tools)
    c = ctx(features, deployments=deps, constraints={"min_quality": min_quality}, explain=False)
    kept = filter_candidates(deps, c)
    skipped = {s.deployment for s in c.skipped}
    for d in kept:
        assert d.name not in skipped
        assert d.context_window is None or d.context_window >= prompt + 64
        assert d.has("tools") or not needs_tools
    order = cheapest(kept, c)
    feasible = [d for d in kept if d.quality is not None and d.quality >= min_quality]
    assert {d.name for d in order} == {d.name for d in feasible}
    if feasible:
        best = min(c.estimated_cost(d) for d in feasible)
        assert c.estimated_cost(order[0]) == best
        costs = [c.estimated_cost(d) for d in order]
        assert costs == sorted(costs)


@settings(max_examples=100, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=0.1, max_value=10), min_size=2, max_size=6),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_property_weighted_returns_a_permutation(weights, seed):
    deps = [dep(f"w{i}", weight=w) for i, w in enumerate(weights)]
    order = weighted(deps, ctx(deployments=deps, seed=seed, explain=False))
    assert sorted(d.name for d in order) == sorted(d.name for d in deps)
