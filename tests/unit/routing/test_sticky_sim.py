"""Sticky sessions against the simulator's prompt cache: the Router in process, a 3-deployment group."""

from __future__ import annotations

from typing import Any

import msgspec

from modelyard.config.loader import parse_config
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest
from modelyard.sim.fleet import fleet_from_dict
from modelyard.sim.server import SimServer

NAMES = ("d1", "d2", "d3")
SYSTEM = "You are a coding agent. Read before you write; run the tests after each change. " * 60


def yaml(base: str, sticky: bool) -> str:
    deps = "\n".join(
        f"  - {{name: {n}, provider: openai, model: {n}, api_base: '{base}', api_key: k, "
        "price: {input: 3.0, cached_input: 0.3, output: 15.0}}"
        for n in NAMES
    )
    return (
        f"deployments:\n{deps}\nmodels:\n  agent: {{candidates: [d1, d2, d3], strategy: weighted, "
        f"options: {{sticky: {str(sticky).lower()}}}}}\nrouting: {{seed: 5}}\n"
    )


async def _sessions(base: str, sticky: bool) -> tuple[float, int, float]:
    """(cached share, hops, cost) of 3 sessions x 8 turns."""
    prompt = cached = hops = 0
    cost = 0.0
    async with Router(parse_config(yaml(base, sticky))) as router:
        for s in range(3):
            history: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"task {s}"},
            ]
            last = None
            for turn in range(8):
                raw = {"model": "agent", "messages": history, "max_tokens": 50}
                req = msgspec.convert(raw, ChatRequest)
                success = await router.complete(req, raw, chat_features(req, session=router.table.session(req, "k")))
                usage = success.completion.body["usage"]
                prompt += usage["prompt_tokens"]
                cached += usage["prompt_tokens_details"]["cached_tokens"]
                cost += success.cost_usd
                hops += last is not None and success.deployment.name != last
                last = success.deployment.name
                history.append({"role": "assistant", "content": "done"})
                history.append({"role": "user", "content": f"turn {turn}: next step please. " * 30})
    return cached / prompt, hops, cost


async def test_sticky_sessions_keep_their_prompt_cache_and_cost_less() -> None:
    fleet = fleet_from_dict({"seed": 1, "models": [{"name": n, "output_tokens": 20} for n in NAMES]})
    with SimServer(fleet, instant=True) as sim:
        share_off, hops_off, cost_off = await _sessions(sim.openai_base, sticky=False)
    with SimServer(fleet, instant=True) as sim:
        share_on, hops_on, cost_on = await _sessions(sim.openai_base, sticky=True)
    assert hops_on == 0 and hops_off > 0
    assert share_on > share_off + 0.03
    assert cost_on < cost_off
