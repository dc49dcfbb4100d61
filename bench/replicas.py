"""Issue #15's benchmark: what sharing health and the response cache through Redis costs a gateway.

    python bench/replicas.py --rounds 5                 # 5 alternated rounds of 5 s per side and scenario
    python bench/replicas.py --rounds 7 --duration 8 --scenarios miss

One `modelyard serve` process per side (one worker each), all up at once over bench/upstream.py, the same
config but for:
  on       state.shared_health: true, cache backend redis (shared health + the shared response cache)
  off      state.shared_health: false, cache backend memory (each replica on its own)
  health   shared health, memory cache (`--sides` adds or drops these two, which split the difference)
  cache    per-replica health, Redis cache
  nocache  per-replica health, the response cache disabled (not in the default set)
All have `state.redis_url` (a private redis-server started here, no persistence, so its command counts are
ours alone); the client uses the master key (no key limits: no other Redis call on the
request path). Load: wrk at c=16,
  miss  a new deterministic prompt every request (lookup, upstream call, store: the cache's miss path)
  hit   one deterministic prompt over and over (a hit every time after the first)
Every side is measured in each round, the order reversed every other round (the guide's protocol for
"within X%"): the median req/s ratio against `off` and its spread, and CPU per request. Then:
  - the Redis commands of cache misses on `on`: INFO commandstats deltas over N sequential misses, less the background
    rate (the health sync) measured idle for as long, and `redis-cli MONITOR` of one miss;
  - latency of a streamed replay (a hit) against a streamed miss, on `off` (memory) and `on` (Redis): p50/p95
    of the time to the first byte and to the last byte, sequential requests;
  - the stores alone, in this process: CPU per put of the memory store and of the two-level Redis store (its
    background writer and key listener included) at a paced rate (`--store-rate`), which is what a miss
    costs the replica beyond the memory backend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb
from response_cache import run as streamed_latency

from modelyard.testing.process import free_port

MASTER = "sk-bench-replicas-master-0123456789"

CONFIG = """
deployments:
  - {{name: primary, provider: openai, model: bench-primary, api_base: "{upstream}/v1", api_key: sk-up,
      price: {{input: 2.5, output: 10}}}}
  - {{name: secondary, provider: openai, model: bench-secondary, api_base: "{upstream}/v1", api_key: sk-up,
      price: {{input: 5, output: 15}}}}
models:
  bench: {{strategy: cost, candidates: [primary, secondary]}}
access: {{master_key: {master}}}
spend: {{store: "{store}"}}
state: {{redis_url: "{redis}", prefix: "{prefix}", shared_health: {shared}}}
cache: {{enabled: {cache}, backend: {backend}, ttl_s: 600}}
"""

#: wrk script for the miss scenario: chat.lua's request, a prompt no request has sent before (thread, counter).
MISS_LUA = """
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
local run = os.getenv("RUN") or "0"
local n = 0
request = function()
  n = n + 1
  local body = '{"model":"bench","messages":[{"role":"system","content":"You are terse."},'
    .. '{"role":"user","content":"Say hello in five words. ' .. run .. '-' .. tostring(tid) .. '-' .. n .. '"}],'
    .. '"max_tokens":16,"temperature":0}'
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"rps":%.2f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"errors":%d,"non2xx":%d}\\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


class Redis:
    """A private redis-server: no other client's commands in its counts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(100):
            if self.cli("PING").strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return done.stdout

    def commandstats(self) -> dict[str, int]:
        """calls per command since start."""
        out: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_") :].split(":", 1)
                out[name] = int(rest.split(",")[0].split("=")[1])
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


#: The sides: shared health, response cache enabled, its backend. `on` and `off` are issue #15's pair; the others
#: split the difference between its two features (`--sides`).
SIDES: dict[str, tuple[bool, bool, str]] = {
    "off": (False, True, "memory"),
    "on": (True, True, "redis"),
    "health": (True, True, "memory"),
    "cache": (False, True, "redis"),
    "nocache": (False, False, "memory"),
}


def start_side(name: str, upstream: str, redis: Redis, tmp: Path) -> gb.Contender:
    shared, enabled, backend = SIDES[name]
    config = tmp / f"{name}.yaml"
    config.write_text(
        CONFIG.format(
            upstream=upstream,
            master=MASTER,
            store=tmp / f"{name}.db",
            redis=redis.url,
            prefix=f"bench-{name}-{uuid.uuid4().hex[:8]}",
            shared=str(shared).lower(),
            cache=str(enabled).lower(),
            backend=backend,
        )
    )
    port = free_port()
    proc = gb.spawn(
        [gb.PY, "-m", "modelyard.cli.main", "serve", "--config", str(config), "--port", str(port)],
        log=tmp / f"{name}.log",
    )
    url = f"http://127.0.0.1:{port}"
    gb.wait_http(url + "/health/ready", proc, timeout=120)
    return gb.Contender(name, url, "bench", MASTER, proc)


def cache_counts(side: gb.Contender) -> tuple[int, int]:
    """(hits, misses) of the side's response cache, by its /metrics."""
    text = httpx.get(side.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10).text
    found = dict.fromkeys(("hits", "misses"), 0)
    for line in text.splitlines():
        for what in found:
            if line.startswith(f"modelyard_response_cache_{what}_total "):
                found[what] = int(float(line.split()[1]))
    return found["hits"], found["misses"]


