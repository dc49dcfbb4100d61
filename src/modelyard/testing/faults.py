"""The fault-injection suite: many requests through a real gateway to a simulated fleet that misbehaves.

Three deployments of one model: the first rate-limits 30% of its calls and hangs on 10%, the second
resets 20% of its connections, the third is healthy. N requests (half streaming) go through the gateway
at a fixed concurrency; the report says how many succeeded, how long they took, how many attempts they
needed, whether every attempt is accounted for (the simulator counts what it received), and what the
circuit breakers did. Used by `bench/fault_injection.py` and by the end-to-end test.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from modelyard.config.loader import parse_config
from modelyard.routing.health import BreakerState
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app

FLEET = {
    "seed": 5,
    "models": [
        {
            "name": "flaky-a",
            "ttft_ms": 2,
            "tokens_per_second": 0,
            "output_tokens": {"min": 8, "max": 16},
            "faults": {"rate_limit": 0.3, "retry_after_s": 0.05, "hang": 0.1, "hang_s": 30},
        },
        {
            "name": "flaky-b",
            "ttft_ms": 2,
            "tokens_per_second": 0,
            "output_tokens": {"min": 8, "max": 16},
            "faults": {"reset": 0.2},
        },
        {"name": "steady-c", "ttft_ms": 2, "tokens_per_second": 0, "output_tokens": {"min": 8, "max": 16}},
    ],
}

CONFIG = """
deployments:
  - {{name: a, provider: openai, model: flaky-a, api_base: "{sim}/v1", price: {{input: 1, output: 2}},
     timeouts: {{connect: 1, first_token: {first_token}, total: {total}}}}}
  - {{name: b, provider: openai, model: flaky-b, api_base: "{sim}/v1", price: {{input: 1, output: 2}},
     timeouts: {{connect: 1, first_token: {first_token}, total: {total}}}}}
  - {{name: c, provider: openai, model: steady-c, api_base: "{sim}/v1", price: {{input: 1, output: 2}},
     timeouts: {{connect: 1, first_token: {first_token}, total: {total}}}}}
models:
  resilient:
    strategy: priority
    candidates: [a, b, c]
    {hedge}
routing:
  retries: 1
  backoff_base_s: 0.01
  max_backoff_s: 0.05
  retry_after_cap_s: 1
  seed: 3
  breaker: {{failures: {breaker_failures}, window_s: {breaker_window_s}, cooldown_s: {breaker_cooldown_s}}}
