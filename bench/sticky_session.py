"""Sticky sessions: cached-token share and cost of 20-turn agent sessions, stickiness on vs off.

An agent resends its whole, growing conversation every turn (same system prompt and tools). The simulator
caches prompt prefixes per model like providers do (sim/prompt_cache.py), so a turn served by the
deployment that served an earlier turn of the session reads that prefix at the cached price; a turn that
hops to another deployment pays the full input price. The model group has three equal-priced deployments
(strategy `weighted` or `least-busy`); `options.sticky` is switched on and off.

    .venv/bin/python bench/sticky_session.py                    # through the gateway over HTTP
    .venv/bin/python bench/sticky_session.py --mode router      # the Router in-process, same routing
    .venv/bin/python bench/sticky_session.py --sessions 10 --turns 20 --strategy least-busy

`gateway` mode needs the ingress to set the session (`routing.sticky.session_key`); `router` mode sets
it exactly as the ingress does (`chat_features(req, session=session_key(key_id, None, req))` when
`table.sticky(model)`), so it measures the routing alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from modelyard.config.loader import parse_config
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.routing.sticky import session_key
from modelyard.schema.chat import ChatRequest
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.fleet import fleet_from_dict
from modelyard.sim.server import SimServer

#: USD per 1M tokens, Anthropic-like: cached input at a tenth of the input price.
PRICE = "{input: 3.0, cached_input: 0.3, output: 15.0}"
DEPLOYMENTS = ("agent-a", "agent-b", "agent-c")
SYSTEM = (
    "You are a coding agent working in a repository. Read files before editing them, keep changes small, "
    "run the tests after each change and explain what you did. "
) * 40
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} in the workspace",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    }
    for name in ("read_file", "write_file", "run_tests")
]


def gateway_yaml(sim_url: str, strategy: str, sticky: bool, seed: int = 1) -> str:
    lines = ["deployments:"]
    for name in DEPLOYMENTS:
        lines.append(
            f"  - {{name: {name}, provider: openai, model: {name}, api_base: '{sim_url}/v1', api_key: sk-sim, "
            f"price: {PRICE}}}"
        )
    lines.append("models:")
    lines.append(
        f"  agent: {{candidates: [{', '.join(DEPLOYMENTS)}], strategy: {strategy}, "
        f"options: {{sticky: {str(sticky).lower()}}}}}"
    )
    lines.append("spend: {enabled: false}")
    lines.append(f"routing: {{seed: {seed}}}")  # the weighted draws of the non-sticky run replay
    return "\n".join(lines) + "\n"


@dataclass
class Totals:
    requests: int = 0
    prompt: int = 0
    cached: int = 0
    cost: float = 0.0
    hops: int = 0
    served: dict[str, int] = field(default_factory=dict)

    def add(self, deployment: str, usage: dict[str, Any], cost: float) -> None:
        self.requests += 1
        self.prompt += int(usage["prompt_tokens"])
        self.cached += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        self.cost += cost
        self.served[deployment] = self.served.get(deployment, 0) + 1

    def row(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt,
            "cached_tokens": self.cached,
            "cached_share": round(self.cached / self.prompt, 4) if self.prompt else 0.0,
            "cost_usd": round(self.cost, 6),
            "hops": self.hops,
            "served": dict(sorted(self.served.items())),
        }


def turn_body(history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "agent", "messages": history, "tools": TOOLS, "max_tokens": 200}


def next_turn(history: list[dict[str, Any]], answer: dict[str, Any], turn: int) -> None:
    """The agent's next message: the model's answer, then the (simulated) tool output it asked for."""
    message = answer["choices"][0]["message"]
    history.append({"role": "assistant", "content": message.get("content") or "Working on it."})
    output = f"turn {turn}: tests ran, 1 failure in test_module_{turn}.py line {10 + turn}. " * 12
    history.append({"role": "user", "content": output})


async def run_gateway(sim_url: str, strategy: str, sticky: bool, sessions: int, turns: int, seed: int) -> Totals:
    config = parse_config(gateway_yaml(sim_url, strategy, sticky, seed), source="sticky_session.yaml")
    totals = Totals()
    with BackgroundServer(create_app(config)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(*(_gateway_session(client, i, turns, totals) for i in range(sessions)))
    return totals


async def _gateway_session(client: httpx.AsyncClient, index: int, turns: int, totals: Totals) -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Task {index}: make the test suite pass."},
    ]
    last = None
    for turn in range(turns):
        r = await client.post("/v1/chat/completions", json=turn_body(history))
        r.raise_for_status()
        data = r.json()
        deployment = r.headers.get("x-modelyard-model", "?")
        totals.hops += last is not None and deployment != last
        last = deployment
        totals.add(deployment, data["usage"], float(r.headers.get("x-modelyard-cost-usd", "0")))
        next_turn(history, data, turn)


async def run_router(sim_url: str, strategy: str, sticky: bool, sessions: int, turns: int, seed: int) -> Totals:
    config = parse_config(gateway_yaml(sim_url, strategy, sticky, seed), source="sticky_session.yaml")
    totals = Totals()
    async with Router(config) as router:
        await asyncio.gather(*(_router_session(router, i, turns, totals) for i in range(sessions)))
    return totals


async def _router_session(router: Router, index: int, turns: int, totals: Totals) -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Task {index}: make the test suite pass."},
    ]
    last = None
    for turn in range(turns):
        raw = turn_body(history)
        req = msgspec.convert(raw, ChatRequest)
        session = session_key("bench-key", None, req) if router.table.sticky(req.model) else None
        success = await router.complete(req, raw, chat_features(req, session=session))
        deployment = success.deployment.name
        totals.hops += last is not None and deployment != last
        last = deployment
        totals.add(deployment, success.completion.body["usage"], success.cost_usd)
        next_turn(history, success.completion.body, turn)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("gateway", "router"), default="gateway")
    parser.add_argument("--strategy", choices=("weighted", "least-busy"), default="weighted")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="routing seed (the non-sticky draws)")
    args = parser.parse_args()
    fleet = fleet_from_dict({"seed": 7, "models": [{"name": n, "output_tokens": 60} for n in DEPLOYMENTS]})
    run = run_gateway if args.mode == "gateway" else run_router
    results: dict[str, Any] = {}
    for sticky in (False, True):
        with SimServer(fleet, seed=7, instant=True) as sim:  # a fresh (cold) prompt cache per run
            started = time.perf_counter()
            totals = await run(sim.url, args.strategy, sticky, args.sessions, args.turns, args.seed)
            row = totals.row()
            row["seconds"] = round(time.perf_counter() - started, 2)
            results["sticky on" if sticky else "sticky off"] = row
    off, on = results["sticky off"], results["sticky on"]
    results["cost saved"] = f"{100 * (1 - on['cost_usd'] / off['cost_usd']):.1f}%" if off["cost_usd"] else "n/a"
    print(json.dumps({"mode": args.mode, "strategy": args.strategy, **vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