def run_wrk(side: gb.Contender, scenario: str, duration: float, tmp: Path) -> dict[str, Any]:
    script = tmp / "miss.lua" if scenario == "miss" else gb.HERE / "chat.lua"
    run = uuid.uuid4().hex[:8]
    before = cache_counts(side)
    os.environ["RUN"] = run  # read by miss.lua (gb.wrk passes the environment on)
    pid = side.proc.pid if side.proc else 0
    cpu = gb.cpu_seconds(pid)
    result = gb.wrk(side, 16, duration, script=str(script))
    result["cpu_us"] = (gb.cpu_seconds(pid) - cpu) * 1e6 / max(1, result["requests"])
    after = cache_counts(side)
    result["hits"], result["misses"] = after[0] - before[0], after[1] - before[1]
    return result


# ------------------------------------------------------------------ Redis commands of a miss


def miss_commands(side: gb.Contender, redis: Redis, n: int) -> dict[str, Any]:
    """Commands per miss: commandstats over `n` sequential misses less the idle background rate."""
    headers = {"Authorization": f"Bearer {MASTER}"}

    def body() -> dict[str, Any]:
        prompt = f"Say hello. {uuid.uuid4().hex}"
        return {"model": "bench", "messages": [{"role": "user", "content": prompt}], "temperature": 0}

    with httpx.Client(base_url=side.url, headers=headers, timeout=10) as client:
        for _ in range(20):  # warm
            client.post("/v1/chat/completions", json=body())
        start = redis.commandstats()
        t0 = time.monotonic()
        for _ in range(n):
            answer = client.post("/v1/chat/completions", json=body())
            assert answer.headers.get("x-modelyard-cache") == "miss", answer.headers
        busy_s = time.monotonic() - t0
        during = redis.commandstats()
        time.sleep(busy_s)  # the same time idle: the background sync's share
        idle = redis.commandstats()
        # One miss under MONITOR: every command Redis received while it ran.
        monitor = subprocess.Popen(
            ["redis-cli", "-p", str(redis.port), "MONITOR"], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(monitor.stdout or ()), daemon=True)
        reader.start()
        time.sleep(0.3)
        mark = len(lines)
        answer = client.post("/v1/chat/completions", json=body())
        time.sleep(0.05)
        seen = lines[mark:]
        monitor.terminate()
        monitor.wait(timeout=5)
    names = set(during) | set(start) | set(idle)
    per_miss = {}
    for name in sorted(names):
        busy = during.get(name, 0) - start.get(name, 0)
        background = idle.get(name, 0) - during.get(name, 0)
        if busy or background:
            per_miss[name] = {"during": busy, "idle_same_time": background, "per_miss": (busy - background) / n}
    return {"n": n, "seconds": busy_s, "commands": per_miss, "monitor": seen, "status": answer.status_code}


# ------------------------------------------------------------------ the stores alone


def store_cpu(redis_url: str, rate: float, seconds: float) -> dict[str, float]:
    """CPU µs per put (this process, background tasks included) of each store at `rate` puts a second, 700-byte
    values, new keys: the memory store, then the two-level Redis store (L1 + batched background writes)."""
    import asyncio

    from modelyard.state.response_cache_store import MemoryCacheStore, RedisCacheStore

    async def run(store: Any) -> float:
        await store.start()
        await asyncio.sleep(0.3)
        value = os.urandom(700)
        step = 0.001
        per_step = max(1, int(rate * step))
        puts = 0
        cpu, start = time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(per_step):
                await store.put(uuid.uuid4().hex * 2, value, 60)
                puts += 1
            await asyncio.sleep(step)
        if isinstance(store, RedisCacheStore):
            await store.flush()
        used = time.process_time() - cpu
        await store.close()
        return used * 1e6 / puts

    async def both() -> dict[str, float]:
        memory = await run(MemoryCacheStore(10_000, 64 << 20))
        prefix = f"bench-store-{uuid.uuid4().hex[:8]}"
        shared = await run(RedisCacheStore(redis_url, prefix=prefix, timeout_s=1.0))
        return {"memory": memory, "redis": shared}

    return asyncio.run(both())


