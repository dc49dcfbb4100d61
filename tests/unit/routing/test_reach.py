"""What a model name can reach, a key's scope, and that neither the planner nor the executor's walk ever
leaves it (fallback plans and hedged legs included)."""

from __future__ import annotations

import pytest

from modelyard.config.loader import parse_config
from modelyard.config.model import Price
from modelyard.routing.reach import Scope, dearest_per_token, reached, request_reach
from modelyard.routing.router import Router
from modelyard.routing.table import RoutingTable
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.errors import ErrorKind, GatewayError
from tests.unit.routing.test_executor import make, request

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m-a, price: {input: 1, output: 2}}
  - {name: b, provider: openai, model: m-b, price: {input: 5, output: 9, cache_write: 7}}
  - {name: c, provider: openai, model: m-c, price: {input: 1, output: 2, reasoning: 30}}
  - {name: d, provider: openai, model: m-d}
models:
  small: {candidates: [a], fallbacks: [big]}
  big: {candidates: [b], fallbacks: [small]}
  routed:
    strategy: rules
    candidates: [a]
    rules:
      - {when: {task: code}, use: [c]}
      - {use: small}
  lone: {candidates: [d]}
"""


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable.from_config(parse_config(CONFIG))


def test_fallbacks_rules_and_cycles_are_followed(table: RoutingTable) -> None:
    assert reached(table, ["small"]) == (frozenset({"small", "big"}), frozenset({"a", "b"}))
    assert reached(table, ["routed"])[1] == frozenset({"a", "b", "c"})
    assert reached(table, ["d"]) == (frozenset(), frozenset({"d"}))
    assert reached(table, ["nope"]) == (frozenset(), frozenset())


def test_overrides_widen_a_request_reach(table: RoutingTable) -> None:
    assert request_reach(table, "lone", None) == frozenset({"d"})
    widened = request_reach(table, "lone", ModelyardOptions(candidates=["c"], fallbacks=["small"]))
    assert widened == frozenset({"a", "b", "c", "d"})


def test_a_scope_refuses_overrides_outside_it(table: RoutingTable) -> None:
    scope = Scope.of(table, ["small"])
    assert scope.refusal(None) is None
    assert scope.refusal(ModelyardOptions(candidates=["b"], fallbacks=["big", "a"])) is None
    assert scope.refusal(ModelyardOptions(candidates=["c"]))[0] == "modelyard.candidates"  # type: ignore[index]
    assert scope.refusal(ModelyardOptions(fallbacks=["lone"]))[0] == "modelyard.fallbacks"  # type: ignore[index]
    assert scope.refusal(ModelyardOptions(fallbacks=["d"]))[0] == "modelyard.fallbacks"  # type: ignore[index]


def test_the_dearest_price_counts_cache_writes_and_reasoning() -> None:
    prices = {
        "a": Price(input=1, output=2),
        "b": Price(input=5, output=9, cache_write=7),
        "c": Price(input=1, output=2, reasoning=30),
        "d": None,
    }
    assert dearest_per_token(prices, ["a", "b", "c", "d"]) == (7000.0, 30000.0)
    assert dearest_per_token(prices, ["d"]) == (0.0, 0.0)


async def test_the_walk_never_leaves_the_allowed_set_through_fallbacks() -> None:
    """`solo` falls back to `m2` (deployment c); a key allowed only `a` must not reach c even when a fails."""
    router, transport = make({"a": [ErrorKind.SERVER]}, retries=0)
    req, raw, features = request("solo")
    features.allowed = frozenset({"a"})
    with pytest.raises(Exception):  # noqa: B017 - the failure of a; what matters is where it did not go
        await router.complete(req, raw, features)
    assert transport.calls == ["a"]
    features.allowed = None
    transport.calls.clear()
    result = await router.complete(req, raw, features)
    assert transport.calls == ["a", "c"] and result.deployment.name == "c"


async def test_hedged_legs_stay_inside_the_allowed_set() -> None:
    router, transport = make({"a": [("sleep", 0.2)]})
    req, raw, features = request("hedged")
    features.allowed = frozenset({"a", "c"})
    result = await router.complete(req, raw, features)
    assert "b" not in transport.calls and result.deployment.name in {"a", "c"}


def test_the_planner_skips_candidates_outside_the_allowed_set(table: RoutingTable) -> None:
    router = Router(parse_config(CONFIG))
    _, _, features = request("routed")
    features.allowed = frozenset({"c"})
    plan = router.plan("small", features, overrides=ModelyardOptions(candidates=["a", "b"]))
    assert plan.order == []
    assert {s.deployment for s in plan.ctx.skipped} == {"a", "b"}
    with pytest.raises(GatewayError) as refused:
        router.plan("d", features)
    assert refused.value.status == 403
