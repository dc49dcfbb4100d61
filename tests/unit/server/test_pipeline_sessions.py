"""Sticky sessions through the gateway's pipeline: the ingress derives the session (header, body, prefix) and the
planner keeps a session on one deployment of a weighted group, while sessions still spread by weight."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from modelyard.config.loader import parse_config
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.server.app import Gateway
from tests.unit.server.test_pipeline import Recorder, call

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m, api_base: "http://a/v1", price: {input: 1, output: 1}}
  - {name: b, provider: openai, model: m, api_base: "http://b/v1", price: {input: 1, output: 1}}
  - {name: c, provider: openai, model: m, api_base: "http://c/v1", price: {input: 1, output: 1}}
models:
  agent:
    strategy: weighted
    candidates: [a, b, c]
  loose:
    strategy: weighted
    candidates: [a, b, c]
    options: {sticky: false}
"""


def gateway() -> tuple[Gateway, Recorder]:
    gw = Gateway(parse_config(CONFIG))
    transport = Recorder({})
    router = gw.router
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=dict(router.adapters),
        health=router.health,
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(retries=0),
        rng=random.Random(0),
    )
    return gw, transport


def turn(model: str, first: str, n: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": first}]
    for i in range(n):
        messages += [{"role": "assistant", "content": f"step {i}"}, {"role": "user", "content": f"go on {i}"}]
    return {"model": model, "messages": messages, **extra}


async def served_by(gw: Gateway, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    answer = await call(gw, "POST", "/v1/chat/completions", body, headers)
    assert answer.status == 200, answer.body
    return answer.headers["x-modelyard-model"]


async def test_a_conversation_stays_on_one_deployment_as_it_grows() -> None:
    gw, _ = gateway()
    for session in range(6):
        seen = {await served_by(gw, turn("agent", f"task {session}", n)) for n in range(8)}
        assert len(seen) == 1, seen  # the prefix (system + first user message) names the session


async def test_the_session_header_and_prompt_cache_key_name_the_session() -> None:
    gw, _ = gateway()
    for sid in ("s1", "s2", "s3", "s4"):
        by_header = {await served_by(gw, turn("agent", f"q{i}", 0), {"x-modelyard-session": sid}) for i in range(5)}
        by_body = {await served_by(gw, turn("agent", f"q{i}", 0, prompt_cache_key=sid)) for i in range(5)}
        assert len(by_header) == 1 and len(by_body) == 1
        assert by_header == by_body  # the same id, the same deployment, wherever the client put it


async def test_sessions_still_spread_by_weight_and_a_non_sticky_model_does_not_stick() -> None:
    gw, _ = gateway()
    spread = Counter([await served_by(gw, turn("agent", "x", 0), {"x-modelyard-session": f"s{i}"}) for i in range(60)])
    assert set(spread) == {"a", "b", "c"} and min(spread.values()) >= 8
    loose = {await served_by(gw, turn("loose", "x", 0), {"x-modelyard-session": "same"}) for _ in range(30)}
    assert len(loose) > 1  # stickiness off: the weighted draw moves it


async def test_explain_names_the_sticky_choice() -> None:
    gw, _ = gateway()
    answer = await call(
        gw,
        "POST",
        "/v1/chat/completions",
        turn("agent", "x", 0),
        {"x-modelyard-session": "s", "x-modelyard-explain": "1"},
    )
    assert answer.status == 200
    assert f"sticky: {answer.headers['x-modelyard-model']}" in answer.headers["x-modelyard-explain"]
