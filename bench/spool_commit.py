"""What the spend spool adds to a request's hot path: µs per request of `await ctx.commit(outcome)`.

    python bench/spool_commit.py                 # uvloop, like `modelyard serve`
    python bench/spool_commit.py --iterations 50000 --json /tmp/spool.json

Each round runs K requests in one event-loop tick (K = 1, 16, 64: a lone request, and the ticks of a busy
gateway), each doing what a handler does at its end: build the Outcome, `await ctx.commit(outcome)` (the
spend record built and encoded, appended to the tick's buffer; one os.write() per tick; the await wakes
the task once more), `ctx.report(outcome)`. The figure is the time per request minus that of the same
round with the spend log off (the same contexts and outcomes, `report` only), best of 5 rounds of
`--iterations` requests. The store is a null sink, so the background writer's batches are not counted
(they run off the request path, as before). Also shown: the old hot path (a `put_nowait` of the outcome,
the record built later in the background) and the write() alone per tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.config.loader import parse_config
from modelyard.routing.attempts import AttemptRecord
from modelyard.schema.chat import Usage
from modelyard.server.app import Gateway, RequestContext
from modelyard.server.services import build_services, spend_record
from modelyard.state.sqlite_store import SQLiteStore

CONFIG = """
deployments:
  - {name: small@openai, provider: openai, model: sim-small, api_base: "http://127.0.0.1:9/v1",
     price: {input: 0.1, output: 0.4}}
models:
  fast: {candidates: [small@openai]}
"""


class NullSink:
    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        return None


async def per_request_us(gateway: Gateway, per_tick: int, iterations: int, *, commit: bool) -> float:
    records = [AttemptRecord("small@openai", "openai", "ok", 1.0)]
    usage = Usage(prompt=12, completion=16)
    dep = gateway.config.deployment("small@openai")
    assert dep is not None

    async def one() -> None:
        ctx = RequestContext(gateway, "/v1/chat/completions")
        ctx.authenticated = True
        ctx.requested_model = "fast"
        outcome = ctx.success(dep, records, usage, 0.0000076, ttft_ms=None)
        if commit:
            await ctx.commit(outcome)
        ctx.report(outcome)

    rounds = max(1, iterations // per_tick)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(per_tick)))
        best = min(best, (time.perf_counter() - began) / (rounds * per_tick) * 1e6)
        spend = gateway.services.spend if gateway.services is not None else None
        if spend is not None:
            await spend.flush()
    return best


async def write_us(directory: Path, per_tick: int, line: bytes, iterations: int) -> float:
    """One os.write() of a tick's lines to an O_APPEND file, per request."""
    fd = os.open(directory / "raw.spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"\n".join([line] * per_tick) + b"\n"
    rounds = max(1, iterations // per_tick)
    try:
        began = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, data)
        return (time.perf_counter() - began) / (rounds * per_tick) * 1e6
    finally:
        os.close(fd)


async def old_hot_path_us(gateway: Gateway, iterations: int) -> float:
    """The hot path before the spool: put the outcome on a queue (the record was built in the background)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    dep = gateway.config.deployment("small@openai")
    assert dep is not None
    ctx = RequestContext(gateway, "/v1/chat/completions")
    outcome = ctx.success(dep, [], Usage(prompt=12, completion=16), 0.0, ttft_ms=None)
    began = time.perf_counter()
    for _ in range(iterations):
        queue.put_nowait(outcome)
    return (time.perf_counter() - began) / iterations * 1e6


async def run(iterations: int) -> dict[str, Any]:
    config = parse_config(CONFIG, env={})
    directory = Path(tempfile.mkdtemp(prefix="spool-bench-"))
    off_services = build_services(config, store=SQLiteStore(":memory:"))
    off_services.spend = None
    off = Gateway(config, router=off_services.router, services=off_services)
    on_services = build_services(config, store=SQLiteStore(":memory:"))
    on_services.spend = SpendWriter(NullSink(), convert=spend_record, spool_dir=directory / "spool")
    on = Gateway(config, router=on_services.router, services=on_services)
    await on_services.spend.start()
    results: dict[str, Any] = {"iterations": iterations, "python": sys.version.split()[0], "cores": os.cpu_count()}
    try:
        await per_request_us(on, 16, 2000, commit=True)  # warm-up
        dep = config.deployment("small@openai")
        assert dep is not None
        sample = RequestContext(on, "/v1/chat/completions")
        sample.requested_model = "fast"
        attempts = [AttemptRecord("small@openai", "openai", "ok", 1.0)]
        outcome = sample.success(dep, attempts, Usage(prompt=12, completion=16), 0.0000076, ttft_ms=None)
        line = msgspec.json.encode(spend_record(outcome))
        results["record_bytes"] = len(line) + 1
        for k in (1, 16, 64):
            base = await per_request_us(off, k, iterations, commit=False)
            full = await per_request_us(on, k, iterations, commit=True)
            results[f"per_tick_{k}"] = {
                "off_us": round(base, 2),
                "on_us": round(full, 2),
                "added_us": round(full - base, 2),
                "write_us": round(await write_us(directory, k, line, iterations), 2),
            }
        results["old_put_nowait_us"] = round(await old_hot_path_us(on, iterations), 3)
    finally:
        await on_services.spend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--asyncio", action="store_true", help="the standard loop instead of uvloop")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.asyncio:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    results = asyncio.run(run(args.iterations))
    print(
        f"spend spool commit, {'asyncio' if args.asyncio else 'uvloop'}, {results['cores']} cores, "
        f"Python {results['python']}, {results['record_bytes']} bytes a record"
    )
    print("| requests per tick | off µs/req | with commit µs/req | added µs/req | of which write() µs/req |")
    print("|---|---|---|---|---|")
    for k in (1, 16, 64):
        r = results[f"per_tick_{k}"]
        print(f"| {k} | {r['off_us']} | {r['on_us']} | **{r['added_us']}** | {r['write_us']} |")
    print(f"old hot path (put_nowait of the outcome): {results['old_put_nowait_us']} µs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
