"""CPU per spend row of SQLite's `write_spend` (the event loop's preparation plus the store's thread), per batch
size: the part of the spend log that issue #20's profile charged to every request.

    python bench/spend_write_cost.py                                   # this tree
    PYTHONPATH=/path/to/other/checkout/src python bench/spend_write_cost.py   # another tree, for a before/after
    python bench/spend_write_cost.py --memory-rows 100000 --rows 300000 --batches 500   # in memory, bounded

Writes `--rows` realistic records (the shape of a bench request's row: ids, key, deployment, route and
attempt detail JSON) into a fresh SQLite file per batch size and prints the process CPU (user + system) per
row, building the records excluded. Alternate the two trees' runs and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
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


async def cost_per_row(batch: int, rows: int, directory: Path, memory_rows: int | None = None) -> float:
    """CPU µs a row; `memory_rows`: an in-memory store keeping that many (its trims counted), not a file."""
    if memory_rows is None:
        store = SQLiteStore(str(directory / f"spend-{batch}.db"))
    else:
        store = SQLiteStore(":memory:", memory_rows=memory_rows)
    await store.open()
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-spend-cost-") as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            row_us = asyncio.run(cost_per_row(batch, args.rows, Path(tmp), args.memory_rows))
            print(f"batch {batch}: {row_us:.1f} µs of CPU a row ({args.rows} rows)", flush=True)


if __name__ == "__main__":
    main()
