"""The dashboard's pages on a large spend log (issue #16: ≤ 300 ms server time with 1,000,000 rows), through
a real gateway: seed N rows (scripts/seed_spend.py) into SQLite and PostgreSQL, start a gateway on each store,
log in through the login form, fetch the overview over 30 days (every row) and a filtered request-log page
`--runs` times each (after one warm-up), and report the median `server-timing` (the page wrapper's own
measure: parsing, the admin query function, its store calls, rendering).

    python bench/dashboard_pages.py --rows 1000000
    python bench/dashboard_pages.py --rows 100000 --only sqlite
    python bench/dashboard_pages.py --no-seed --sqlite /tmp/spend-1m.db      # reuse a seeded store

The request-log page filters on the busiest model and status=error (the brief's `/ui/requests?model=X&
status=error`); X is read from the overview's JSON. Seeding a million rows takes a minute or more a store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app

TARGET_MS = 300.0
MASTER = "sk-bench-dashboard-master"
ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
deployments:
  - {{name: idle, provider: openai, model: sim-small, api_base: "http://127.0.0.1:9/v1",
     price: {{input: 1, output: 1}}}}
models:
  idle: {{candidates: [idle]}}
access: {{master_key: {master}}}
spend: {{store: "{dsn}"}}
"""
_TIMING = re.compile(r"app;dur=([0-9.]+)")


def seed(dsn: str, rows: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "seed_spend.py"), dsn, "--rows", str(rows)], check=True, cwd=ROOT
    )
    return time.perf_counter() - started


def fresh_postgres(dsn: str) -> None:
    """Drop the DSN's schema, so seeding starts from an empty log."""
    import asyncpg

    from modelyard.state.postgres_store import split_schema

    base, schema = split_schema(dsn)
    if schema is None:
        raise SystemExit("--postgres needs ?schema=name (the bench drops and re-seeds it)")

    async def drop() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def log_in(client: httpx.Client) -> None:
    form = client.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None, "no login form"
    answer = client.post("/ui/login", data={"key": MASTER, "login_token": token.group(1), "next": "/ui/"})
    assert answer.status_code == 303, f"login failed: {answer.status_code}"


def timed(client: httpx.Client, path: str, params: dict[str, str], runs: int) -> tuple[float, float, int]:
    """(median server-timing ms, median wall ms, bytes): one warm-up, then `runs` fetches."""
    server, wall = [], []
    size = 0
    for i in range(runs + 1):
        started = time.perf_counter()
        response = client.get(path, params=params)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
        match = _TIMING.search(response.headers.get("server-timing", ""))
        assert match is not None, "no server-timing header"
        if i:
            server.append(float(match.group(1)))
            wall.append(elapsed)
        size = len(response.content)
    return statistics.median(server), statistics.median(wall), size


def bench(label: str, dsn: str, runs: int) -> list[dict[str, Any]]:
    config = parse_config(CONFIG.format(master=MASTER, dsn=dsn), source="bench.yaml", env={})
    out: list[dict[str, Any]] = []
    with BackgroundServer(create_app(config)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        overview = client.get("/admin/overview", params={"range": "30d"}, headers={"Authorization": f"Bearer {MASTER}"})
        assert overview.status_code == 200, overview.text
        body = overview.json()
        model = body["by"]["model"][0]["name"]
        log_in(client)
        pages: tuple[tuple[str, str, dict[str, str]], ...] = (
            ("overview 30d", "/ui/", {"range": "30d"}),
            (f"requests model={model} status=error", "/ui/requests", {"model": model, "status": "error"}),
        )
        first = client.get("/admin/requests", params=pages[1][2], headers={"Authorization": f"Bearer {MASTER}"})
        cursor = first.json()["next"]
        if cursor:  # the keyset page after the first: as fast as the first
            pages += (("  its next page (keyset)", "/ui/requests", {**pages[1][2], "before": cursor}),)
        for name, path, params in pages:
            server_ms, wall_ms, size = timed(client, path, params, runs)
            out.append(
                {
                    "store": label,
                    "page": name,
                    "server_ms": server_ms,
                    "wall_ms": wall_ms,
                    "bytes": size,
                    "rows": body["totals"]["requests"],
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sqlite", default="/tmp/modelyard-dashboard-pages.db")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test?schema=dashboard_pages")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--no-seed", action="store_true", help="use the stores as they are")
    args = parser.parse_args()
    if not 1 <= args.rows <= 100_000_000 or not 1 <= args.runs <= 100:
        parser.error("--rows in [1, 1e8], --runs in [1, 100]")
    stores = [("sqlite", args.sqlite), ("postgres", args.postgres)]
    if args.only:
        stores = [s for s in stores if s[0] == args.only]
    results: list[dict[str, Any]] = []
    for label, dsn in stores:
        if not args.no_seed:
            if label == "sqlite":
                for suffix in ("", "-wal", "-shm"):
                    Path(dsn + suffix).unlink(missing_ok=True)
            else:
                fresh_postgres(dsn)
            print(f"{label}: seeded {args.rows:,} rows in {seed(dsn, args.rows):.0f} s", file=sys.stderr)
        results += bench(label, dsn, args.runs)
    print(f"\nmedian of {args.runs} (after a warm-up); target ≤ {TARGET_MS:.0f} ms server time; cpus={os.cpu_count()}")
    print(f"{'store':9} {'rows in range':>13} {'page':42} {'server ms':>9} {'wall ms':>8} {'bytes':>8}")
    for r in results:
        mark = "" if r["server_ms"] <= TARGET_MS else "  OVER"
        print(
            f"{r['store']:9} {r['rows']:>13,} {r['page']:42} {r['server_ms']:>9.1f} {r['wall_ms']:>8.1f} "
            f"{r['bytes']:>8,}{mark}"
        )


if __name__ == "__main__":
    main()
