"""Overhead of keys + budgets + spend log (+ metrics): the same load through two gateways, in one run.

    python bench/overhead_features.py [--requests 4000] [--concurrency 32] [--rounds 3] [--json out.json]

One zero-latency simulator and two gateways, each in its own process (uvicorn, uvloop, httptools):

* off: the gateway without the money-and-access services (no key check, no counters, no spend log);
* on:  the gateway as `modelyard serve` builds it: a master key, one virtual key with an RPM and TPM
       limit and a budget, the spend log batching into a SQLite file, /metrics.

The load generator (aiohttp, this process) sends identical small chat requests, alternating rounds
off/on/off/on... so drift of a shared machine hits both alike, and prints req/s, p50 and p99 latency for
each and the on/off ratio. A second section times the added hot-path work in-process (admit + settle +
spend record + metrics for one request), which a busy machine does not blur.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BODY = {"model": "fast", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}
MASTER = "sk-bench-master-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(sim_port: int, store: str | None) -> str:
    access = ""
    if store:
        access = f"access: {{master_key: {MASTER}}}\nspend: {{store: {store}, flush_interval_s: 0.5}}\n"
    return f"""
deployments:
  - name: small@openai
    provider: openai
    model: sim-small
    api_base: http://127.0.0.1:{sim_port}/v1
    api_key: sim
    price: {{input: 0.1, output: 0.4}}