"""


@dataclass
class SuiteSettings:
    requests: int = 2000
    concurrency: int = 50
    stream_share: float = 0.5
    first_token_timeout_s: float = 0.5
    total_timeout_s: float = 5.0
    hedge_after_ms: float | None = None
    breaker_failures: int = 100
    breaker_window_s: float = 10.0
    breaker_cooldown_s: float = 1.0


@dataclass
class SuiteReport:
    settings: SuiteSettings
    ok: int = 0
    failed: int = 0
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    attempts_reported: int = 0
    #: Attempts the gateway abandoned (a lost hedge leg); one cancelled before its request left may never
    #: reach the simulator, so `upstream_requests` lies in [attempts_reported - cancelled, attempts_reported].
    cancelled_attempts: int = 0
    upstream_requests: int = 0
    breaker_transitions: list[tuple[str, str, str]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def success_rate(self) -> float:
        return self.ok / max(1, self.settings.requests)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        opened = sum(1 for _, _, new in self.breaker_transitions if new == "open")
        closed = sum(1 for _, _, new in self.breaker_transitions if new == "closed")
        return {
            "requests": self.settings.requests,
            "concurrency": self.settings.concurrency,
            "hedge_after_ms": self.settings.hedge_after_ms,
            "ok": self.ok,
            "failed": self.failed,
            "lost": self.lost,
            "success_rate": round(self.success_rate, 5),
            "p50_ms": round(self.percentile(0.5), 1),
            "p99_ms": round(self.percentile(0.99), 1),
            "max_ms": round(max(self.latencies_ms, default=0.0), 1),
            "attempts_per_request": round(sum(self.attempts) / max(1, len(self.attempts)), 3),
            "attempts_reported": self.attempts_reported,
            "upstream_requests": self.upstream_requests,
            "cancelled_attempts": self.cancelled_attempts,
            "breaker_opened": opened,
            "breaker_closed": closed,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 2),
        }


def _hedge_line(settings: SuiteSettings) -> str:
    return f"hedge_after_ms: {settings.hedge_after_ms}" if settings.hedge_after_ms else ""


async def _one(session: aiohttp.ClientSession, url: str, i: int, stream: bool, report: SuiteReport) -> None:
    body: dict[str, Any] = {
        "model": "resilient",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": f"request {i}: say something"}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    try:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            text = await resp.text()
            attempts_header = resp.headers.get("x-modelyard-attempts", "0;")
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        report.lost += 1
        report.errors[type(exc).__name__] = report.errors.get(type(exc).__name__, 0) + 1
        return
    report.latencies_ms.append((time.perf_counter() - started) * 1000)
    count = int(attempts_header.split(";")[0] or 0)
    report.attempts.append(count)
    report.cancelled_attempts += attempts_header.count(" cancelled ")
    complete = status == 200 and (not stream or (text.rstrip().endswith("data: [DONE]") and '"error"' not in text))
    if complete:
        report.ok += 1
    else:
        report.failed += 1
        key = f"http_{status}" if status != 200 else "stream_error"
        report.errors[key] = report.errors.get(key, 0) + 1


async def _drive(url: str, settings: SuiteSettings, report: SuiteReport) -> None:
    semaphore = asyncio.Semaphore(settings.concurrency)
    timeout = aiohttp.ClientTimeout(total=settings.total_timeout_s * 10)
    connector = aiohttp.TCPConnector(limit=settings.concurrency)
    every = max(1, round(1 / settings.stream_share)) if settings.stream_share > 0 else 0

    async def guarded(i: int) -> None:
        async with semaphore:
            await _one(session, url, i, bool(every) and i % every == 0, report)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(guarded(i) for i in range(settings.requests)))


def run_fault_suite(settings: SuiteSettings | None = None, *, in_process: bool = False) -> SuiteReport:
    """Start the simulator and a gateway, drive the load, and report.

    By default the simulator and the gateway run as separate processes (`modelyard sim`, `modelyard
    serve`), as in production: latencies then measure the gateway, not a shared interpreter lock.
    `in_process=True` runs both on threads of this process (quicker to start; used by the unit suite).
    """
    settings = settings or SuiteSettings()
    report = SuiteReport(settings)
    runner = _run_in_process if in_process else _run_in_processes
    runner(settings, report)
    report.attempts_reported = sum(report.attempts)
    return report


def _config_text(settings: SuiteSettings, sim_url: str) -> str:
    return CONFIG.format(
        sim=sim_url,
        first_token=settings.first_token_timeout_s,
        total=settings.total_timeout_s,
        hedge=_hedge_line(settings),
        breaker_failures=settings.breaker_failures,
        breaker_window_s=settings.breaker_window_s,
        breaker_cooldown_s=settings.breaker_cooldown_s,
    )


def _run_in_process(settings: SuiteSettings, report: SuiteReport) -> None:
    from modelyard.sim.fleet import fleet_from_dict
    from modelyard.sim.server import SimServer

    with SimServer(fleet_from_dict(FLEET), seed=5) as sim:
        gateway = create_app(parse_config(_config_text(settings, sim.url), source="fault-suite.yaml"))
        gateway.router.health.listeners.append(
            lambda name, old, new: report.breaker_transitions.append((name, old.value, new.value))
        )
        with BackgroundServer(gateway) as server:
            started = time.perf_counter()
            asyncio.run(_drive(server.url, settings, report))
            report.wall_s = time.perf_counter() - started
            time.sleep(0.2)  # let cancelled upstream attempts reach the simulator's counters
        report.upstream_requests = _count_requests(sim.stats())


def _run_in_processes(settings: SuiteSettings, report: SuiteReport) -> None:
    import json
    import re
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    from urllib.request import urlopen

    import yaml

    from modelyard.testing.process import free_port, wait_http

    cli = [sys.executable, "-m", "modelyard.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        fleet_path = Path(tmp) / "fleet.yaml"
        fleet_path.write_text(yaml.safe_dump(FLEET))
        sim_port, gw_port = free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        config_path = Path(tmp) / "gateway.yaml"
        config_path.write_text(_config_text(settings, sim_url))
        log_path = Path(tmp) / "gateway.log"
        sim = subprocess.Popen(
            [*cli, "sim", "--port", str(sim_port), "--fleet", str(fleet_path), "--seed", "5"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen(
                [*cli, "serve", "--config", str(config_path), "--port", str(gw_port), "--log-level", "warning"],
                stdout=log,
                stderr=log,
            )
        try:
            wait_http(sim_url + "/_sim/health", sim)
            wait_http(f"http://127.0.0.1:{gw_port}/health/ready", gateway)
            started = time.perf_counter()
            asyncio.run(_drive(f"http://127.0.0.1:{gw_port}", settings, report))
            report.wall_s = time.perf_counter() - started
            time.sleep(0.2)
            with urlopen(sim_url + "/_sim/stats", timeout=5) as resp:
                report.upstream_requests = _count_requests(json.loads(resp.read()))
        finally:
            for proc in (gateway, sim):
                proc.terminate()
            for proc in (gateway, sim):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        pattern = re.compile(r"circuit (\S+): (\w+) -> (\w+)")
        for match in pattern.finditer(log_path.read_text(errors="replace")):
            report.breaker_transitions.append((match.group(1), match.group(2), match.group(3)))


def _count_requests(stats: dict[str, Any]) -> int:
    models = stats.get("models", stats)
    total = 0
    for name in ("flaky-a", "flaky-b", "steady-c"):
        entry = models.get(name) or {}
        total += int(entry.get("requests", 0))
    return total


__all__ = ["BreakerState", "SuiteReport", "SuiteSettings", "run_fault_suite"]
