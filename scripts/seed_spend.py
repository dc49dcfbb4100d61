"""Seed a store's spend log with realistic traffic, fast: for the dashboard's speed checks
(bench/dashboard_queries.py) and for trying the dashboard on a large log.

    python scripts/seed_spend.py /tmp/spend.db                     # 1,000,000 rows into a SQLite file
    python scripts/seed_spend.py 'postgresql://postgres@127.0.0.1:5432/test?schema=seed' --rows 200000

30 days of traffic ending `--end` (default: now), busier by day than by night; ~8 models over ~12
deployments, ~50 keys (a few busy, many quiet; one request in 10 without a key), ~3% errors, guardrail
findings on one request in 20 (a block in one of those in 10), log-normal latencies and token counts, a
compact routing trace and attempt list on every row. Deterministic for a given `--seed`.

Rows go in with plain batched inserts (SQLite `executemany` in one transaction per chunk; PostgreSQL
COPY), not through `write_spend` (whose one-JSON-parameter design is for small batches from a busy event
loop). The rollups are built by the same code `write_spend` uses (state/rollup.deltas over each chunk, then
the same upsert), so they match what the gateway would have written. A million rows took ~3 min into
each store on a busy 2-core machine (docs/benchmarks.md, "Dashboard queries").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from modelyard.accounting.spend import SpendRecord
from modelyard.routing.trace import AttemptTrace, RouteFeatures, RouteTrace
from modelyard.state.migrations import ROLLUP_GRAINS, SPEND_COLUMNS
from modelyard.state.postgres_store import PostgresStore
from modelyard.state.rollup import ROLLUP_COLUMNS, deltas, upsert_sql
from modelyard.state.sqlite_store import SQLiteStore
from modelyard.state.store import open_store, spend_row

DAYS = 30
CHUNK = 50_000

#: model → (deployments serving it, $ per 1M prompt tokens, $ per 1M completion tokens, median latency ms)
MODELS: dict[str, tuple[tuple[str, ...], float, float, float]] = {
    "smart": (("openai-gpt-4o", "azure-gpt-4o"), 2.5, 10.0, 1800.0),
    "fast": (("openai-gpt-4o-mini", "groq-llama-8b"), 0.15, 0.6, 450.0),
    "reasoning": (("openai-o3",), 2.0, 8.0, 9000.0),
    "claude": (("anthropic-sonnet", "bedrock-sonnet"), 3.0, 15.0, 2200.0),
    "haiku": (("anthropic-haiku",), 0.8, 4.0, 600.0),
    "local": (("vllm-qwen-7b",), 0.0, 0.0, 300.0),
    "embed": (("openai-embed-small",), 0.02, 0.0, 80.0),
    "gemini": (("vertex-gemini-flash", "vertex-gemini-pro"), 0.3, 2.5, 900.0),
}
MODEL_WEIGHTS = (30, 35, 3, 12, 8, 5, 5, 2)
ERROR_KINDS = ("rate_limited", "timeout", "upstream_error", "context_length")


def records(n: int, end: float, seed: int) -> Iterator[SpendRecord]:
    rng = random.Random(seed)
    names = list(MODELS)
    keys = [(f"key_{i:016x}", f"team-{i:02d}") for i in range(50)]
    key_weights = [1.0 / (i + 1) for i in range(50)]  # Zipf: a few busy keys, many quiet ones
    start = end - DAYS * 86400.0
    times: list[float] = []
    while len(times) < n:  # busier by day: accept a time with probability following the hour of day
        at = rng.uniform(start, end)
        if rng.random() < 0.35 + 0.65 * math.sin(math.pi * ((at % 86400.0) / 86400.0)) ** 2:
            times.append(at)
    times.sort()  # a log is written in time order: its indexes on (…, at) grow at their ends, as in production
    for i, at in enumerate(times):
        model = rng.choices(names, MODEL_WEIGHTS)[0]
        deployments, p_in, p_out, median_ms = MODELS[model]
        deployment = rng.choice(deployments)
        key = rng.choices(keys, key_weights)[0] if rng.random() > 0.1 else (None, None)
        failed = rng.random() < 0.03
        prompt = int(rng.lognormvariate(6.5, 1.0))
        completion = 0 if failed or model == "embed" else int(rng.lognormvariate(5.0, 0.9))
        latency = rng.lognormvariate(math.log(median_ms), 0.6)
        attempts = 2 if failed or rng.random() < 0.02 else 1
        guard = None
        if rng.random() < 0.05:
            action = "block fired 1" if rng.random() < 0.1 else "redact pass 0"
            guard = f"pii:input:redact pass 0 0.03ms, policy:input:{action} 0.{rng.randint(10, 99)}ms"
        ranked = [deployment, *(d for d in deployments if d != deployment)]
        route = RouteTrace(model=model, strategy="cost", ranked=ranked, features=RouteFeatures(prompt_tokens=prompt))
        provider = deployment.split("-", 1)[0]
        detail = [
            AttemptTrace(
                deployment, provider, "server" if failed else "ok", 0.0, round(latency, 1), 503 if failed else 200
            )
        ]
        yield SpendRecord(
            id=f"req_{rng.getrandbits(96):024x}",
            at=at,
            key_id=key[0],
            key_name=key[1],
            model=model,
            deployment=deployment,
            provider=deployment.split("-", 1)[0],
            endpoint="/v1/embeddings" if model == "embed" else "/v1/chat/completions",
            attempts=attempts,
            attempt_log=f"{deployment}:{'error' if failed else 'ok'}:{latency:.0f}ms",
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=prompt // 2 if rng.random() < 0.2 else 0,
            cost_usd=0.0 if failed else (prompt * p_in + completion * p_out) / 1e6,
            latency_ms=latency,
            ttft_ms=latency * 0.3 if model != "embed" else None,
            status="error" if failed else "ok",
            error_kind=rng.choice(ERROR_KINDS) if failed else None,
            guardrails=guard,
            route=msgspec.json.encode(route).decode(),  # the gateway's own encoding (routing/trace.py)
            attempt_detail=msgspec.json.encode(detail).decode(),
        )
        if i and i % 200_000 == 0:
            print(f"  {i:,} rows", file=sys.stderr)


def chunks(n: int, end: float, seed: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for record in records(n, end, seed):
        batch.append(spend_row(record))
        if len(batch) >= CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


async def seed_sqlite(store: SQLiteStore, n: int, end: float, seed: int) -> None:
    insert = (
        f"INSERT INTO modelyard_spend ({', '.join(SPEND_COLUMNS)}) VALUES ({', '.join('?' * len(SPEND_COLUMNS))}) "
        "ON CONFLICT (id) DO NOTHING"
    )
    marks = ", ".join("?" * len(ROLLUP_COLUMNS))
    upserts = {grain: upsert_sql(grain, f"VALUES ({marks})") for grain in ROLLUP_GRAINS}
    await store._run(lambda conn: conn.execute("PRAGMA cache_size=-1000000"))  # 1 GB: 8 indexes of random keys
    for batch in chunks(n, end, seed):
        rollups = deltas(batch)

        def write(conn: Any, batch: list[tuple[Any, ...]] = batch, rollups: Any = rollups) -> None:
            conn.execute("BEGIN")
            conn.executemany(insert, batch)
            for grain, rows in rollups.items():
                conn.executemany(upserts[grain], rows)
            conn.execute("COMMIT")

        await store._run(write)
    await store._run(lambda conn: conn.execute("ANALYZE"))


async def seed_postgres(store: PostgresStore, n: int, end: float, seed: int) -> None:
    async with store.pool.acquire() as conn:
        for grain in ROLLUP_GRAINS:
            await conn.execute(f"CREATE TEMP TABLE seed_{grain} (LIKE modelyard_spend_{grain}) ON COMMIT PRESERVE ROWS")
        for batch in chunks(n, end, seed):
            async with conn.transaction():
                await conn.copy_records_to_table("modelyard_spend", records=batch, columns=list(SPEND_COLUMNS))
                for grain, rows in deltas(batch).items():
                    await conn.copy_records_to_table(f"seed_{grain}", records=rows, columns=list(ROLLUP_COLUMNS))
        for grain in ROLLUP_GRAINS:  # chunks share buckets: sum them, then the same upsert write_spend runs
            sums = ", ".join(f"SUM({c})" for c in ROLLUP_COLUMNS[3:])
            grouped = f"SELECT bucket, dim, value, {sums} FROM seed_{grain} GROUP BY bucket, dim, value"
            await conn.execute(upsert_sql(grain, grouped))
            await conn.execute(f"DROP TABLE seed_{grain}")
        await conn.execute("ANALYZE")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="a SQLite path or a postgresql:// DSN (?schema=name for its own schema)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--end", type=float, default=None, help="unix time of the last request (default: now)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.rows <= 100_000_000:
        parser.error("--rows must be between 1 and 100,000,000")
    end = time.time() if args.end is None else args.end
    store = open_store(args.dsn)
    await store.open()
    started = time.perf_counter()
    try:
        if isinstance(store, SQLiteStore):
            await seed_sqlite(store, args.rows, end, args.seed)
        elif isinstance(store, PostgresStore):
            await seed_postgres(store, args.rows, end, args.seed)
        else:  # pragma: no cover - open_store returns one of the two
            raise SystemExit(f"no seeding for {type(store).__name__}")
    finally:
        await store.close()
    print(f"seeded {args.rows:,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
