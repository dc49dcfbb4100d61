"""CPU per spend row of SQLite's `write_spend` (the event loop's preparation plus the store's thread), per batch
size: the part of the spend log that issue #20's profile charged to every request.

    python bench/spend_write_cost.py                                   # this tree
    PYTHONPATH=/path/to/other/checkout/src python bench/spend_write_cost.py   # another tree, for a before/after
    python bench/spend_write_cost.py --memory-rows 100000 --rows 300000 --batches 500   # in memory, bounded
    python bench/spend_write_cost.py --dashboard-indexes --batches 200   # with vs without the dashboard's indexes

Writes `--rows` realistic records (the shape of a bench request's row: ids, key, deployment, route and
attempt detail JSON) into a fresh SQLite file per batch size and prints the process CPU (user + system) per
row, building the records excluded. Alternate the two trees' runs and compare medians.

`--dashboard-indexes` alternates, in this tree, the file as it is with the same file less the indexes only the
dashboard's request log reads (by model, deployment, errors, cost, latency; the time, key and id indexes stay:
retention, budgets and idempotence need them): what those indexes cost a row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from modelyard.accounting.spend import SpendRecord
from modelyard.state.sqlite_store import SQLiteStore


def record(i: int) -> SpendRecord:
    return SpendRecord(
        id=f"req_{i:020d}",
        at=time.time(),
        key_id="key_2ddbde67a2f03f8f",
        key_name="bench",
        model="bench",
        deployment="primary",
        provider="openai",
        endpoint="/v1/chat/completions",
        attempts=1,
        attempt_log="1; primary ok 1ms",
        prompt_tokens=20,
        completion_tokens=7,
        cost_usd=0.00012,
        latency_ms=2.26,
        route='["cost",["primary","secondary"],[13,16],"bench"]',
        attempt_detail='[["primary","openai","ok",1.0,1.0,0.00012]]',
    )


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: The spend table's indexes that only the dashboard's request log filters read (migrations.py).
DASHBOARD_INDEXES = (
    "modelyard_spend_model_at",
    "modelyard_spend_deployment_at",
    "modelyard_spend_errors_at",
    "modelyard_spend_cost_at",
    "modelyard_spend_latency_at",
)


async def cost_per_row(
    batch: int, rows: int, directory: Path, memory_rows: int | None = None, drop: tuple[str, ...] = ()
) -> float:
    """CPU µs a row; `memory_rows`: an in-memory store keeping that many (its trims counted), not a file;
    `drop`: indexes dropped before the first write."""
    path = directory / f"spend-{batch}-{time.monotonic_ns()}.db"
    store = SQLiteStore(str(path)) if memory_rows is None else SQLiteStore(":memory:", memory_rows=memory_rows)
    await store.open()
    if drop:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            for index in drop:
                conn.execute(f"DROP INDEX {index}")
    try:
        spent = 0.0
        for start in range(0, rows, batch):
            records = [record(start + i) for i in range(batch)]
            before = cpu()
            await store.write_spend(records)
            spent += cpu() - before
        return spent * 1e6 / (rows // batch * batch)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--batches", default="200,500")
    parser.add_argument("--memory-rows", type=int, help="an in-memory store keeping this many rows, not a file")
    parser.add_argument("--dashboard-indexes", action="store_true", help="alternate with and without them")
    parser.add_argument("--rounds", type=int, default=5, help="with --dashboard-indexes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-spend-cost-") as tmp:
        if args.dashboard_indexes:
            compare_indexes(int(args.batches.split(",")[0]), args.rows, Path(tmp), max(1, args.rounds))
            return
        for batch in (int(b) for b in args.batches.split(",")):
            row_us = asyncio.run(cost_per_row(batch, args.rows, Path(tmp), args.memory_rows))
            print(f"batch {batch}: {row_us:.1f} µs of CPU a row ({args.rows} rows)", flush=True)


def compare_indexes(batch: int, rows: int, directory: Path, rounds: int) -> None:
    """The file as it is and without DASHBOARD_INDEXES, alternated (the order swapped each round)."""
    found: dict[str, list[float]] = {"with": [], "without": []}
    for round_ in range(rounds):
        sides = [("with", ()), ("without", DASHBOARD_INDEXES)]
        for name, drop in sides if round_ % 2 == 0 else sides[::-1]:
            found[name].append(asyncio.run(cost_per_row(batch, rows, directory, drop=drop)))
        print(f"round {round_ + 1}: with {found['with'][-1]:.1f}, without {found['without'][-1]:.1f} µs a row")
    ratios = [a / b for a, b in zip(found["without"], found["with"], strict=True)]
    for name, values in found.items():
        print(f"{name} the dashboard's indexes: {statistics.median(values):.1f} µs a row (batch {batch})")
    print(f"without / with: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
