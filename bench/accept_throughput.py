"""`modelyard accept` throughput: case runs per second on the simulator, sent and cached.

    python bench/accept_throughput.py [--cases 400] [--models 2] [--concurrency 1,8,32] [--ttft-ms 0]

Writes a generated suite (half classification, half JSON extraction, each with two assertions), an instant
simulated fleet (or one with `--ttft-ms` to the first token) and a config into a temp directory, then runs
the same `accept()` the command runs: once with an empty answer cache (every case sent through the
in-process router to the simulator on loopback), once again from the cache. The simulator runs in the same
process on another thread, so the "sent" figure includes the simulator's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from modelyard.acceptance.api import AcceptOptions, accept
from modelyard.acceptance.runner import RunOptions
from modelyard.acceptance.spec import load_suite


def write_suite(root: Path, cases: int, models: int, ttft_ms: float) -> Path:
    fleet = ["seed: 1", "models:"]
    config = ["deployments:"]
    for i in range(models):
        fleet.append(
            f"  - {{name: sim-m{i}, price: {{input: 1.0, output: 2.0}}, "
            f"quality: {{classification: 0.95, extraction: {0.5 + 0.4 * i / max(1, models - 1):.2f}}}, "
            f"ttft_ms: {ttft_ms}, tokens_per_second: 0, output_tokens: 20}}"
        )
        config.append(
            f"  - {{name: m{i}@sim, provider: openai, model: sim-m{i}, api_base: '${{SIM_URL}}/v1', "
            "api_key: k, price: {input: 1.0, output: 2.0}}"
        )
    names = ", ".join(f"m{i}@sim" for i in range(models))
    config += ["models:", f"  bench: {{strategy: cost, candidates: [{names}]}}"]
    suite = [
        "schema: modelyard.acceptance/v1",
        "name: bench",
        "route: bench",
        "config: config.yaml",
        "simulator: fleet.yaml",
        "tasks:",
    ]
    half = cases // 2
    suite += ["  classification:", "    cases:"]
    for n in range(half):
        label = ("refund", "shipping", "account")[n % 3]
        suite.append(
            f'      - {{id: c{n}, prompt: "Classify ticket {n}", reference: {label}, '
            f"assert: [{{equals: {label}}}, {{max_tokens: 100}}]}}"
        )
    suite += ["  extraction:", "    cases:"]
    for n in range(cases - half):
        ref = json.dumps(json.dumps({"name": f"user {n}", "order_id": f"A-{n:04d}"}))
        suite.append(
            f'      - {{id: e{n}, prompt: "Extract order {n} as JSON", reference: {ref}, '
            f"assert: [{{json_schema: {{type: object, required: [name, order_id]}}}}, "
            f'{{contains: "A-{n:04d}"}}]}}'
        )
    (root / "fleet.yaml").write_text("\n".join(fleet) + "\n")
    (root / "config.yaml").write_text("\n".join(config) + "\n")
    (root / "suite.yaml").write_text("\n".join(suite) + "\n")
    return root / "suite.yaml"


async def measure(suite_path: Path, cache: Path, concurrency: int) -> tuple[float, int, float]:
    suite = load_suite(suite_path)
    options = AcceptOptions(cache_path=cache, run=RunOptions(concurrency=concurrency))
    started = time.perf_counter()
    report = await accept(suite, options)
    elapsed = time.perf_counter() - started
    return len(report.result.runs) / elapsed, len(report.result.runs), report.result.spent_usd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    args = parser.parse_args()
    print(f"{args.cases} cases x {args.models} models, simulator ttft {args.ttft_ms:g} ms (wall time incl. start-up)")
    print(f"{'concurrency':>11} {'runs':>6} {'sent runs/s':>12} {'cached runs/s':>14} {'cached cost':>12}")
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            suite = write_suite(root, args.cases, args.models, args.ttft_ms)
            sent, runs, _ = asyncio.run(measure(suite, root / "cache.sqlite", concurrency))
            cached, _, cost = asyncio.run(measure(suite, root / "cache.sqlite", concurrency))
        print(f"{concurrency:>11} {runs:>6} {sent:>12.0f} {cached:>14.0f} {cost:>12.4f}")


if __name__ == "__main__":
    main()
