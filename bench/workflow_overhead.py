"""Workflow engine overhead: what the scheduler itself costs, apart from the models.

1. Per-step scheduling overhead with a zero-latency backend (target <= 1 ms/step): a chain of N dependent
   steps (nothing overlaps, so wall / N is the engine's cost per step: rendering, hashing, token counting,
   bookkeeping, two store events) and N independent steps, each with the in-memory and the SQLite store.
2. A 100-way fan-out of 200 ms steps (target: wall <= 1.05 x one step's latency + the backend's spread).
   By default a scripted backend sleeps 200 ms plus a uniform jitter (the "spread"); `--backend
   package.module:factory [--config ...]` runs it on another backend (the simulator) instead.

    python bench/workflow_overhead.py [--steps 300] [--fanout 100] [--latency-ms 200] [--jitter-ms 10]

Prints one JSON line per measurement and a summary; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from modelyard.accounting.tokens import count_text
from modelyard.schema.chat import Usage
from modelyard.workflows import MemoryStore, SqliteStore, Workflow
from modelyard.workflows.backend import ModelAnswer, ModelCall, ModelEstimate, load_backend_factory
from modelyard.workflows.checkpoint import RunStore
from modelyard.workflows.scripted import ScriptedBackend

HEADER = "schema: modelyard.workflow/v1\nname: bench\nmax_parallel: {parallel}\nsteps:\n"


class ZeroBackend:
    """Answers at once with a fixed text and usage: only the engine's own cost remains."""

    def __init__(self) -> None:
        self.usage = Usage(prompt=20, completion=5)

    async def call(self, call: ModelCall) -> ModelAnswer:
        return ModelAnswer("ok", call.model, "zero@bench", self.usage, 0.0, 0.0)

    def estimate(self, call: ModelCall) -> ModelEstimate:
        return ModelEstimate("zero@bench", 20, 5, 0.0, 0.0)


class JitterBackend(ScriptedBackend):
    """The scripted backend with a latency of `base + uniform(0, jitter)` per call."""

    def __init__(self, base_s: float, jitter_s: float, seed: int = 7) -> None:
        super().__init__()
        self.base_s, self.jitter_s = base_s, jitter_s
        self.random = random.Random(seed)

    def delay_for(self, call: ModelCall) -> float:
        return self.base_s + self.random.uniform(0, self.jitter_s)


def chain_yaml(n: int) -> str:
    lines = [HEADER.format(parallel=16), '  s0: {model: m, prompt: "start"}\n']
    for i in range(1, n):
        prompt = f"step {i} after {{{{ s{i - 1} }}}}"
        lines.append(f'  s{i}: {{model: m, needs: [s{i - 1}], prompt: "{prompt}"}}\n')
    return "".join(lines)


def wide_yaml(n: int) -> str:
    lines = [HEADER.format(parallel=n)]
    lines.extend(f'  s{i}: {{model: m, prompt: "independent step {i}"}}\n' for i in range(n))
    return "".join(lines)


def fanout_yaml(width: int, model: str) -> str:
    items = ", ".join(str(i) for i in range(width))
    prompt = "label item {{ item }}"
    step = f'  each: {{model: {model}, foreach: [{items}], max_parallel: {width}, prompt: "{prompt}"}}\n'
    return HEADER.format(parallel=width) + step


def make_store(kind: str, folder: Path) -> RunStore:
    return MemoryStore() if kind == "memory" else SqliteStore(folder / f"bench-{time.monotonic_ns()}.db")


async def per_step(shape: str, n: int, store_kind: str, folder: Path, repeats: int = 4) -> dict[str, Any]:
    flow = Workflow.from_string(chain_yaml(n) if shape == "chain" else wide_yaml(n), "bench.yaml")
    samples = []
    for _ in range(repeats):
        store = make_store(store_kind, folder)
        started = time.perf_counter()
        result = await flow.run(backend=ZeroBackend(), store=store)
        samples.append(time.perf_counter() - started)
        store.close()
        assert result.status.value == "succeeded", result.message
    best = min(samples[1:] or samples)
    return {
        "bench": "per_step_overhead",
        "shape": shape,
        "steps": n,
        "store": store_kind,
        "wall_s": round(best, 4),
        "ms_per_step": round(best / n * 1000, 4),
        "median_ms_per_step": round(statistics.median(samples[1:] or samples) / n * 1000, 4),
        "cold_ms_per_step": round(samples[0] / n * 1000, 4),  # first run: templates compiled here
    }


async def fanout(backend: Any, width: int, model: str, spread_s: float, folder: Path) -> dict[str, Any]:
    flow = Workflow.from_string(fanout_yaml(width, model), "bench.yaml")
    store = make_store("sqlite", folder)
    started = time.perf_counter()
    result = await flow.run(backend=backend, store=store)
    wall = time.perf_counter() - started
    store.close()
    latencies = [r.latency_ms / 1000 for r in result.leaves]
    slowest, fastest = max(latencies), min(latencies)
    one_step = statistics.median(latencies)
    return {
        "bench": "fanout",
        "width": width,
        "status": result.status.value,
        "wall_s": round(wall, 4),
        "one_step_median_s": round(one_step, 4),
        "fastest_s": round(fastest, 4),
        "slowest_s": round(slowest, 4),
        "spread_s": round(spread_s if spread_s else slowest - fastest, 4),
        "wall_over_one_step": round(wall / one_step, 4),
        "target_s": round(1.05 * one_step + (spread_s if spread_s else slowest - fastest), 4),
        "engine_overhead_ms": round((wall - slowest) * 1000, 2),
    }


async def main(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    count_text("warm up the tokenizer")  # loaded once per process; not a per-step cost
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for shape, n in (("chain", args.steps), ("wide", args.steps)):
            for store_kind in ("memory", "sqlite"):
                rows.append(await per_step(shape, n, store_kind, folder))
                print(json.dumps(rows[-1]), flush=True)
        base, jitter = args.latency_ms / 1000, args.jitter_ms / 1000
        if args.backend:
            factory = load_backend_factory(args.backend)
            async with factory(args.config, None) as backend:
                rows.append(await fanout(backend, args.fanout, args.model, 0.0, folder))
        else:
            rows.append(await fanout(JitterBackend(base, jitter), args.fanout, "m", jitter, folder))
        print(json.dumps(rows[-1]), flush=True)
    worst = max(r["ms_per_step"] for r in rows if r["bench"] == "per_step_overhead")
    fan = rows[-1]
    ok_steps, ok_fan = worst <= 1.0, fan["wall_s"] <= fan["target_s"]
    verdict = "ok" if ok_steps else "MISSED"
    print(f"\nper-step overhead: worst {worst:.3f} ms/step (target <= 1 ms): {verdict}")
    print(
        f"{fan['width']}-way fan-out: wall {fan['wall_s']:.3f}s, one step {fan['one_step_median_s']:.3f}s, "
        f"spread {fan['spread_s'] * 1000:.0f} ms -> {fan['wall_over_one_step']:.3f}x one step "
        f"(target <= {fan['target_s']:.3f}s): {'ok' if ok_fan else 'MISSED'}"
    )
    return 0 if ok_steps and ok_fan else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--steps", type=int, default=300, help="steps in the chain and in the wide graph")
    parser.add_argument("--fanout", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0, help="the scripted backend's spread")
    parser.add_argument("--backend", help="package.module:factory for the fan-out (e.g. the simulator)")
    parser.add_argument("--config", help="config for --backend")
    parser.add_argument("--model", default="fast", help="model name for --backend")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
