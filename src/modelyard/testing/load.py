"""The priority scenario: open-loop load in three classes against a rate-limited simulated provider.

One simulated model with a provider rate limit (`rate_limit: {rpm, burst_s}`: a token bucket, 429 beyond it)
behind one or more `modelyard serve` processes whose deployment has the same limit (`limits: {rpm, burst_s}`),
so the rate limit, not latency, is the bottleneck. Poisson arrivals at fixed rates per flow offer `overload`
times the limit: interactive, default and batch classes (10/30/60% of the offered load by default), the batch
class split between two tenants (keys) of which one offers `batch_ratio` times the other. Each request carries
its class (`x-modelyard-priority`, also the key's own class) and its deadline (`x-modelyard-timeout-ms`).

What comes back per request (status, error code, `x-modelyard-queue-ms`, client-side latency) and what the
simulator counted (accepted, rate-limited, peak rates) and the spend store holds are summarised per class:
goodput, queue wait, deadline misses, sheds; Jain's fairness index between the batch tenants; the
provider-side 429s; and "no loss" (one final answer per request, one provider call billed per 200).

Used by `bench/priority.py` (two minutes, queue on/off, two replicas on one Redis) and by the end-to-end test
`tests/e2e/test_priority_scenario.py` (seconds, higher limit).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from modelyard.testing.process import GatewayProcess, free_port, wait_http

MODEL = "limited"
SIM_MODEL = "sim-limited"
MASTER_KEY = "sk-master-priority-scenario-0000"
CLASSES = ("interactive", "default", "batch")
#: Error codes of the admission queue's 429s: shed at once (deadline, full) or timed out while waiting.
SHED_CODES = frozenset({"queue_deadline", "queue_full"})
TIMEOUT_CODE = "queue_timeout"
PROMPT = [{"role": "user", "content": "Say hello in five words."}]


@dataclass(frozen=True)
class Flow:
    """One open-loop Poisson source: a tenant (key) in a class at a fixed rate."""

    name: str
    cls: str
    rate_per_s: float
    deadline_s: float


@dataclass
class Scenario:
    """Every knob of one run; the defaults are the issue's two-minute scenario."""

    rpm: int = 600
    burst_s: float = 1.0
    overload: float = 2.0
    duration_s: float = 120.0
    shares: dict[str, float] = field(default_factory=lambda: {"interactive": 0.1, "default": 0.3, "batch": 0.6})
    #: The big batch tenant offers this many times the small one.
    batch_ratio: float = 10.0
    deadlines_s: dict[str, float] = field(default_factory=lambda: {"interactive": 2.0, "default": 10.0, "batch": 30.0})
    queue: bool = True
    replicas: int = 1
    redis_url: str | None = None
    #: The simulated model's time to first token (lognormal) and answer length: fast and small.
    ttft_p50_ms: float = 60.0
    ttft_p95_ms: float = 100.0
    output_tokens: int = 8
    max_wait_ms: float = 30_000.0
    seed: int = 14
    #: How long past its deadline the client waits before it calls a request lost.
    grace_s: float = 10.0

    def flows(self) -> list[Flow]:
        total = self.rpm / 60.0 * self.overload
        flows: list[Flow] = []
        for cls in CLASSES:
            rate = total * self.shares.get(cls, 0.0)
            if rate <= 0:
                continue
            deadline = self.deadlines_s[cls]
            if cls == "batch":
                small = rate / (1.0 + self.batch_ratio)
                flows.append(Flow("batch-small", cls, small, deadline))
                flows.append(Flow("batch-big", cls, rate - small, deadline))
            else:
                flows.append(Flow(cls, cls, rate, deadline))
        return flows


