"""`--engine ray` against the local engine on this machine, and Ray tasks against Ray actors (issue 18).

Same one-step workflow, same simulator in its own process (`modelyard sim`, 20 ms to the first token), same
in-process router from one config, SQLite store, same rows and concurrency. Variants:

- `local`: LocalEngine in this process (one event loop, one RowRunner);
- `actors-1`, `actors-2`: the Ray engine (`open_ray_engine`) with 1 and 2 async actors;
- `tasks-2`: the alternative design, one Ray task per row (num_cpus=1 each: Ray runs one task at a time per
  worker process), each worker process keeping one event loop, backend and runner across its tasks.

rows/s counts the rows' run only (first pull to last result), not Ray's or the actors' start-up (printed
apart). Runs alternate between variants for `--repeat` rounds; prints median and spread (min-max).

    [BENCH_RAY_CHUNK=8] python bench/batch_ray_bench.py [--rows 2000] [--concurrency 64] [--repeat 3]
        [--variants local,actors-1,actors-2,tasks-2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_bench import WORKFLOW, start_sim, write_inputs

from modelyard.batch.engine import LocalEngine
from modelyard.batch.model import BackendRef, BatchHeader, RowResult, RowTask
from modelyard.batch.ray_engine import DEFAULT_CHUNK, _connect, import_ray, open_ray_engine
from modelyard.batch.runner import RowRunner
from modelyard.batch.store import open_batch_store
from modelyard.workflows.api import Workflow
from modelyard.workflows.backend import default_backend_factory

VARIANTS = ("local", "actors-1", "actors-2", "tasks-2")


async def feed(rows: int) -> AsyncIterator[RowTask]:
    for row in range(rows):
        yield RowTask(row, {"ticket": f"ticket {row}: it crashes"})


def new_header(store: str, rows: int) -> BatchHeader:
    header = BatchHeader(f"b-bench-{uuid.uuid4().hex[:8]}", "bench-label", "label.yaml", WORKFLOW, "", "jsonl", "",
                         rows, {}, {})  # fmt: skip
    made = open_batch_store(store)
    try:
        made.create_batch(header)
    finally:
        made.close()
    return header


async def drain(results: AsyncIterator[RowResult], rows: int) -> float:
    started = time.perf_counter()
    seen = {r.row: r.status async for r in results}
    elapsed = time.perf_counter() - started
    assert sorted(seen) == list(range(rows)) and set(seen.values()) == {"succeeded"}, set(seen.values())
    return rows / elapsed


async def run_local(header: BatchHeader, store: str, config: str, rows: int, concurrency: int) -> tuple[float, float]:
    opened = open_batch_store(store)
    try:
        async with default_backend_factory(config, None) as backend:
            runner = RowRunner(Workflow.from_string(WORKFLOW), backend, opened, header.batch_id)
            return await drain(LocalEngine(runner).run(feed(rows), concurrency), rows), 0.0
    finally:
        opened.close()


async def run_actors(
    header: BatchHeader, store: str, config: str, rows: int, concurrency: int, workers: int
) -> tuple[float, float]:
    started = time.perf_counter()
    chunk = int(os.environ.get("BENCH_RAY_CHUNK", DEFAULT_CHUNK))
    async with open_ray_engine(header, store, BackendRef(config=config), workers=workers, chunk=chunk) as engine:
        startup = time.perf_counter() - started
        return await drain(engine.run(feed(rows), concurrency), rows), startup


def task_row(header: BatchHeader, store: str, config: str, task: RowTask) -> RowResult:
    """One row as one Ray task; the worker process keeps its loop, backend and runner across tasks."""
    import modelyard.batch.ray_engine as home  # a module every worker imports: the per-process cache lives there

    cache: dict[str, Any] = home.__dict__.setdefault("_bench_task_cache", {})
    if cache.get("batch") != header.batch_id:
        loop = asyncio.new_event_loop()
        stack = AsyncExitStack()
        backend = loop.run_until_complete(stack.enter_async_context(default_backend_factory(config, None)))
        runner = RowRunner(Workflow.from_string(WORKFLOW), backend, open_batch_store(store), header.batch_id)
        cache.update(batch=header.batch_id, loop=loop, runner=runner, stack=stack)  # the stack keeps the backend open
    result: RowResult = cache["loop"].run_until_complete(cache["runner"].run(task))
    cache["runner"].store.flush()
    return result


async def run_tasks(header: BatchHeader, store: str, config: str, rows: int, concurrency: int) -> tuple[float, float]:
    ray = import_ray()
    remote = ray.remote(num_cpus=1, max_retries=0)(task_row)

    async def results() -> AsyncIterator[RowResult]:
        pending: set[asyncio.Future[Any]] = set()
        tasks = feed(rows)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < concurrency:
                task = await anext(tasks, None)
                if task is None:
                    exhausted = True
                    break
                pending.add(asyncio.ensure_future(_await(remote.remote(header, store, config, task))))
            if pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    yield future.result()

    return await drain(results(), rows), 0.0


async def _await(ref: Any) -> Any:
    return await ref


async def one(variant: str, store: str, config: str, rows: int, concurrency: int) -> tuple[float, float]:
    header = new_header(store, rows)
    runs: dict[str, Callable[[], Any]] = {
        "local": lambda: run_local(header, store, config, rows, concurrency),
        "actors-1": lambda: run_actors(header, store, config, rows, concurrency, 1),
        "actors-2": lambda: run_actors(header, store, config, rows, concurrency, 2),
        "tasks-2": lambda: run_tasks(header, store, config, rows, concurrency),
    }
    result: tuple[float, float] = await runs[variant]()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--store", default=None, help="postgresql://... (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    logging.basicConfig(level=logging.WARNING)
    ray = import_ray()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sim, sim_url = start_sim(base)
        try:
            files = write_inputs(base, 1, sim_url)
            store = args.store or str(base / "store.db")
            _connect(ray, None, 2)  # one local Ray of 2 CPUs for every Ray run
            figures: dict[str, list[float]] = {v: [] for v in variants}
            startups: dict[str, list[float]] = {v: [] for v in variants}
            for round_ in range(args.repeat):
                for variant in variants:
                    rate, startup = asyncio.run(one(variant, store, str(files["config"]), args.rows, args.concurrency))
                    figures[variant].append(rate)
                    startups[variant].append(startup)
                    print(f"round {round_ + 1} {variant:9} {rate:8.1f} rows/s  (start-up {startup:.2f} s)", flush=True)
        finally:
            ray.shutdown()
            sim.terminate()
            sim.wait(10)
    print(f"\n{args.rows} rows, one-step workflow, concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
          f"{args.repeat} rounds")  # fmt: skip
    print(f"{'variant':10} {'median rows/s':>14} {'min-max':>18} {'start-up s':>11}")
    for variant in variants:
        values = figures[variant]
        spread = f"{min(values):.1f}-{max(values):.1f}"
        startup = statistics.median(startups[variant])
        print(f"{variant:10} {statistics.median(values):14.1f} {spread:>18} {startup:11.2f}")


if __name__ == "__main__":
    main()
