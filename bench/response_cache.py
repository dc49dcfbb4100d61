"""Response cache: latency of a streamed replay (a hit) against a miss, and the miss path with the cache off.

    python bench/response_cache.py                      # 400 requests a scenario, memory and Redis backends
    python bench/response_cache.py -n 1000 --backends memory

`modelyard serve` (a real process) over the simulator (instant: what is measured is the gateway, not a
model), one client sending streamed chat requests one after another (`stream_options.include_usage`), each
read to its last byte. Scenarios, per backend:
  off   the cache disabled, a new prompt each time (the baseline path)
  miss  the cache on, a new prompt each time (lookup, upstream call, the answer read back and stored)
  hit   the cache on, one prompt over and over (a replay from the cache: no upstream call)
Reported: p50 / p95 of the time to the first byte and to the last byte, in ms. Redis is the one on
127.0.0.1:6379 (its own key prefix, deleted at the end).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

REDIS_URL = "redis://127.0.0.1:6379/0"


def config(sim: SimServer, backend: str, enabled: bool, prefix: str) -> str:
    state = f'state: {{redis_url: "{REDIS_URL}", prefix: {prefix}}}\n' if backend == "redis" else ""
    return f"""
deployments:
  - {{name: small, provider: openai, model: sim-small, api_base: "{sim.openai_base}", price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [small]}}
cache: {{enabled: {str(enabled).lower()}, backend: {backend}}}
{state}"""


def run(
    url: str, n: int, same: bool, *, model: str = "chat", headers: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    """(time to first byte, time to last byte) of n sequential streamed requests (20 more first, not
    counted), ms; `same`: one prompt over and over (hits after the first), else a new one each time."""
    first: list[float] = []
    last: list[float] = []
    fixed = f"Say something short. {uuid.uuid4().hex}"
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        for i in range(n + 20):
            content = fixed if same else f"Say something short. {uuid.uuid4().hex}"
            body = {
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            start = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                ttfb = None
                for _ in response.iter_raw():
                    if ttfb is None:
                        ttfb = time.perf_counter()
                end = time.perf_counter()
            assert response.status_code == 200 and ttfb is not None
            if same and i >= 1:
                assert response.headers.get("x-modelyard-cache") == "hit"
            if i >= 20:  # the first 20 warm up
                first.append((ttfb - start) * 1000)
                last.append((end - start) * 1000)
    return first, last


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("--backends", default="memory,redis")
    args = parser.parse_args()
    prefix = f"bench-rc-{uuid.uuid4().hex[:8]}"
    print(f"{'backend':8} {'scenario':8} {'ttfb p50':>9} {'ttfb p95':>9} {'last p50':>9} {'last p95':>9}")
    with SimServer(seed=1, instant=True) as sim, tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for scenario in ("off", "miss", "hit"):
                path = Path(tmp) / f"{backend}-{scenario}.yaml"
                path.write_text(config(sim, backend, scenario != "off", prefix))
                with GatewayProcess(path) as gw:
                    first, last = run(gw.url, args.n, same=scenario == "hit")
                print(
                    f"{backend:8} {scenario:8} {pct(first, 50):9.2f} {pct(first, 95):9.2f} "
                    f"{pct(last, 50):9.2f} {pct(last, 95):9.2f}",
                    flush=True,
                )
    if "redis" in args.backends:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for name in client.scan_iter(f"{prefix}:*"):
            client.delete(name)
        client.close()
    return None


if __name__ == "__main__":
    sys.exit(main())
