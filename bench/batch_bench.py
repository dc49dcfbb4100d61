"""`modelyard batch` throughput and the local engine's scheduling overhead (issue 18's targets).

1. Throughput (target >= 500 rows/s): 10,000 rows of a one-step workflow through the real command
   (`modelyard batch ... --config`, in-process router, SQLite store, JSONL output) against the simulator
   running in its own process (`modelyard sim`, 20 ms to the first token). rows/s is the command's own figure
   (the session's wall time: reading, running, storing, writing, the final rewrite in row order), not counting
   the interpreter's start-up.
2. Scheduling overhead per row (target <= 1 ms), in process, scripted backend at zero delay:
   - `engine`: LocalEngine over a runner that answers at once: the engine's own cost per row (pull, task,
     completion, hand-back);
   - `runner`: the same rows through LocalEngine over the real RowRunner (workflow engine + SQLite store)
     minus the same rows run one after another without the engine: what the engine adds to a real row.

Runs alternate (throughput, overhead, throughput, ...) for `--repeat` rounds; prints a table of median and
spread (min-max).

    python bench/batch_bench.py [--rows 10000] [--concurrency 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from modelyard.batch.engine import LocalEngine
from modelyard.batch.model import RowResult, RowTask
from modelyard.batch.runner import RowRunner
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.testing.process import start_sim_process
from modelyard.workflows.api import Workflow
from modelyard.workflows.scripted import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "modelyard.cli.main"]
WORKFLOW = """
schema: modelyard.workflow/v1
name: bench-label
inputs: {ticket: string}
steps:
  classify: {model: labeller, prompt: "Label this ticket: {{ inputs.ticket }}", max_tokens: 8}
outputs: {label: "{{ classify }}"}
"""
FLEET = """
models:
  - name: sim-bench
    price: {input: 0.1, output: 0.4}
    ttft_ms: 20
    tokens_per_second: 5000
    output_tokens: 6
"""


def start_sim(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    fleet = base / "fleet.yaml"
    fleet.write_text(FLEET, encoding="utf-8")
    process, port = start_sim_process(fleet, cwd=ROOT)
    return process, f"http://127.0.0.1:{port}"


def write_inputs(base: Path, rows: int, sim_url: str) -> dict[str, Path]:
    config = base / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - {{name: bench, provider: openai, model: sim-bench, api_base: "{sim_url}/v1", api_key: sim,
                 price: {{input: 0.1, output: 0.4}}, timeouts: {{connect: 2, first_token: 20, total: 30}}}}
            models:
              labeller: {{candidates: [bench]}}
            """
        ),
        encoding="utf-8",
    )
    workflow = base / "label.yaml"
    workflow.write_text(WORKFLOW, encoding="utf-8")
    inputs = base / "rows.jsonl"
    inputs.write_text("".join(json.dumps({"ticket": f"ticket {i}: it crashes"}) + "\n" for i in range(rows)))
    return {"config": config, "workflow": workflow, "rows": inputs}


def throughput(files: dict[str, Path], base: Path, run: int, concurrency: int) -> float:
    report = base / f"report-{run}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    done = subprocess.run(
        [
            *CLI, "batch", str(files["workflow"]), "--inputs", str(files["rows"]),
            "--out", str(base / f"out-{run}.jsonl"),
            "--store", str(base / f"store-{run}.db"), "--config", str(files["config"]), "--no-progress",
            "--concurrency", str(concurrency), "--json", str(report),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"batch failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    data = json.loads(report.read_text())
    assert data["left"] == 0 and data["by_status"] == {"succeeded": data["rows"]}, data
    return float(data["rows_per_s"])


class InstantRunner:
    """A runner that answers at once: only the engine's scheduling remains."""

    worker = "bench"
    batch_id = "b-bench"
    store: Any = None

    async def run(self, task: RowTask) -> RowResult:
        return RowResult(task.row, "succeeded")


async def feed(rows: int) -> AsyncIterator[RowTask]:
    for row in range(rows):
        yield RowTask(row, {"ticket": f"ticket {row}"})


async def drain(engine: LocalEngine, rows: int, concurrency: int) -> float:
    started = time.perf_counter()
    count = 0
    async for _ in engine.run(feed(rows), concurrency):
        count += 1
    assert count == rows
    return time.perf_counter() - started


async def overhead(base: Path, run: int, rows: int) -> dict[str, float]:
    """Per-row microseconds: the bare engine, and the engine's addition to real rows (scripted, zero delay)."""
    bare = await drain(LocalEngine(InstantRunner()), rows * 5, 16)  # type: ignore[arg-type]
    workflow = Workflow.from_string(WORKFLOW.replace("labeller", "fast"), "bench.yaml")
    store = SqliteBatchStore(base / f"overhead-{run}.db")
    try:
        runner = RowRunner(workflow, ScriptedBackend(), store, "b-engine")
        with_engine = await drain(LocalEngine(runner), rows, 16)
        direct_runner = RowRunner(workflow, ScriptedBackend(), store, "b-direct")
        started = time.perf_counter()
        for row in range(rows):
            await direct_runner.run(RowTask(row, {"ticket": f"ticket {row}"}))
        direct = time.perf_counter() - started
        store.flush()
    finally:
        store.close()
    return {
        "engine_us": bare / (rows * 5) * 1e6,
        "row_us": with_engine / rows * 1e6,
        "direct_us": direct / rows * 1e6,
        "added_us": (with_engine - direct) / rows * 1e6,
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):10.1f}  ({min(values):.1f} - {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--overhead-rows", type=int, default=4_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rates: list[float] = []
    costs: dict[str, list[float]] = {"engine_us": [], "row_us": [], "direct_us": [], "added_us": []}
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        base = Path(tmp)
        sim, url = start_sim(base)
        try:
            files = write_inputs(base, args.rows, url)
            for run in range(args.repeat):
                rates.append(throughput(files, base, run, args.concurrency))
                print(json.dumps({"run": run, "rows_per_s": round(rates[-1], 1)}), flush=True)
                measured = asyncio.run(overhead(base, run, args.overhead_rows))
                for key, value in measured.items():
                    costs[key].append(value)
                print(json.dumps({"run": run, **{k: round(v, 1) for k, v in measured.items()}}), flush=True)
        finally:
            sim.terminate()
            sim.wait(10)
    print()
    print(f"{'measurement':58}{'median':>10}  (min - max), {args.repeat} runs")
    print(f"{f'throughput, {args.rows:,} rows, concurrency {args.concurrency} (rows/s)':58}{spread(rates)}")
    print(f"{'engine scheduling per row, instant runner (us)':58}{spread(costs['engine_us'])}")
    print(f"{'a scripted row through the engine (us)':58}{spread(costs['row_us'])}")
    print(f"{'the same row run directly, no engine (us)':58}{spread(costs['direct_us'])}")
    print(f"{'what the engine adds per real row (us)':58}{spread(costs['added_us'])}")


if __name__ == "__main__":
    main()