@dataclass
class Outcome:
    """What one request got: exactly one per request sent."""

    flow: str
    cls: str
    sent_at: float  # seconds after the start of the run (its scheduled arrival)
    replica: int
    status: int = 0  # 0: no answer (a client-side timeout or a connection error)
    code: str = ""
    queue_ms: float | None = None
    latency_ms: float = 0.0
    error: str = ""
    #: Provider calls the gateway made for it (`x-modelyard-attempts`): above 1 after a provider's 429.
    attempts: int = 0


@dataclass
class RunResult:
    scenario: Scenario
    outcomes: list[Outcome]
    sim: dict[str, Any]
    spend: dict[str, int] | None
    wall_s: float
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ the processes


def fleet(s: Scenario) -> dict[str, Any]:
    return {
        "seed": s.seed,
        "models": [
            {
                "name": SIM_MODEL,
                "ttft_ms": {"p50": s.ttft_p50_ms, "p95": s.ttft_p95_ms},
                "tokens_per_second": 0,
                "output_tokens": s.output_tokens,
                "rate_limit": {"rpm": s.rpm, "burst_s": s.burst_s},
            }
        ],
    }


def gateway_config(s: Scenario, sim_url: str, store: Path, spool: Path, prefix: str) -> str:
    state = f"state: {{redis_url: {json.dumps(s.redis_url)}, prefix: {prefix}}}\n" if s.redis_url else ""
    return f"""
deployments:
  - name: limited@sim
    provider: openai
    model: {SIM_MODEL}
    api_base: {sim_url}/v1
    api_key: sim
    price: {{input: 1, output: 2}}
    limits: {{rpm: {s.rpm}, burst_s: {s.burst_s}}}
    timeouts: {{connect: 2, first_token: 30, total: 60}}
models:
  {MODEL}: {{candidates: [limited@sim], queue: {{enabled: {str(s.queue).lower()}}}}}
queue:
  max_wait_ms: {s.max_wait_ms}
access:
  master_key: {MASTER_KEY}
spend:
  store: {store}
  spool_dir: {spool}
  flush_interval_s: 0.2
{state}"""


def _keys(url: str, flows: list[Flow]) -> dict[str, str]:
    """One virtual key per flow, its class as its own priority and cap (fairness within a class is per key)."""
    keys: dict[str, str] = {}
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as client:
        for flow in flows:
            body = {"name": f"priority-{flow.name}", "priority": flow.cls, "max_priority": flow.cls}
            answer = client.post(url + "/admin/keys", json=body)
            answer.raise_for_status()
            keys[flow.name] = answer.json()["key"]
    return keys


def _sim_stats(sim_url: str) -> dict[str, Any]:
    stats = httpx.get(sim_url + "/_sim/stats", timeout=10).json()
    models = stats.get("models", stats)
    return dict(models.get(SIM_MODEL) or {})


def _spend_rows(store: Path) -> dict[str, int] | None:
    if not store.exists():
        return None
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM modelyard_spend WHERE model = ? GROUP BY status", (MODEL,))
        return {str(status): int(count) for status, count in rows}


def run_scenario(s: Scenario, workdir: Path) -> RunResult:
    """Start the simulator and `s.replicas` gateways as processes in `workdir`, drive the load, stop them
    (so the spend log is flushed) and collect what each side saw."""
    workdir.mkdir(parents=True, exist_ok=True)
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    fleet_path = workdir / "fleet.yaml"
    fleet_path.write_text(yaml.safe_dump(fleet(s)))
    store = workdir / "spend.db"
    prefix = f"prio{int(time.time() * 1000) % 10**10}"  # fresh shared buckets per run
    notes: list[str] = []
    sim = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli.main", "sim", "--port", str(sim_port), "--fleet", str(fleet_path)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "sim.log").open("wb"),
    )
    gateways: list[GatewayProcess] = []
    try:
        for i in range(s.replicas):
            config = workdir / f"gateway{i}.yaml"
            config.write_text(gateway_config(s, sim_url, store, workdir / f"spool{i}", prefix))
            gateways.append(GatewayProcess(config, log=workdir / f"gateway{i}.log"))
        wait_http(sim_url + "/_sim/health", sim)
        for gw in gateways:
            gw.start()
        flows = s.flows()
        keys = _keys(gateways[0].url, flows)
        started = time.perf_counter()
        outcomes = asyncio.run(drive(s, flows, keys, [gw.url for gw in gateways]))
        wall = time.perf_counter() - started
        time.sleep(0.2)
        sim_stats = _sim_stats(sim_url)
    finally:
        for gw in gateways:
            gw.stop()
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
    for gw in gateways:
        if "Traceback" in gw.log_text():
            notes.append(f"{gw.log.name} has a traceback")
    return RunResult(s, outcomes, sim_stats, _spend_rows(store), wall, notes)


