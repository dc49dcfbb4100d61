"""An open-loop load generator: requests at a fixed rate, latency measured from each request's scheduled
start (so a slow server cannot hide its queueing: no coordinated omission).

    python bench/fixed_rate.py --url http://127.0.0.1:4000 --rate 500 --duration 10 [--key sk-...] [--model m]

Prints one line `FIXED {"rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "sent"}`. hey's `-q` paces
each worker on its own and reports bursts, so gateway_bench.py uses this instead for the fixed-rate run.
The client is modelyard's own lean HTTP/1.1 client with a pool of keep-alive connections, on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from modelyard.providers.http1 import Http1Client


async def run(url: str, rate: float, duration: float, key: str, model: str) -> dict[str, float]:
    client = Http1Client(limit_per_origin=512)
    body = json.dumps(
        {
            "model": model,
            "max_tokens": 16,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello in five words."},
            ],
        }
    ).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    target = url.rstrip("/") + "/v1/chat/completions"
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            response = await client.request("POST", target, headers, body, connect_timeout=5)
            await response.read()
            response.release()
            if response.status != 200:
                errors += 1
                return
        except Exception:
            errors += 1
            return
        latencies.append((time.perf_counter() - scheduled) * 1000)

    # warm the pool
    await asyncio.gather(*(one(time.perf_counter()) for _ in range(32)))
    latencies.clear()
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []
    n = int(rate * duration)
    for i in range(n):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    client.close()
    ordered = sorted(latencies)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")

    return {
        "rps": len(ordered) / elapsed,
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "errors": errors,
        "sent": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--key", default="sk-bench")
    parser.add_argument("--model", default="bench")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    result = asyncio.run(run(args.url, args.rate, args.duration, args.key, args.model))
    print("FIXED " + json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