def report_store_cpu(redis_url: str, rate: float) -> None:
    for _ in range(2):
        cpu = store_cpu(redis_url, rate, 3.0)
        print(
            f"\nthe stores alone, {rate:.0f} puts/s for 3 s (CPU per put, background included): "
            f"memory {cpu['memory']:.1f} us, two-level Redis {cpu['redis']:.1f} us"
        )


def describe(run: dict[str, Any]) -> str:
    errors = run["errors"] + run["non2xx"]
    return (
        f"{run['rps']:.0f} req/s (p50 {run['p50_ms']:.2f} ms, {run['cpu_us']:.0f} us CPU/request; {run['hits']} hits, "
        f"{run['misses']} misses; {errors} errors)"
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--scenarios", default="miss,hit")
    parser.add_argument("--sides", default="off,on,health,cache", help=f"of {', '.join(SIDES)}; needs off and on")
    parser.add_argument("--misses", type=int, default=300, help="sequential misses for the Redis command count")
    parser.add_argument("--latency-n", type=int, default=300, help="streamed requests per latency scenario")
    parser.add_argument("--store-rate", type=float, default=4000, help="puts a second for the stores alone")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    names = args.sides.split(",")
    if "off" not in names or "on" not in names or set(names) - set(SIDES):
        parser.error(f"--sides: a list of {', '.join(SIDES)} with off and on")
    redis = Redis()
    upstream, upstream_proc = gb.start_upstream(0)
    sides: dict[str, gb.Contender] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-replicas-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "miss.lua").write_text(MISS_LUA)
        try:
            for name in names:
                sides[name] = start_side(name, upstream, redis, tmp)
            for side in sides.values():
                for scenario in scenarios:
                    run_wrk(side, scenario, 2, tmp)  # warm-up
            rows: dict[tuple[str, str], list[dict[str, Any]]] = {(n, s): [] for n in names for s in scenarios}
            for i in range(args.rounds):
                order = names if i % 2 == 0 else names[::-1]
                for scenario in scenarios:
                    for name in order:
                        got = run_wrk(sides[name], scenario, args.duration, tmp)
                        rows[name, scenario].append(got)
                        print(f"round {i + 1} {scenario} {name}: {describe(got)}", flush=True)
            print(f"\n{args.rounds} rounds of {args.duration:.0f} s, c=16, sides alternating; ratios against `off`:")
            for scenario in scenarios:
                base = rows["off", scenario]
                for name in names:
                    mine = rows[name, scenario]
                    rps = statistics.median(r["rps"] for r in mine)
                    cpu_us = statistics.median(r["cpu_us"] for r in mine)
                    line = f"  {scenario} {name}: median {rps:.0f} req/s, {cpu_us:.0f} us CPU/request"
                    if name != "off":
                        ratios = sorted(m["rps"] / b["rps"] for m, b in zip(mine, base, strict=True))
                        line += (
                            f"; req/s ratio median {statistics.median(ratios):.3f} "
                            f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})"
                        )
                    print(line)

            counted = miss_commands(sides["on"], redis, args.misses)
            print(f"\nRedis commands, {counted['n']} sequential cache misses on `on` ({counted['seconds']:.1f} s):")
            for name, row in counted["commands"].items():
                print(
                    f"  {name}: {row['during']} during, {row['idle_same_time']} idle for as long "
                    f"-> {row['per_miss']:.2f} per miss"
                )
            print("  MONITOR of one miss (every command Redis received meanwhile):")
            for line in counted["monitor"]:
                print("    " + line.strip()[:160])

            print(f"\nstreamed latency, {args.latency_n} sequential requests each (ms):")
            for label, side, same in (
                ("off (memory cache): miss, new prompts", sides["off"], False),
                ("off (memory cache): hit, streamed replay", sides["off"], True),
                ("on (Redis cache): miss, new prompts", sides["on"], False),
                ("on (Redis cache): hit, streamed replay", sides["on"], True),
            ):
                first, last = streamed_latency(
                    side.url, args.latency_n, same, model="bench", headers={"Authorization": f"Bearer {MASTER}"}
                )
                print(
                    f"  {label}: first byte p50 {pct(first, 0.5):.2f} p95 {pct(first, 0.95):.2f}; "
                    f"last byte p50 {pct(last, 0.5):.2f} p95 {pct(last, 0.95):.2f}"
                )
            report_store_cpu(redis.url, args.store_rate)
        finally:
            for side in sides.values():
                side.stop()
            upstream_proc.terminate()
            redis.stop()


if __name__ == "__main__":
    main()