# ------------------------------------------------------------------------------------------ the load


async def drive(s: Scenario, flows: list[Flow], keys: dict[str, str], urls: list[str]) -> list[Outcome]:
    """Open-loop Poisson arrivals per flow for `s.duration_s`; waits for every answer (or its grace)."""
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    counter = 0

    async def one(session: aiohttp.ClientSession, flow: Flow, at: float, replica: int) -> None:
        outcome = Outcome(flow.name, flow.cls, at, replica)
        headers = {
            "Authorization": f"Bearer {keys[flow.name]}",
            "x-modelyard-priority": flow.cls,
            "x-modelyard-timeout-ms": str(int(flow.deadline_s * 1000)),
        }
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": 16}
        timeout = aiohttp.ClientTimeout(total=flow.deadline_s + s.grace_s)
        began = start + at
        try:
            async with session.post(
                urls[replica] + "/v1/chat/completions", json=body, headers=headers, timeout=timeout
            ) as resp:
                outcome.status = resp.status
                raw = await resp.read()
                queue_ms = resp.headers.get("x-modelyard-queue-ms")
                outcome.queue_ms = float(queue_ms) if queue_ms is not None else None
                attempts = resp.headers.get("x-modelyard-attempts", "").split(";", 1)[0]
                outcome.attempts = int(attempts) if attempts.isdigit() else 0
            if outcome.status != 200:
                outcome.code = _error_code(raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            outcome.error = type(exc).__name__
        outcome.latency_ms = (loop.time() - began) * 1000.0
        outcomes.append(outcome)

    async def source(session: aiohttp.ClientSession, flow: Flow, rng: random.Random) -> None:
        nonlocal counter
        at = rng.expovariate(flow.rate_per_s)
        while at < s.duration_s:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            replica = counter % len(urls)
            counter += 1
            task = asyncio.create_task(one(session, flow, at, replica))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            at += rng.expovariate(flow.rate_per_s)

    async with aiohttp.ClientSession(connector=connector) as session:
        start = loop.time() + 0.05
        await asyncio.gather(*(source(session, flow, random.Random(s.seed * 1000 + i)) for i, flow in enumerate(flows)))
        while tasks:
            await asyncio.gather(*list(tasks))
    return outcomes


def _error_code(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error") or {}
    except (ValueError, AttributeError):
        return "unparsed"
    code = error.get("code") if isinstance(error, dict) else None
    return str(code or (error.get("type") if isinstance(error, dict) else "") or "none")


# ------------------------------------------------------------------------------------------ the analysis


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def max_min_shares(capacity: float, demands: list[float]) -> list[float]:
    """Max-min fair shares of `capacity` (water-filling): no tenant gets more than it asks for, and what one
    does not use is split evenly among those that want more."""
    shares = [0.0] * len(demands)
    left = capacity
    pending = sorted(range(len(demands)), key=lambda i: demands[i])
    while pending:
        even = left / len(pending)
        i = pending[0]
        if demands[i] <= even:
            shares[i] = demands[i]
            left -= demands[i]
            pending.pop(0)
        else:
            for j in pending:
                shares[j] = even
            break
    return shares


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: 1.0 when all equal, 1/n when one gets everything."""
    if not values or not any(values):
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def _refused(o: Outcome) -> bool:
    """No capacity, said at once by something other than the queue: the gateway's limits with the queue off
    (503 no_deployment_available) or a provider's 429 passed through."""
    if o.status == 503 and o.code == "no_deployment_available":
        return True
    return o.status == 429 and o.code not in SHED_CODES and o.code != TIMEOUT_CODE


def _missed(o: Outcome, limit_ms: float) -> bool:
    """Admitted (not shed, not refused at once) and without a 200 within its deadline."""
    if o.status == 200:
        return o.latency_ms > limit_ms
    return not (o.status == 429 and o.code in SHED_CODES) and not _refused(o)


def _dispatched_in_window(o: Outcome, window_s: float) -> bool:
    """A 200 that reached the provider while the load was still offered (not in the drain after it)."""
    return o.status == 200 and o.sent_at + (o.queue_ms or 0.0) / 1000.0 <= window_s


def summarize(result: RunResult) -> dict[str, Any]:
    """Per class, the fairness of the batch tenants, the provider's view, and the loss checks."""
    s = result.scenario
    window = s.duration_s
    flows = s.flows()
    deadline = {f.cls: f.deadline_s for f in flows}
    classes: dict[str, Any] = {}
    for cls in CLASSES:
        mine = [o for o in result.outcomes if o.cls == cls]
        if not mine:
            continue
        ok = [o for o in mine if o.status == 200]
        limit_ms = deadline[cls] * 1000.0
        on_time = [o for o in ok if o.latency_ms <= limit_ms]
        codes: dict[str, int] = {}
        for o in mine:
            if o.status != 200:
                key = f"{o.status}:{o.code}" if o.status else f"lost:{o.error}"
                codes[key] = codes.get(key, 0) + 1
        shed = sum(1 for o in mine if o.status == 429 and o.code in SHED_CODES)
        refused = sum(1 for o in mine if _refused(o))
        timeouts = sum(1 for o in mine if o.status == 429 and o.code == TIMEOUT_CODE)
        other = sum(1 for o in mine if o.status != 200 and o.code not in SHED_CODES and o.code != TIMEOUT_CODE)
        other -= refused
        waits = [o.queue_ms for o in ok if o.queue_ms is not None]
        classes[cls] = {
            "sent": len(mine),
            "offered_rps": round(len(mine) / window, 3),
            "ok": len(ok),
            "goodput_rps": round(sum(1 for o in on_time if _dispatched_in_window(o, window)) / window, 3),
            "wait_p50_ms": _round(percentile(waits, 0.5)),
            "wait_p99_ms": _round(percentile(waits, 0.99)),
            "latency_p50_ms": _round(percentile([o.latency_ms for o in ok], 0.5)),
            "latency_p99_ms": _round(percentile([o.latency_ms for o in ok], 0.99)),
            # A deadline miss: admitted (not shed at once) and still no answer within the deadline.
            "deadline_misses": timeouts + other + (len(ok) - len(on_time)),
            "queue_timeouts": timeouts,
            "late_200": len(ok) - len(on_time),
            "shed": shed,
            # Refused at once without the queue: the gateway's own limit (queue off), or a provider's 429.
            "refused": refused,
            "codes": codes,
            # When the misses were sent (s after the start): the first 50, to tell onset from steady state.
            "misses_sent_at_s": sorted(round(o.sent_at, 1) for o in mine if _missed(o, limit_ms))[:50],
        }
    batch = [f for f in flows if f.cls == "batch"]
    dispatched = {
        f.name: sum(1 for o in result.outcomes if o.flow == f.name and _dispatched_in_window(o, window)) / window
        for f in batch
    }
    offered = {f.name: sum(1 for o in result.outcomes if o.flow == f.name) / window for f in batch}
    fair = max_min_shares(sum(dispatched.values()), [offered[f.name] for f in batch])
    ratios = [dispatched[f.name] / share if share > 0 else 0.0 for f, share in zip(batch, fair, strict=True)]
    index = jain(ratios)
    sim = result.sim
    provider_calls = int(sim.get("requests", 0))
    provider_429 = int(sim.get("rate_limited", 0))
    ok_total = sum(1 for o in result.outcomes if o.status == 200)
    answered = sum(1 for o in result.outcomes if o.status)
    spend_ok = result.spend.get("ok") if result.spend is not None else None
    return {
        "scenario": {k: v for k, v in asdict(s).items() if k != "redis_url"} | {"redis": bool(s.redis_url)},
        "classes": classes,
        "batch_tenants": {
            f.name: {
                "offered_rps": round(offered[f.name], 3),
                "dispatched_rps": round(dispatched[f.name], 3),
                "fair_share_rps": round(share, 3),
            }
            for f, share in zip(batch, fair, strict=True)
        },
        "fairness_jain": _round(index, 4),
        "provider": {
            "calls": provider_calls,
            "accepted": int(sim.get("accepted", 0)),
            "rate_limited": provider_429,
            "rate_limited_share": round(provider_429 / provider_calls, 5) if provider_calls else 0.0,
            # When the requests the gateway had to retry were sent (s after the start), the first 50.
            "retried_sent_at_s": sorted(round(o.sent_at, 2) for o in result.outcomes if o.attempts > 1)[:50],
            "max_per_second": sim.get("max_per_second"),
            "max_per_minute": sim.get("max_per_minute"),
            "limit_per_minute": s.rpm,
        },
        "loss": {
            "sent": len(result.outcomes),
            "answered": answered,
            "lost": len(result.outcomes) - answered,
            "ok": ok_total,
            "provider_accepted": int(sim.get("accepted", 0)),
            "accepted_equals_ok": int(sim.get("accepted", 0)) == ok_total,
            "spend_rows": result.spend,
            "spend_ok_equals_ok": spend_ok == ok_total if spend_ok is not None else None,
        },
        "wall_s": round(result.wall_s, 2),
        "notes": result.notes,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def markdown(title: str, summary: dict[str, Any]) -> str:
    """One Markdown table per run: a row per class, then the run-wide figures."""
    lines = [
        f"### {title}",
        "",
        "| class | offered/s | goodput/s | wait p50 ms | wait p99 ms | latency p99 ms | deadline misses | shed "
        "| refused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cls, row in summary["classes"].items():
        lines.append(
            f"| {cls} | {row['offered_rps']} | {row['goodput_rps']} | {_cell(row['wait_p50_ms'])} "
            f"| {_cell(row['wait_p99_ms'])} | {_cell(row['latency_p99_ms'])} | {row['deadline_misses']} "
            f"({row['queue_timeouts']} queue_timeout) | {row['shed']} | {row['refused']} |"
        )
    provider, loss = summary["provider"], summary["loss"]
    tenants = ", ".join(
        f"{name} {t['dispatched_rps']}/{t['fair_share_rps']} of {t['offered_rps']}"
        for name, t in summary["batch_tenants"].items()
    )
    lines += [
        "",
        f"- batch fairness (Jain, dispatched / max-min fair share): {_cell(summary['fairness_jain'])} "
        f"({tenants} req/s dispatched/fair of offered)",
        f"- provider: {provider['calls']} calls, {provider['rate_limited']} rate-limited "
        f"({provider['rate_limited_share']:.2%}); peak {provider['max_per_minute']}/min "
        f"(limit {provider['limit_per_minute']}), {provider['max_per_second']}/s",
        f"- loss: {loss['sent']} sent, {loss['answered']} answered, {loss['lost']} lost; {loss['ok']} 200s, "
        f"{loss['provider_accepted']} accepted by the provider; spend rows {loss['spend_rows']}",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
