"""`modelyard demo`: a simulated provider fleet, the real gateway in front of it, a mix of requests.

Everything runs on loopback in one process (the simulator and the gateway each on their own uvicorn
thread); no API key and no network are needed. The table shows, per request, which deployment served
it, over which wire format, after how many attempts, how fast and at what cost.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from modelyard.config.demo import demo_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ANSWER_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "required": ["label", "confidence"],
            "properties": {
                "label": {"type": "string", "enum": ["positive", "negative"]},
                "confidence": {"type": "number"},
            },
        },
    },
}


@dataclass
class Call:
    label: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 60, **extra}


def demo_calls() -> list[Call]:
    """The scripted mix: every strategy, the three ingress APIs, streaming, tools, JSON, embeddings, failover."""
    return [
        Call("cost: cheapest good-enough", "/v1/chat/completions", _chat("balanced", "Why write unit tests?")),
        Call("cost: strong model", "/v1/chat/completions", _chat("smart", "Prove it step by step.")),
        Call("priority: Anthropic wire", "/v1/chat/completions", _chat("premium", "Draft a product brief.")),
        Call("least-latency", "/v1/chat/completions", _chat("fast", "Capital of France?")),
        Call(
            "rules: coding, high",
            "/v1/chat/completions",
            _chat("agent", "Design a rate limiter.", metadata={"task": "coding", "complexity": "high"}),
        ),
        Call(
            "rules: classification",
            "/v1/chat/completions",
            _chat("agent", "Label: 'great product!'", metadata={"task": "classification"}),
        ),
        Call(
            "rules: search → fast",
            "/v1/chat/completions",
            _chat("agent", "Find papers on routing.", metadata={"task": "search"}),
        ),
        Call(
            "streaming + usage",
            "/v1/chat/completions",
            _chat("smart", "Tell a short story.", stream=True, stream_options={"include_usage": True}),
        ),
        Call(
            "tool call",
            "/v1/chat/completions",
            _chat("premium", "What is the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required"),
        ),
        Call(
            "JSON schema output",
            "/v1/chat/completions",
            _chat("fast", "Classify: 'I love it'", response_format=ANSWER_SCHEMA),
        ),
        Call(
            "Anthropic Messages API in",
            "/v1/messages",
            {"model": "smart", "max_tokens": 60, "messages": [{"role": "user", "content": "Hello, Claude-style"}]},
        ),
        Call(
            "OpenAI Responses API in",
            "/v1/responses",
            {"model": "smart", "input": "Hello, Responses-style", "max_output_tokens": 60},
        ),
        Call("embeddings", "/v1/embeddings", {"model": "embed", "input": ["routing", "orchestration"]}),
        Call("failover: primary down", "/v1/chat/completions", _chat("resilient", "Status report, please.")),
    ]


async def _send(session: aiohttp.ClientSession, base: str, call: Call) -> dict[str, Any]:
    started = time.perf_counter()
    headers = {"Authorization": "Bearer demo", **call.headers}
    async with session.post(base + call.path, json=call.body, headers=headers) as resp:
        raw = await resp.read()
        elapsed = (time.perf_counter() - started) * 1000
        h = resp.headers
        row = {
            "status": resp.status,
            "served": h.get("x-modelyard-model", "-"),
            "provider": h.get("x-modelyard-provider", "-"),
            "attempts": (h.get("x-modelyard-attempts") or "-").split(";")[0],
            "latency": elapsed,
            "cost": h.get("x-modelyard-cost-usd"),
            "tokens": "-",
        }
    text = raw.decode("utf-8", "replace")
    if call.body.get("stream"):
        row["tokens"], row["cost"] = _stream_usage(text)
    elif resp.status == 200:
        import json

        usage = json.loads(text).get("usage") or {}
        prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
        row["tokens"] = f"{prompt}/{completion}"
    else:
        row["error"] = text[:120]
    return row


def _stream_usage(text: str) -> tuple[str, str | None]:
    import json

    for line in reversed(text.splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            usage = json.loads(line[6:]).get("usage") or {}
            return f"{usage.get('prompt_tokens', 0)}/{usage.get('completion_tokens', 0)}", str(usage.get("cost"))
    return "-", None


async def _run_calls(base: str, calls: list[Call]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_send(session, base, c) for c in calls)))


def run_demo(*, requests: int = 16, seed: int = 7) -> None:
    from modelyard.sim.server import SimServer

    # Wide enough for the table when the output is not a terminal (CI logs, pipes default to 80 columns).
    console = Console() if sys.stdout.isatty() else Console(width=150)
    started = time.perf_counter()
    scripted = demo_calls()
    calls = [scripted[i % len(scripted)] for i in range(max(requests, 1))]
    with SimServer(seed=seed) as sim:
        gateway = create_app(demo_config(sim.url))
        with BackgroundServer(gateway) as server:
            console.print(
                f"simulated fleet at {sim.url}; gateway at {server.url} "
                f"({len(gateway.config.deployments)} deployments, {len(gateway.config.models)} models)"
            )
            rows = asyncio.run(_run_calls(server.url, calls))
    table = Table(title="modelyard demo: who served what")
    for column in (
        "#",
        "request",
        "model asked",
        "served by",
        "wire",
        "attempts",
        "latency ms",
        "tokens in/out",
        "cost $",
        "status",
    ):
        table.add_column(column, justify="right" if column in ("#", "latency ms", "cost $") else "left")
    total = 0.0
    for i, (call, row) in enumerate(zip(calls, rows, strict=True), 1):
        cost = float(row["cost"]) if row.get("cost") not in (None, "None") else 0.0
        total += cost
        table.add_row(
            str(i),
            call.label,
            str(call.body.get("model")),
            row["served"],
            row["provider"],
            row["attempts"],
            f"{row['latency']:.0f}",
            row["tokens"],
            f"{cost:.8f}",
            "ok" if row["status"] == 200 else f"{row['status']} {row.get('error', '')}",
        )
    console.print(table)
    console.print(
        f"{len(rows)} requests, total cost ${total:.6f}, "
        f"{sum(1 for r in rows if r['status'] == 200)} ok, in {time.perf_counter() - started:.1f}s"
    )
