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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

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
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
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


def passthrough(upstream: str, tmp: Path) -> Contender:
    port = free_port()
    proc = spawn(
        uvicorn_cmd("passthrough:app", port, app_dir=HERE), env={"UPSTREAM": upstream}, log=tmp / "passthrough.log"
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", proc)
    return Contender("passthrough", url, "bench", "sk-none", proc)


MODELYARD_CONFIG = """
deployments:
  - name: primary
    provider: openai
    model: bench-primary
    api_base: {upstream}/v1
    api_key: sk-upstream-secret
    price: {{input: 2.5, output: 10}}
    quality: 0.9
    context_window: 128000
    limits: {{rpm: 10000000, tpm: 100000000000}}
  - name: secondary
    provider: openai
    model: bench-secondary
    api_base: {upstream}/v1
    api_key: sk-upstream-secret
    price: {{input: 5, output: 15}}
    quality: 0.95
    context_window: 128000
models:
  bench:
    strategy: cost
    candidates: [primary, secondary]
    constraints: {{min_quality: 0.8}}
access:
  master_key: {master}
spend:
  store: {store}
"""


def modelyard(
    upstream: str,
    tmp: Path,
    workers: int = 1,
    *,
    src: Path | None = None,
    name: str | None = None,
    prefix: list[str] | None = None,
) -> Contender:
    """`modelyard serve` with everything on; `src` runs another checkout's code (its `src/` directory);
    `prefix` runs the server under a tool (bench/instructions.py: valgrind)."""
    label = name or ("modelyard" if workers == 1 else f"modelyard x{workers}")
    slug = re.sub(r"\W+", "-", label)
    config = tmp / f"{slug}.yaml"
    store = tmp / f"{slug}.db"
    config.write_text(MODELYARD_CONFIG.format(upstream=upstream, master=BENCH_KEY_MASTER, store=store))
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    made = subprocess.run(
        [
            PY,
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
    proc = spawn(
        [
            *(prefix or []),
            PY,
            "-m",
            "modelyard.cli.main",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        log=tmp / f"{slug}.log",
        env={"PYTHONPATH": str(src)} if src is not None else None,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health/ready", proc, timeout=600 if prefix else 120)
    return Contender(label, url, "bench", key, proc)


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
) -> dict[str, Any]:
    """One wrk run; `script`/`path` pick the ingress (chat.lua on chat completions, responses.lua on /v1/responses)."""
    threads = 1 if connections == 1 else 2
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
    ("ttft-c1", "ttft", 1, True),
]


def measure(
    contender: Contender, duration: float, tmp: Path, scenarios: list[tuple[str, str, int, bool]]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pid = contender.proc.pid if contender.proc else None
    wrk(contender, 16, 2)  # warm-up
    for name, kind, amount, stream in scenarios:
        cpu_before = cpu_seconds(pid) if pid else 0.0
        if kind == "wrk":
            result = wrk(contender, amount, duration, stream)
            count = result["requests"]
        elif kind == "rate":
            result = fixed_rate(contender, amount, duration)
            count = int(result["rps"] * duration)
        else:
            result = ttft(contender, 300)
            count = 320
        if pid:
            result["cpu_ms_per_req"] = (cpu_seconds(pid) - cpu_before) * 1000 / max(1, count)
        results[name] = result
        print(
            f"  {contender.name:>14} {name:>10}: "
            + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
            flush=True,
        )
    if pid:
        results["rss_peak_mb"] = rss_mb(pid)
        results["rss_now_mb"] = rss_mb(pid, peak=False)
    return results


def table(results: dict[str, dict[str, Any]], delay_ms: float) -> str:
    direct_c1 = results.get("direct", {}).get("c1", {})
    lines = [
        f"upstream latency {delay_ms:.0f} ms",
        "| contender | c=1 p50 / p99 ms | added p50 / p99 at c=1 | req/s c=16 | req/s c=64 | stream req/s c=16 "
        "| 500 RPS p99 ms | TTFT p50 ms (added) | CPU ms/req c=16 | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_ttft = results.get("direct", {}).get("ttft-c1", {}).get("ttft_p50_ms")
    for name, r in results.items():
        c1 = r.get("c1", {})
        added = (
            f"+{c1['p50_ms'] - direct_c1['p50_ms']:.2f} / +{c1['p99_ms'] - direct_c1['p99_ms']:.2f}"
            if c1 and direct_c1 and name != "direct"
            else "-"
        )
        t = r.get("ttft-c1", {})
        ttft_cell = (
            f"{t['ttft_p50_ms']:.2f} (+{t['ttft_p50_ms'] - base_ttft:.2f})"
            if t and base_ttft is not None and name != "direct"
            else (f"{t['ttft_p50_ms']:.2f}" if t else "-")
        )
        rate_p99 = r.get("rate500", {}).get("p99_ms")
        rate_cell = f"{rate_p99:.1f}" if isinstance(rate_p99, int | float) else "-"

        def cell(key: str, field_: str, fmt: str = "{:.0f}", r: dict[str, Any] = r) -> str:
            value = r.get(key, {}).get(field_)
            return fmt.format(value) if isinstance(value, int | float) else "-"

        lines.append(
            f"| {name} | {cell('c1', 'p50_ms', '{:.2f}')} / {cell('c1', 'p99_ms', '{:.2f}')} | {added} "
            f"| {cell('c16', 'rps')} | {cell('c64', 'rps')} | {cell('stream-c16', 'rps')} "
            f"| {rate_cell} | {ttft_cell} "
            f"| {cell('c16', 'cpu_ms_per_req', '{:.3f}')} | {r.get('rss_peak_mb', 0):.0f} |"
        )
    ratios = []
    for name in results:
        if name in ("direct", "passthrough") or "passthrough" not in results:
            continue
        for scenario in ("c16", "c64", "stream-c16"):
            mine = results[name].get(scenario, {}).get("rps")
            floor = results["passthrough"].get(scenario, {}).get("rps")
            if mine and floor:
                ratios.append(f"{name}/passthrough {scenario}: {mine / floor:.2f}x")
        if "litellm" in results and name != "litellm":
            mine, theirs = results[name].get("c16", {}).get("rps"), results["litellm"].get("c16", {}).get("rps")
            if mine and theirs:
                ratios.append(f"{name}/litellm c16: {mine / theirs:.1f}x")
    return "\n".join(lines + (["", *ratios] if ratios else []))


def _start(name: str, upstream_url: str, tmp: Path) -> Contender | None:
    if name == "direct":
        return direct(upstream_url)
    if name == "passthrough":
        return passthrough(upstream_url, tmp)
    if name == "modelyard":
        return modelyard(upstream_url, tmp)
    if name == "modelyard2":
        return modelyard(upstream_url, tmp, workers=2)
    if name == "litellm":
        return litellm(upstream_url, tmp)
    raise SystemExit(f"unknown contender {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--only", default="direct,passthrough,modelyard,modelyard2,litellm")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--delays", default="0,50", help="upstream latencies in ms")
    parser.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    wanted = [w for w in args.only.split(",") if not (args.no_litellm and w == "litellm")]
    chosen = [s for s in SCENARIOS if s[0] in args.scenarios.split(",")]
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for delay in [float(d) for d in args.delays.split(",")]:
            upstream_url, upstream = start_upstream(delay)
            results: dict[str, dict[str, Any]] = {}
            scenarios = chosen if delay == 0 else [s for s in chosen if s[0] in ("c1", "c16", "stream-c16")]
            try:
                for name in wanted:
                    contender = _start(name, upstream_url, tmp)
                    if contender is None:
                        continue
                    try:
                        results[contender.name] = measure(contender, args.duration, tmp, scenarios)
                    finally:
                        contender.stop()
            finally:
                upstream.terminate()
            report["runs"][f"{delay:.0f}ms"] = results
            print()
            print(table(results, delay))
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