models:
  fast: {{candidates: [small@openai]}}
{access}"""


def serve_sim(port: int) -> None:
    import uvicorn

    from modelyard.sim.app import create_app
    from modelyard.sim.fleet import default_fleet

    uvicorn.run(
        create_app(default_fleet().instant()),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def serve_gateway(port: int, text: str, features: bool) -> None:
    import uvicorn

    from modelyard.config.loader import parse_config
    from modelyard.server.app import Gateway
    from modelyard.server.factory import create_app
    from modelyard.server.services import build_router

    config = parse_config(text, env={})
    app = create_app(config) if features else Gateway(config, router=build_router(config))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


async def wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/health/live") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start")
            await asyncio.sleep(0.1)


async def make_key(url: str) -> str:
    body = {"name": "bench", "rpm": 10_000_000, "tpm": 10_000_000_000, "budget_usd": 1_000_000.0}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/admin/keys", json=body, headers={"Authorization": f"Bearer {MASTER}"}) as response,
    ):
        response.raise_for_status()
        return str((await response.json())["key"])


async def load(url: str, key: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """(req/s, latencies in ms) for `requests` requests over `concurrency` connections."""
    latencies: list[float] = []
    remaining = requests
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return requests / elapsed, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def http_bench(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    sim_port, off_port, on_port = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    processes = [
        ctx.Process(target=serve_sim, args=(sim_port,), daemon=True),
        ctx.Process(target=serve_gateway, args=(off_port, config_text(sim_port, None), False), daemon=True),
        ctx.Process(
            target=serve_gateway, args=(on_port, config_text(sim_port, str(tmp / "spend.db")), True), daemon=True
        ),
    ]
    for process in processes:
        process.start()
    try:
        urls = {"off": f"http://127.0.0.1:{off_port}", "on": f"http://127.0.0.1:{on_port}"}
        for url in urls.values():
            await wait_up(url)
        keys = {"off": "unused", "on": await make_key(urls["on"])}
        for name in ("off", "on"):
            await load(urls[name], keys[name], args.warmup, args.concurrency)
        results: dict[str, dict[str, list[float]]] = {n: {"rps": [], "lat": []} for n in urls}
        for _ in range(args.rounds):
            for name in ("off", "on"):
                rps, latencies = await load(urls[name], keys[name], args.requests, args.concurrency)
                results[name]["rps"].append(rps)
                results[name]["lat"].extend(latencies)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(5)
    summary: dict[str, dict[str, Any]] = {
        name: {
            "rps": statistics.median(r["rps"]),
            "p50_ms": percentile(r["lat"], 0.5),
            "p99_ms": percentile(r["lat"], 0.99),
        }
        for name, r in results.items()
    }
    paired = [on / off for on, off in zip(results["on"]["rps"], results["off"]["rps"], strict=True)]
    summary["ratio"] = {
        "rps": summary["on"]["rps"] / summary["off"]["rps"],
        "paired_median": statistics.median(paired),
        "paired": paired,
    }
    return summary


async def hot_path_us(iterations: int) -> dict[str, float]:
    """µs per request of the gateway's per-request bookkeeping, with and without the services, in-process
    (no sockets, no provider): context, admission, outcome, observers; the spend writer's batches run on
    the same loop meanwhile, so their cost is included."""
    from modelyard.config.loader import parse_config
    from modelyard.routing.attempts import AttemptRecord
    from modelyard.routing.features import RequestFeatures
    from modelyard.schema.chat import Usage
    from modelyard.server.access import credential_of
    from modelyard.server.app import Gateway, RequestContext
    from modelyard.server.observe import Outcome
    from modelyard.server.services import build_router, build_services
    from modelyard.state.sqlite_store import SQLiteStore

    config = parse_config(config_text(1, '":memory:"'), env={})
    services = build_services(config, store=SQLiteStore(":memory:"))
    on = Gateway(config, router=services.router, observer=services.observer(), services=services)
    off = Gateway(config, router=build_router(config))
    await services.start()
    await on.observer.start()
    assert services.access is not None
    raw, _ = await services.access.create_key("bench", rpm=10**9, tpm=10**12, budget_usd=10.0**6)
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {raw}".encode())]
    records = [AttemptRecord("small@openai", "openai", "ok", 1.0)]
    usage = Usage(prompt=12, completion=16)

    async def one(gateway: Gateway) -> None:
        ctx = RequestContext(gateway, "/v1/chat/completions")
        if gateway.services is not None:
            ctx.credential = credential_of(headers)
        await gateway.admit(ctx, "fast", RequestFeatures(prompt_tokens=12, max_output_tokens=16))
        ctx.report(Outcome(ctx, "ok", "small@openai", "openai", records, usage, 0.0000076, 1.0, None))

    async def timed(gateway: Gateway) -> float:
        for _ in range(1000):
            await one(gateway)
        began = time.perf_counter()
        for _ in range(iterations):
            await one(gateway)
        if gateway.services is not None and gateway.services.spend is not None:
            await gateway.services.spend.flush()  # the batches this load made are part of its cost
        return (time.perf_counter() - began) / iterations * 1e6

    base = min([await timed(off) for _ in range(3)])
    full = min([await timed(on) for _ in range(3)])
    await on.observer.close()
    await services.close()
    return {"off_us": base, "on_us": full, "added_us": full - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and gateway")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--hot-path-iterations", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    micro = asyncio.run(hot_path_us(args.hot_path_iterations))
    summary = asyncio.run(http_bench(args))
    print(
        f"{args.rounds} rounds x {args.requests} requests, concurrency {args.concurrency}, "
        f"{mp.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    print(f"{'gateway':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    labels = (("off", "off (no keys/budgets/spend log)"), ("on", "on (keys+budgets+spend+metrics)"))
    for name, label in labels:
        row = summary[name]
        print(f"{label:<34}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}")
    ratio = summary["ratio"]
    print(
        f"ratio on/off (req/s): {ratio['rps']:.3f} of medians; per round (back to back) "
        f"{', '.join(f'{r:.2f}' for r in ratio['paired'])}: median {ratio['paired_median']:.3f}"
    )
    print(
        f"per-request bookkeeping, in-process: off {micro['off_us']:.1f} us, on {micro['on_us']:.1f} us: "
        f"{micro['added_us']:.1f} us added (auth + limits + budget + settle + spend log + metrics)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"http": summary, "hot_path": micro, "args": vars(args)}, default=str, indent=2)
        )


if __name__ == "__main__":
    main()
