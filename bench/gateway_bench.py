"""Gateway overhead, side by side: direct vs a minimal pass-through vs modelyard (every feature on) vs LiteLLM.

    python bench/gateway_bench.py                      # everything (installs LiteLLM into /tmp/venv-litellm)
    python bench/gateway_bench.py --no-litellm --duration 5 --only direct,passthrough,modelyard

One upstream (bench/upstream.py: a fast OpenAI mock, 0 ms and then 50 ms of latency) and the same load for
every contender: wrk with bench/chat.lua; bench/fixed_rate.py, an open-loop generator, for the fixed-rate
run; an aiohttp client for streaming time to first token. Every contender runs with one worker, started one
at a time on loopback. Per contender and scenario: requests/s, latency p50/p99 and the added latency
(contender minus direct, same run), CPU milliseconds per request and peak RSS of the contender's process
tree. Results go to stdout as a table and to bench/results/<timestamp>.json.

modelyard runs as `modelyard serve` with a master key, a virtual key (with RPM/TPM limits and a budget),
a `cost` routing strategy over two deployments, accounting, /metrics and the spend log in SQLite: the
real product with everything on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

sys.path.insert(0, str(Path(__file__).resolve().parent))
import everything_on

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/tmp/venv-litellm"))
LITELLM_SPEC = os.environ.get("LITELLM_SPEC", "litellm[proxy]")
BENCH_KEY_MASTER = "sk-bench-master-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 120, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urlopen(Request(url, headers=headers or {}), timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None) in (401, 404, 405):
                return
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        for child in out.split():
            pids.extend(process_tree(int(child)))
    except OSError:
        pass
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_mb(pid: int, peak: bool = True) -> float:
    total = 0
    key = "VmHWM" if peak else "VmRSS"
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Contender:
    name: str
    url: str  # base URL (…/v1/chat/completions is appended)
    model: str
    key: str
    proc: subprocess.Popen[bytes] | None = None
    cleanup: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for item in self.cleanup:
            item()


def spawn(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log or os.devnull, "wb") as out:
        return subprocess.Popen(
            cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


# --------------------------------------------------------------------------- contenders


def start_upstream(delay_ms: float) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = spawn([PY, str(HERE / "upstream.py"), "--port", str(port), "--delay-ms", str(delay_ms)])
    time.sleep(0.5)
    url = f"http://127.0.0.1:{port}"
    for _ in range(50):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return url, proc


def uvicorn_cmd(
    target: str, port: int, workers: int = 1, factory: bool = False, app_dir: Path | None = None
) -> list[str]:
    cmd = [
        PY,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    if factory:
        cmd.append("--factory")
    if app_dir:
        cmd += ["--app-dir", str(app_dir)]
    return cmd


def direct(upstream: str) -> Contender:
    return Contender("direct", upstream, "bench", "sk-none")


def passthrough(
    upstream: str,
    tmp: Path,
    *,
    name: str = "passthrough",
    server: list[str] | None = None,
    prefix: list[str] | None = None,
) -> Contender:
    """The floor under uvicorn; `server` replaces uvicorn by another command serving `passthrough:app` from
    bench/ (`{port}` is filled in; server_compare.py); `prefix` runs it under a tool (bench/instructions.py:
    valgrind)."""
    port = free_port()
    command = (
        [part.format(port=port) for part in server] if server else uvicorn_cmd("passthrough:app", port, app_dir=HERE)
    )
    slug = re.sub(r"\W+", "-", name)
    proc = spawn(
        [*(prefix or []), *command], env={"UPSTREAM": upstream, "PYTHONPATH": str(HERE)}, log=tmp / f"{slug}.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", proc, timeout=600 if prefix else 120)
    except BaseException:
        Contender(name, url, "bench", "sk-none", proc).stop()
        raise
    return Contender(name, url, "bench", "sk-none", proc)


def modelyard(
    upstream: str,
    tmp: Path,
    workers: int = 1,
    *,
    variant: str = "plain",
    src: Path | None = None,
    name: str | None = None,
    prefix: list[str] | None = None,
    python: str | None = None,
    server: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
    check: bool | None = None,
    spend: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    make_key: bool = True,
) -> Contender:
    """`modelyard serve` with every feature on (bench/configs/everything_on.yaml, row `variant`: plain,
    guardrails, redis), self-checked (everything_on.self_check) before it is returned. `src` runs another
    checkout's code (its `src/` directory); `prefix` runs the server under a tool (bench/instructions.py:
    valgrind; no self-check then); `python` is the interpreter (server_compare.py's venv); `server` replaces
    `modelyard serve` by another command serving the same app (`{port}` is filled in, MODELYARD_CONFIG names
    the config; `extra_env` is added to its environment); `check`: self-check (default: unless `prefix`);
    `spend`: settings laid over the config's `spend:`; `edit`: a change to the parsed config
    (`everything_on.render`); `make_key`: create the virtual key (without it, requests carry the master key,
    or with `access:` edited away, run in open mode)."""
    suffix = "" if variant == "plain" else f"+{variant}"
    label = name or ("modelyard" + suffix if workers == 1 else f"modelyard{suffix} x{workers}")
    slug = re.sub(r"\W+", "-", label)
    config = tmp / f"{slug}.yaml"
    store = tmp / f"{slug}.db"
    redis_prefix = everything_on.new_redis_prefix() if variant == "redis" else None
    config.write_text(everything_on.render(upstream, BENCH_KEY_MASTER, store, variant, redis_prefix, spend, edit))
    py = python or PY
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    key = BENCH_KEY_MASTER
    if make_key:
        made = subprocess.run(
            [
                py,
                "-m",
                "modelyard.cli.main",
                "keys",
                "create",
                "--config",
                str(config),
                "--name",
                "bench",
                "--budget-usd",
                "1000000",
                "--rpm",
                "100000000",
                "--tpm",
                "100000000000",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        key = json.loads(made.stdout)["key"]
    port = free_port()
    serve = [py, "-m", "modelyard.cli.main", "serve", "--config", str(config), "--port", str(port)]
    serve += ["--workers", str(workers), "--log-level", "warning"]
    command = [part.format(port=port) for part in server] if server else serve
    proc = spawn(
        [*(prefix or []), *command],
        log=tmp / f"{slug}.log",
        env={
            "MODELYARD_CONFIG": str(config),
            **({"PYTHONPATH": str(src)} if src is not None else {}),
            **(extra_env or {}),
        },
    )
    url = f"http://127.0.0.1:{port}"
    contender = Contender(label, url, "bench", key, proc)
    if redis_prefix:
        contender.cleanup.append(lambda: everything_on.drop_redis_prefix(redis_prefix))
    try:
        wait_http(url + "/health/ready", proc, timeout=600 if prefix else 120)
        if (not prefix) if check is None else check:
            checked = everything_on.self_check(url, key, BENCH_KEY_MASTER, variant, config, store, redis_prefix)
            print(f"  {label}: self-check ok: " + "; ".join(checked), flush=True)
    except BaseException:
        contender.stop()
        raise
    return contender


COMPILED = ROOT / "build" / "compiled"


def compiled_modelyard(upstream: str, tmp: Path) -> Contender | None:
    """The everything-on row on the compiled copy `scripts/compile` builds, or None (with a notice) when there is
    none. Its start-up banner must say the hot path is compiled: a copy that silently runs pure Python would
    make the row a second pure one."""
    if not (COMPILED / "modelyard").is_dir():
        print(f"  modelyard-compiled: skipped, no {COMPILED} (run scripts/compile)", flush=True)
        return None
    contender = modelyard(upstream, tmp, src=COMPILED, name="modelyard-compiled")
    banner = (tmp / "modelyard-compiled.log").read_text()
    if "hot path: compiled" not in banner:
        contender.stop()
        raise RuntimeError(f"{COMPILED} did not load compiled: {banner.strip()[:300]}")
    return contender


LITELLM_CONFIG = """
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: {upstream}/v1
      api_key: sk-upstream-secret
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: sk-litellm-master
"""


def ensure_litellm() -> Path | None:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    done = subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC], capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"LiteLLM install failed; skipping it:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return binary if binary.exists() else None


def litellm(upstream: str, tmp: Path) -> Contender | None:
    binary = ensure_litellm()
    if binary is None:
        return None
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=upstream))
    port = free_port()
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "true",
        "NO_DOCS": "True",
    }
    proc = spawn(
        [str(binary), "--config", str(config), "--port", str(port), "--num_workers", "1"],
        env=env,
        log=tmp / "litellm.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health/liveliness", proc, timeout=180)
    return Contender("litellm", url, "bench", "sk-litellm-master", proc)


# --------------------------------------------------------------------------- load


_BENCH = re.compile(r"BENCH (\{.*\})")


def wrk(
    contender: Contender,
    connections: int,
    duration: float,
    stream: bool = False,
    *,
    script: str = "chat.lua",
    path: str = "/v1/chat/completions",
    threads: int | None = None,
) -> dict[str, Any]:
    """One wrk run; `script`/`path` pick the ingress (chat.lua on chat completions, responses.lua on /v1/responses);
    `threads`: wrk's threads (default 2, 1 at c=1)."""
    threads = threads or (1 if connections == 1 else 2)
    env = {**os.environ, "MODEL": contender.model, "KEY": contender.key, "STREAM": "1" if stream else "0"}
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(HERE / script),
        contender.url + path,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
    match = _BENCH.search(out)
    if not match:
        raise RuntimeError(f"wrk printed no result for {contender.name}:\n{out}")
    return dict(json.loads(match.group(1)))


def fixed_rate(contender: Contender, rate: int, duration: float) -> dict[str, Any]:
    """A fixed request rate from an open-loop generator (bench/fixed_rate.py) in its own process."""
    cmd = [
        PY,
        str(HERE / "fixed_rate.py"),
        "--url",
        contender.url,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--key",
        contender.key,
        "--model",
        contender.model,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    match = re.search(r"FIXED (\{.*\})", out)
    if not match:
        raise RuntimeError(f"fixed_rate.py printed no result for {contender.name}:\n{out}")
    result = dict(json.loads(match.group(1)))
    result["non2xx"] = result.pop("errors")
    return result


async def _ttft_run(contender: Contender, requests: int) -> dict[str, Any]:
    import aiohttp

    body = {
        "model": contender.model,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello in five words."}],
    }
    headers = {"Authorization": f"Bearer {contender.key}"}
    first: list[float] = []
    last: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 20):
            started = time.perf_counter()
            got_first = None
            async with session.post(contender.url + "/v1/chat/completions", json=body, headers=headers) as resp:
                async for line in resp.content:
                    if got_first is None and line.startswith(b"data: {"):
                        got_first = time.perf_counter()
            ended = time.perf_counter()
            if i >= 20 and got_first is not None:  # 20 warm-up requests
                first.append((got_first - started) * 1000)
                last.append((ended - started) * 1000)
    first.sort()
    last.sort()
    return {
        "ttft_p50_ms": first[len(first) // 2],
        "ttft_p99_ms": first[int(len(first) * 0.99)],
        "ttlt_p50_ms": last[len(last) // 2],
    }


def ttft(contender: Contender, requests: int) -> dict[str, Any]:
    return asyncio.run(_ttft_run(contender, requests))


# --------------------------------------------------------------------------- the run


SCENARIOS = [
    # (name, kind, connections/rate, stream)
    ("c1", "wrk", 1, False),
    ("c16", "wrk", 16, False),
    ("c64", "wrk", 64, False),
    ("stream-c16", "wrk", 16, True),
    ("rate500", "rate", 500, False),
    ("rate1000", "rate", 1000, False),
    ("ttft-c1", "ttft", 1, True),
]
Scenario = tuple[str, str, int, bool]
QUICK = {"duration": 1.0, "repetitions": 3, "ttft_requests": 60, "delays": "0"}
QUICK_ONLY = "direct,passthrough,modelyard,modelyard-guardrails,modelyard-redis"


def machine_busy(window: float = 0.2) -> float:
    """The share of the machine's CPU time (all cores) that was busy over `window` seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(window)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def quiesce(limit: float = 0.05, timeout: float = 15.0) -> float:
    """Wait until the machine is quiet (under `limit` busy over 0.2 s) before a measured run, at most
    `timeout` seconds; returns the seconds waited. Every contender stays up for the whole run, and what one
    left behind (a spend backlog written after a saturating run, a flush) would otherwise land in the next
    contender's measurement: the c=1 tail above all (issue #20)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout and machine_busy() > limit:
        pass
    return time.monotonic() - start


def run_scenario(contender: Contender, scenario: Scenario, duration: float, ttft_requests: int) -> dict[str, Any]:
    """One run of one scenario, with the contender's CPU per request (process tree, user + system) over it and
    until the machine is quiet again (work the run deferred, such as spend rows written after it, counts);
    started on a quiet machine (`quiesce`)."""
    _, kind, amount, stream = scenario
    quiesce()
    pid = contender.proc.pid if contender.proc else None
    cpu_before = cpu_seconds(pid) if pid else 0.0
    if kind == "wrk":
        result = wrk(contender, amount, duration, stream)
        count = result["requests"]
    elif kind == "rate":
        result = fixed_rate(contender, amount, duration)
        count = int(result["sent"]) + 32  # + the generator's warm-up requests
    else:
        result = ttft(contender, ttft_requests)
        count = ttft_requests + 20
    if pid:
        quiesce()  # what the run left to do (a spend backlog written after it) is the run's CPU too
        result["cpu_ms_per_req"] = (cpu_seconds(pid) - cpu_before) * 1000 / max(1, count)
    return result


def measure_all(
    contenders: list[Contender], scenarios: list[Scenario], repetitions: int, duration: float, ttft_requests: int
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every scenario `repetitions` times for every contender, round-robin: repetition r runs each scenario
    for all contenders in turn (the order rotated by r), so drift of a shared machine hits all of them alike.
    A fixed-rate run is skipped for a contender whose c=16 throughput in the same repetition was below the
    rate (its p99 would be the length of its queue)."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c.name: {s[0]: [] for s in scenarios} for c in contenders}
    for contender in contenders:
        wrk(contender, 16, min(2.0, duration))  # warm-up
    for rep in range(repetitions):
        shift = rep % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for scenario in scenarios:
            name, kind, amount, _ = scenario
            for contender in order:
                runs = samples[contender.name]
                capacity = runs["c16"][-1]["rps"] if runs.get("c16") else None
                if kind == "rate" and capacity is not None and capacity < amount:
                    result: dict[str, Any] = {"skipped": f"c=16 gives {capacity:.0f} req/s < {amount}"}
                else:
                    result = run_scenario(contender, scenario, duration, ttft_requests)
                runs[name].append(result)
                shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
                print(f"  rep {rep + 1} {contender.name:>22} {name:>10}: {shown}", flush=True)
    return samples


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(median, min, max), or None when there is nothing to summarise."""
    values = [v for v in values if isinstance(v, int | float) and v == v]
    return (statistics.median(values), min(values), max(values)) if values else None


def figure(runs: list[dict[str, Any]], field_: str) -> tuple[float, float, float] | None:
    return spread([r[field_] for r in runs if field_ in r])


def fmt(found: tuple[float, float, float] | None, digits: int = 0, signed: bool = False) -> str:
    """`median (min-max)`; `signed` writes every number with its sign (differences)."""
    if found is None:
        return "-"
    form = f"{{:{'+' if signed else ''}.{digits}f}}"
    median, low, high = (form.format(v) for v in found)
    return f"{median} ({low} to {high})" if signed else f"{median} ({low}-{high})"


# (column title, scenario, field, digits, higher is better) — the table's columns and the ratio table's.
COLUMNS = [
    ("c=1 p50 ms", "c1", "p50_ms", 2, False),
    ("c=1 p99 ms", "c1", "p99_ms", 2, False),
    ("req/s c=16", "c16", "rps", 0, True),
    ("req/s c=64", "c64", "rps", 0, True),
    ("streams/s c=16", "stream-c16", "rps", 0, True),
    ("500 RPS p99 ms", "rate500", "p99_ms", 1, False),
    ("1,000 RPS p99 ms", "rate1000", "p99_ms", 1, False),
    ("TTFT p50 ms", "ttft-c1", "ttft_p50_ms", 2, False),
    ("CPU ms/req c=16", "c16", "cpu_ms_per_req", 3, False),
    ("CPU ms/stream c=16", "stream-c16", "cpu_ms_per_req", 3, False),
]


def table(samples: dict[str, dict[str, list[dict[str, Any]]]], rss: dict[str, float], delay_ms: float) -> str:
    """The docs/benchmarks.md table (every cell `median (min-max)` over the repetitions), the added latency
    against `direct`, and the ratios contender/pass-through per column from paired repetitions."""
    lines = [
        f"upstream latency {delay_ms:.0f} ms; each cell: median (min-max) of the repetitions",
        "",
        "| contender | " + " | ".join(c[0] for c in COLUMNS) + " | added p50 / p99 at c=1 ms | peak RSS MB |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    direct_c1 = samples.get("direct", {}).get("c1", [])
    for name, runs in samples.items():
        cells = [
            "cannot keep up"
            if runs.get(scn) and all("skipped" in r for r in runs[scn])
            else fmt(figure(runs.get(scn, []), fld), digits)
            for _, scn, fld, digits, _ in COLUMNS
        ]
        added = "-"
        if name != "direct" and direct_c1 and runs.get("c1"):
            p50 = [r["p50_ms"] - d["p50_ms"] for r, d in zip(runs["c1"], direct_c1, strict=False)]
            p99 = [r["p99_ms"] - d["p99_ms"] for r, d in zip(runs["c1"], direct_c1, strict=False)]
            added = f"{fmt(spread(p50), 2, True)} / {fmt(spread(p99), 2, True)}"
        peak = f"{rss[name]:.0f}" if name in rss else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {added} | {peak} |")
    if "passthrough" in samples:
        lines += [
            "",
            "Ratio contender / pass-through per column, from the repetitions paired in time: median (min-max)"
            " (req/s: higher is better; latency and CPU: lower is better)",
            "",
            "| contender | " + " | ".join(c[0] for c in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        floor = samples["passthrough"]
        for name, runs in samples.items():
            if name in ("direct", "passthrough"):
                continue
            cells = []
            for _, scn, fld, _, _ in COLUMNS:
                pairs = zip(runs.get(scn, []), floor.get(scn, []), strict=False)
                ratios = [a[fld] / b[fld] for a, b in pairs if fld in a and fld in b and b[fld]]
                cells.append(fmt(spread(ratios), 2))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "litellm" in samples:
        theirs = samples["litellm"].get("c16", [])
        for name, runs in samples.items():
            if name.startswith("modelyard"):
                pairs = zip(runs.get("c16", []), theirs, strict=False)
                found = spread([a["rps"] / b["rps"] for a, b in pairs if "rps" in a and b.get("rps")])
                lines.append(f"\n{name} / LiteLLM, req/s at c=16: {fmt(found, 1)}")
    return "\n".join(lines)


def targets(samples: dict[str, dict[str, list[dict[str, Any]]]], name: str = "modelyard") -> str:
    """issue #20's "done when", for the plain everything-on row (medians of paired ratios)."""
    mine, floor, direct_runs = samples.get(name), samples.get("passthrough"), samples.get("direct")
    if not mine or not floor:
        return ""

    def ratio(scn: str, fld: str) -> float | None:
        pairs = zip(mine.get(scn, []), floor.get(scn, []), strict=False)
        found = spread([a[fld] / b[fld] for a, b in pairs if fld in a and fld in b and b[fld]])
        return found[0] if found else None

    rows: list[tuple[str, float | None, Callable[[float], bool], str]] = [
        ("req/s c=16 ≥ 0.9x pass-through", ratio("c16", "rps"), lambda v: v >= 0.9, "{:.2f}x"),
        ("req/s c=64 ≥ 0.9x pass-through", ratio("c64", "rps"), lambda v: v >= 0.9, "{:.2f}x"),
        ("streams/s ≥ 0.9x pass-through", ratio("stream-c16", "rps"), lambda v: v >= 0.9, "{:.2f}x"),
        ("CPU/request ≤ 1.1x pass-through", ratio("c16", "cpu_ms_per_req"), lambda v: v <= 1.1, "{:.2f}x"),
    ]
    if direct_runs and mine.get("c1"):
        added = spread([r["p99_ms"] - d["p99_ms"] for r, d in zip(mine["c1"], direct_runs["c1"], strict=False)])
        rows.append(("added p99 at c=1 ≤ 0.5 ms", added[0] if added else None, lambda v: v <= 0.5, "{:+.2f} ms"))
    p99 = figure(mine.get("rate1000", []), "p99_ms")
    rows.append(("p99 ≤ 3 ms at 1,000 RPS", p99[0] if p99 else None, lambda v: v <= 3.0, "{:.1f} ms"))
    lines = [f"issue #20 targets, row {name}:", "", "| target | measured | |", "|---|---|---|"]
    for title, value, ok, form in rows:
        shown = form.format(value) if value is not None else "-"
        verdict = "-" if value is None else ("met" if ok(value) else "**not met**")
        lines.append(f"| {title} | {shown} | {verdict} |")
    return "\n".join(lines)


CONTENDERS = {
    "direct": "direct",
    "passthrough": "the floor: bench/passthrough.py under uvicorn",
    "modelyard": "everything on (bench/configs/everything_on.yaml)",
    "modelyard-guardrails": "everything on + the input guardrail set",
    "modelyard-redis": "everything on + shared state in Redis",
    "modelyard2": "everything on, --workers 2",
    "modelyard-compiled": "everything on, the hot path compiled with mypyc (scripts/compile; skipped without it)",
    "litellm": "LiteLLM's proxy",
}


def _start(name: str, upstream_url: str, tmp: Path) -> Contender | None:
    if name == "direct":
        return direct(upstream_url)
    if name == "passthrough":
        return passthrough(upstream_url, tmp)
    if name == "modelyard":
        return modelyard(upstream_url, tmp)
    if name == "modelyard-guardrails":
        return modelyard(upstream_url, tmp, variant="guardrails")
    if name == "modelyard-redis":
        return modelyard(upstream_url, tmp, variant="redis")
    if name == "modelyard2":
        return modelyard(upstream_url, tmp, workers=2)
    if name == "modelyard-compiled":
        return compiled_modelyard(upstream_url, tmp)
    if name == "litellm":
        return litellm(upstream_url, tmp)
    raise SystemExit(f"unknown contender {name!r} (one of {', '.join(CONTENDERS)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"~2 minutes: {QUICK} and --only {QUICK_ONLY}")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run (default 8)")
    parser.add_argument("--repetitions", type=int, default=None, help="runs of each scenario (default 3, min 3)")
    parser.add_argument("--only", default=None, help=f"contenders, of {','.join(CONTENDERS)}")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--delays", default=None, help="upstream latencies in ms (default 0,50)")
    parser.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS))
    parser.add_argument("--ttft-requests", type=int, default=None, help="streamed requests per TTFT run (300)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    quick: dict[str, Any] = QUICK if args.quick else {}
    duration = args.duration or quick.get("duration", 8.0)
    repetitions = args.repetitions or quick.get("repetitions", 3)
    if repetitions < 3:
        sys.exit("error: --repetitions must be at least 3 (every figure is a median with its spread)")
    ttft_requests = args.ttft_requests or quick.get("ttft_requests", 300)
    delays = args.delays or quick.get("delays", "0,50")
    only = args.only or (QUICK_ONLY if args.quick else ",".join(CONTENDERS))
    wanted = [w for w in only.split(",") if not (args.no_litellm and w == "litellm")]
    chosen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "duration_s": duration,
        "repetitions": repetitions,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for delay in [float(d) for d in delays.split(",")]:
            upstream_url, upstream = start_upstream(delay)
            scenarios = chosen if delay == 0 else [s for s in chosen if s[0] in ("c1", "c16", "stream-c16")]
            started: list[Contender] = []
            try:
                for name in wanted:
                    contender = _start(name, upstream_url, tmp)
                    if contender is not None:
                        started.append(contender)
                samples = measure_all(started, scenarios, repetitions, duration, ttft_requests)
                rss = {c.name: rss_mb(c.proc.pid) for c in started if c.proc is not None}
            finally:
                for contender in started:
                    contender.stop()
                upstream.terminate()
            report["runs"][f"{delay:.0f}ms"] = {"samples": samples, "rss_peak_mb": rss}
            print()
            print(table(samples, rss, delay))
            if delay == 0:
                print()
                print(targets(samples))
                if "modelyard-compiled" in samples:
                    print()
                    print(targets(samples, "modelyard-compiled"))
            print()
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
