"""Sticky sessions: rendezvous hashing of a session key keeps a conversation on one deployment."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.config.model import ModelGroup
from modelyard.routing.features import RequestFeatures, chat_features
from modelyard.routing.health import BreakerPolicy, HealthTracker
from modelyard.routing.plan import make_plan
from modelyard.routing.router import Router
from modelyard.routing.sticky import choose, explicit_session, rank, session_key
from modelyard.routing.strategies import cheapest, least_busy, least_latency, priority, weighted
from modelyard.routing.table import RoutingTable
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import ErrorKind

from .helpers import config, ctx, dep


def _req(*messages: dict[str, str], tools: bool = True) -> ChatRequest:
    body: dict[str, object] = {"model": "m", "messages": list(messages)}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    return msgspec.convert(body, ChatRequest)


SYSTEM = {"role": "system", "content": "You are a coding agent."}
FIRST = {"role": "user", "content": "Fix the failing test."}


def _session(name: str) -> RequestFeatures:
    return RequestFeatures(prompt_tokens=100, max_output_tokens=100, session=name)


# ------------------------------------------------------------------ the session key


def test_prefix_key_is_stable_while_the_conversation_grows():
    turn1 = _req(SYSTEM, FIRST)
    turn5 = _req(
        SYSTEM,
        FIRST,
        {"role": "assistant", "content": "Reading."},
        {"role": "user", "content": "Now run it again."},
    )
    assert session_key("k1", None, turn1) == session_key("k1", None, turn5)


def test_prefix_key_changes_with_system_tools_first_message_and_api_key():
    base = session_key("k1", None, _req(SYSTEM, FIRST))
    assert session_key("k2", None, _req(SYSTEM, FIRST)) != base
    assert session_key("k1", None, _req(SYSTEM, FIRST, tools=False)) != base
    assert session_key("k1", None, _req({"role": "system", "content": "Other."}, FIRST)) != base
    assert session_key("k1", None, _req(SYSTEM, {"role": "user", "content": "Another task."})) != base


def test_explicit_id_wins_over_prefix_and_is_scoped_by_key():
    a = session_key("k1", "conv-7", _req(SYSTEM, FIRST))
    b = session_key("k1", "conv-7", _req({"role": "user", "content": "unrelated"}))
    assert a == b
    assert session_key("k2", "conv-7", _req(SYSTEM, FIRST)) != a
    assert session_key("k1", "conv-8", _req(SYSTEM, FIRST)) != a


def test_chat_features_carries_the_session():
    req = _req(SYSTEM, FIRST)
    assert chat_features(req).session is None
    assert chat_features(req, session="s").session == "s"


# ------------------------------------------------------------------ rendezvous hashing


def test_weighted_rendezvous_splits_sessions_by_weight():
    deps = [dep("a", weight=3), dep("b", weight=1), dep("c", weight=0)]
    firsts = Counter(deps[choose(f"s{i}", deps)].name for i in range(4000))
    assert firsts["c"] == 0
    assert 0.71 < firsts["a"] / 4000 < 0.79


def test_removing_a_candidate_moves_only_its_sessions():
    deps = [dep(n) for n in "abcde"]
    before = {f"s{i}": deps[choose(f"s{i}", deps)].name for i in range(2000)}
    rest = [d for d in deps if d.name != "c"]
    after = {s: rest[choose(s, rest)].name for s in before}
    moved = {s for s in before if before[s] != after[s]}
    assert moved == {s for s in before if before[s] == "c"}
    assert 300 < len(moved) < 500  # about a fifth
    # ... and they come back when it returns
    assert {s: deps[choose(s, deps)].name for s in before} == before


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True),
    st.text(min_size=1, max_size=20),
    st.randoms(),
)
def test_choice_ignores_candidate_order(names, session, rnd):
    deps = [dep(n, weight=1 + ord(n) % 3) for n in names]
    shuffled = list(deps)
    rnd.shuffle(shuffled)
    assert deps[choose(session, deps)].name == shuffled[choose(session, shuffled)].name
    assert [d.name for d in rank(session, deps)] == [d.name for d in rank(session, shuffled)]


# ------------------------------------------------------------------ strategies


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_strategy_is_sticky_whatever_the_rng(seed):
    deps = [dep("a"), dep("b"), dep("c")]
    first = weighted(deps, ctx(_session("s1"), deployments=deps, seed=99))[0].name
    c = ctx(_session("s1"), deployments=deps, seed=seed)
    assert weighted(deps, c)[0].name == first
    assert c.sticky == first


def test_weighted_without_a_session_still_draws():
    deps = [dep("a"), dep("b"), dep("c")]
    firsts = {weighted(deps, ctx(deployments=deps, seed=s))[0].name for s in range(50)}
    assert firsts == {"a", "b", "c"}


def test_sticky_off_by_option_draws_at_random():
    deps = [dep("a"), dep("b"), dep("c")]
    firsts = {
        weighted(deps, ctx(_session("s1"), deployments=deps, seed=s, options={"sticky": False}))[0].name
        for s in range(50)
    }
    assert firsts == {"a", "b", "c"}


def test_deterministic_rankings_are_unchanged_by_a_session():
    deps = [dep("dear", price=(5, 5)), dep("cheap", price=(1, 1)), dep("mid", price=(2, 2))]
    for name in ("s1", "s2", "s3", "s4"):
        assert cheapest(deps, ctx(_session(name), deployments=deps))[0].name == "cheap"
        tiers = [dep("p", tier=0), dep("b", tier=1)]
        assert priority(tiers, ctx(_session(name), deployments=tiers))[0].name == "p"


def test_least_busy_sticks_among_near_ties_but_not_to_a_much_busier_one():
    deps = [dep("a"), dep("b"), dep("c")]
    sessions = [f"s{i}" for i in range(40)]
    health = HealthTracker()
    chosen = {s: least_busy(deps, ctx(_session(s), deployments=deps, health=health))[0].name for s in sessions}
    assert set(chosen.values()) == {"a", "b", "c"}  # sessions spread
    health.on_start("a", 0.0)  # one request more on `a`: within the slack, nobody moves
    again = {s: least_busy(deps, ctx(_session(s), deployments=deps, health=health))[0].name for s in sessions}
    assert again == chosen
    for _ in range(5):
        health.on_start("a", 0.0)  # far busier: its sessions go elsewhere
    busy = {s: least_busy(deps, ctx(_session(s), deployments=deps, health=health))[0].name for s in sessions}
    assert "a" not in busy.values()
    assert all(busy[s] == chosen[s] for s in sessions if chosen[s] != "a")


def test_least_latency_sticks_within_the_buffer_only():
    deps = [dep("a"), dep("b"), dep("slow")]
    health = HealthTracker()
    for name, ms in (("a", 100.0), ("b", 105.0), ("slow", 500.0)):
        health.on_start(name, 0.0)
        health.on_success(name, 0.0, ms)
    firsts = Counter(
        least_latency(deps, ctx(_session(f"s{i}"), deployments=deps, health=health, seed=i))[0].name for i in range(200)
    )
    assert set(firsts) == {"a", "b"}
    for i in range(20):
        picks = {
            least_latency(deps, ctx(_session(f"s{i}"), deployments=deps, health=health, seed=seed))[0].name
            for seed in range(5)
        }
        assert len(picks) == 1


# ------------------------------------------------------------------ the planner


def _table(strategy: str = "weighted", **options: object) -> RoutingTable:
    deps = [dep("d1"), dep("d2"), dep("d3")]
    group = ModelGroup(candidates=["d1", "d2", "d3"], strategy=strategy, options=dict(options))
    return RoutingTable.from_config(config(deps, {"agent": group}))


def test_same_session_same_choice_across_tables_and_health_moves_it():
    features = _session("conv-1")
    plans = [make_plan(_table(), "agent", ctx(features, seed=seed)) for seed in range(5)]
    first = {p.order[0].name for p in plans}
    assert len(first) == 1
    chosen = first.pop()
    explained = plans[0].explain()
    assert explained["sticky"] == chosen
    assert "sticky: " + chosen in explained["candidates"][0]["reason"]
    # its circuit opens: the session moves, deterministically
    health = HealthTracker(BreakerPolicy(failures=1, window_s=60, cooldown_s=30))
    health.on_start(chosen, 1000.0)
    health.on_failure(chosen, 1000.0, ErrorKind.SERVER)
    moved = {make_plan(_table(), "agent", ctx(features, health=health, seed=s)).order[0].name for s in range(5)}
    assert len(moved) == 1 and chosen not in moved


def test_table_says_which_models_want_a_session_key():
    assert _table("weighted").sticky("agent")
    assert _table("least-busy").sticky("agent")
    assert not _table("cost").sticky("agent")
    assert not _table("weighted", sticky=False).sticky("agent")
    assert not _table().sticky("unknown")


def test_table_session_is_computed_only_for_sticky_models() -> None:
    req = _req(SYSTEM, FIRST)
    req.model = "agent"
    assert _table("weighted").session(req, "k1") == session_key("k1", None, req)
    assert _table("weighted").session(req, "k1", "conv-9") == session_key("k1", "conv-9", req)
    assert _table("cost").session(req, "k1") is None
    req.model = "unknown"
    assert _table("weighted").session(req, "k1") is None


def test_explicit_session_sources_in_order() -> None:
    claude = {"metadata": {"user_id": "user_ab_account_cd_session_ef"}}
    assert explicit_session("h1", {"prompt_cache_key": "p1", **claude}) == "h1"
    assert explicit_session(None, {"prompt_cache_key": "p1", **claude}) == "p1"
    assert explicit_session(None, claude) == "user_ab_account_cd_session_ef"
    assert explicit_session(None, {"metadata": "nope", "prompt_cache_key": 5}) is None
    assert explicit_session(None, {"previous_response_id": "resp_1"}) is None
    assert explicit_session("", None) is None


def test_same_session_same_choice_across_router_instances() -> None:
    deps = [dep("d1"), dep("d2"), dep("d3")]
    cfg = config(deps, {"agent": ModelGroup(candidates=["d1", "d2", "d3"], strategy="weighted")})
    for name in ("conv-a", "conv-b", "conv-c", "conv-d"):
        picks = {Router(cfg, seed=seed).plan("agent", _session(name)).order[0].name for seed in range(6)}
        assert len(picks) == 1
    spread = {Router(cfg, seed=0).plan("agent", _session(f"c{i}")).order[0].name for i in range(30)}
    assert spread == {"d1", "d2", "d3"}
