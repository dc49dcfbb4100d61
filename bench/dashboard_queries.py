"""The dashboard's store queries on a large spend log (issue #16: ≤ 300 ms server time with 1,000,000 rows,
for the overview and for one filtered request-log page), on SQLite and on PostgreSQL.

    python scripts/seed_spend.py /tmp/spend-1m.db
    python scripts/seed_spend.py 'postgresql://postgres@127.0.0.1:5432/test?schema=spend1m'
    python bench/dashboard_queries.py --sqlite /tmp/spend-1m.db \\
        --postgres 'postgresql://postgres@127.0.0.1:5432/test?schema=spend1m'

Each query runs once to warm the caches, then `--runs` times (default 5); the median is reported, timed
around the store's own call (driver and row decoding included, no HTTP). The range covers every row.
Overview = what its page needs: requests/cost/latency histogram per hour for `all`, and the totals by
model, by deployment and by key (hour table). Request log = one 50-row page per filter, and page 2 of the
first via its keyset.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.state.store import SpendFilter, Store, open_store

TARGET_MS = 300.0


#: Median CPU ms of this process per query, by the last label timed (SQLite: the whole query; PostgreSQL:
#: the client's side only). On a shared machine the wall time swings with the load; CPU time hardly does.
CPU: dict[str, float] = {}


async def timed(fn: Callable[[], Awaitable[Any]], runs: int, label: str = "") -> tuple[float, Any]:
    result = await fn()  # warm-up
    samples, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = await fn()
        samples.append((time.perf_counter() - started) * 1000.0)
        cpu.append((time.process_time() - started_cpu) * 1000.0)
    CPU[label] = statistics.median(cpu)
    return statistics.median(samples), result


async def bench(label: str, store: Store, runs: int) -> list[tuple[str, str, float, int]]:
    out: list[tuple[str, str, float, int]] = []
    since, until = 0.0, time.time() + 86400.0 * 365
    overview = overview_cpu = 0.0
    for name, call in (
        ("traffic hour/all by time", lambda: store.traffic("hour", "all", since, until)),
        ("traffic hour/model by value", lambda: store.traffic("hour", "model", since, until, by="value")),
        ("traffic hour/deployment by value", lambda: store.traffic("hour", "deployment", since, until, by="value")),
        ("traffic hour/key by value", lambda: store.traffic("hour", "key", since, until, by="value")),
    ):
        ms, rows = await timed(call, runs, f"{label}/{name}")
        overview += ms
        overview_cpu += CPU[f"{label}/{name}"]
        out.append((label, name, ms, len(rows)))
    CPU[f"{label}/**overview, together**"] = overview_cpu
    out.append((label, "**overview, together**", overview, 0))
    models = await store.traffic("hour", "model", since, until, by="value")
    model = models[0].value if models else "smart"
    first = SpendFilter(model=model, status="error")
    name = f"log: model={model} status=error"
    ms, page = await timed(lambda: store.find_spend(first, 50), runs, f"{label}/{name}")
    out.append((label, name, ms, len(page)))
    if page:
        second = SpendFilter(model=model, status="error", before_at=page[-1].at, before_id=page[-1].id)
        name = "log: same, page 2 (keyset)"
        ms, rows = await timed(lambda: store.find_spend(second, 50), runs, f"{label}/{name}")
        out.append((label, name, ms, len(rows)))
    for name, where in (
        ("log: no filter", SpendFilter()),
        ("log: min_cost_usd=0.05 (0.03% of rows)", SpendFilter(min_cost_usd=0.05)),
        ("log: min_cost_usd=0.01 (5% of rows)", SpendFilter(min_cost_usd=0.01)),
        ("log: model + min_cost_usd=0.02", SpendFilter(model=model, min_cost_usd=0.02)),
        ("log: key + status=error", SpendFilter(key_id="key_0000000000000003", status="error")),
        ("log: guardrail=block", SpendFilter(guardrail="block")),
        ("log: min_latency_ms=20000", SpendFilter(min_latency_ms=20000.0)),
        ("log: id prefix req_ab", SpendFilter(id_prefix="req_ab")),
    ):
        ms, rows = await timed(lambda where=where: store.find_spend(where, 50), runs, f"{label}/{name}")  # type: ignore[misc]
        out.append((label, name, ms, len(rows)))
    ms, _ = await timed(
        lambda: store.get_spend(page[0].id if page else "req_x"), runs, f"{label}/one request (get_spend)"
    )
    out.append((label, "one request (get_spend)", ms, 1))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", help="a seeded SQLite file")
    parser.add_argument("--postgres", help="a seeded PostgreSQL DSN")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000:
        parser.error("--runs must be between 1 and 1000")
    results: list[tuple[str, str, float, int]] = []
    for label, dsn in (("SQLite", args.sqlite), ("PostgreSQL", args.postgres)):
        if not dsn:
            continue
        store = open_store(dsn)
        await store.open()
        try:
            results += await bench(label, store, args.runs)
        finally:
            await store.close()
    print("| store | query | median ms | CPU ms (this process) | rows |")
    print("|---|---|---|---|---|")
    for label, name, ms, rows in results:
        flag = " (over target)" if ms > TARGET_MS else ""
        cpu = CPU.get(f"{label}/{name}", 0.0)
        print(f"| {label} | {name} | {ms:.1f}{flag} | {cpu:.1f} | {rows if rows else ''} |")


if __name__ == "__main__":
    asyncio.run(main())
