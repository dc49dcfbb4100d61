"""Gateway req/s with a typical guardrail set on vs off: regex + PII + JSON schema on 500-token answers.

    python bench/guardrails_overhead.py [--requests 2000] [--concurrency 16] [--rounds 5] [--json out.json]
    python bench/guardrails_overhead.py --instructions        # callgrind instructions per request, off vs on

One zero-latency simulator and two gateways, each in its own process (uvicorn, uvloop, httptools), same config
but for the model's `guardrails:`:

* off: no guardrails;
* on:  `regex` (two RE2 patterns, redact), `pii` (every kind, redact) and `json_schema` (block) on the output,
       plus `pii` on the input (block): the set the issue calls typical.

Every request asks for a JSON answer (`response_format: json_schema`) whose document is ~500 tokens of prose
(the simulator's answer key gives it verbatim, so both sides get the same bytes and the schema check validates
a real document; a clean answer, so nothing is redacted and both sides send the same body back). Rounds
alternate off/on/off/on... so drift of a shared machine hits both alike; the figure is the median of the
per-round on/off ratios, with their spread. A second section times the guardrail work of one request
in-process (which a busy machine does not blur): choosing the checks, the input check, the output vet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead_features import free_port, percentile, wait_up

PROMPT = "Summarise the routing report as JSON."
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "summary": {"type": "string"},
        "points": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "summary", "points"],
    "additionalProperties": False,
}
BODY = {
    "model": "guarded",
    "messages": [{"role": "user", "content": PROMPT}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "report", "schema": SCHEMA}},
}
WORDS = [
    "the",
    "gateway",
    "routed",
    "each",
    "request",
    "to",
    "the",
    "cheapest",
    "deployment",
    "that",
    "met",
    "its",
    "latency",
    "bound",
    "and",
    "the",
    "answers",
    "were",
    "checked",
    "before",
    "they",
    "reached",
    "the",
    "client",
    "while",
    "the",
    "spend",
    "log",
    "kept",
    "every",
    "attempt",
    "and",
    "its",
    "cost",
]


def document(tokens: int = 500) -> str:
    """A JSON answer of about `tokens` tokens (~4 characters each) with no PII in it."""
    words = [WORDS[i % len(WORDS)] for i in range(int(tokens * 0.7))]
    third = len(words) // 3
    doc = {
        "title": "routing report",
        "summary": " ".join(words[:third]),
        "points": [" ".join(words[third + i * 20 : third + (i + 1) * 20]) for i in range((len(words) - third) // 20)],
    }
    return json.dumps(doc)


def fleet_files(root: Path) -> Path:
    suite = {
        "schema": "modelyard.acceptance/v1",
        "name": "bench",
        "tasks": {"report": {"cases": [{"id": "r", "prompt": PROMPT, "reference": document()}]}},
    }
    (root / "suite.yaml").write_text(json.dumps(suite))
    fleet = {
        "seed": 0,
        "models": [{"name": "sim-small", "price": {"input": 0.1, "output": 0.4}, "quality": 1.0, "ttft_ms": 0}],
    }
    (root / "fleet.yaml").write_text(json.dumps(fleet))
    return root


GUARDS = """guardrails:
  typical:
    - {check: regex, patterns: ["(?i)internal[- ]only", "\\\\bproject-[a-z]{4,12}\\\\b"], action: redact}
    - {check: pii, action: redact}
    - {check: json_schema, action: block}
    - {check: pii, stage: input, action: block, name: pii-in}
  light:
    - {check: max_length, max_chars: 100000000}
"""


def config_text(sim_port: int, guarded: bool, checks: str = "typical") -> str:
    """`checks`: `typical` (regex + PII + schema) or `light` (one trivial check: the plumbing's own cost)."""
    guards = f", guardrails: [{checks}]" if guarded else ""
    return f"""
deployments:
  - {{name: small@openai, provider: openai, model: sim-small, api_base: "http://127.0.0.1:{sim_port}/v1",
     api_key: sim, price: {{input: 0.1, output: 0.4}}}}
models:
  guarded: {{candidates: [small@openai]{guards}}}
{GUARDS}"""


def serve_sim(port: int, root: str) -> None:
    import uvicorn

    from modelyard.sim.app import create_app
    from modelyard.sim.fleet import load_fleet

    app = create_app(load_fleet(Path(root) / "fleet.yaml").instant(), 0)
    app.add_answer_keys(Path(root) / "suite.yaml")
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning")


def serve_gateway(port: int, text: str) -> None:
    import uvicorn

    from modelyard.config.loader import parse_config
    from modelyard.server.factory import create_app

    app = create_app(parse_config(text, env={}))
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )


async def load(url: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """(req/s, latencies in ms); every answer checked to be the whole JSON document."""
    latencies: list[float] = []
    remaining = requests
    payload = json.dumps(BODY).encode()
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}: {body[:200]!r}")
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return requests / elapsed, latencies


async def answer_tokens(url: str) -> tuple[int, str | None]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=BODY) as response,
    ):
        body = await response.json()
        return int(body["usage"]["completion_tokens"]), response.headers.get("x-modelyard-guardrails")


async def http_bench(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    root = fleet_files(Path(tempfile.mkdtemp(prefix="modelyard-guard-bench-")))
    sim_port, off_port, on_port = free_port(), free_port(), free_port()
    processes = [
        ctx.Process(target=serve_sim, args=(sim_port, str(root)), daemon=True),
        ctx.Process(target=serve_gateway, args=(off_port, config_text(sim_port, False)), daemon=True),
        ctx.Process(target=serve_gateway, args=(on_port, config_text(sim_port, True, args.checks)), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        urls = {"off": f"http://127.0.0.1:{off_port}", "on": f"http://127.0.0.1:{on_port}"}
        for url in urls.values():
            await wait_up(url)
        tokens, header = await answer_tokens(urls["on"])
        for name in ("off", "on"):
            await load(urls[name], args.warmup, args.concurrency)
        results: dict[str, dict[str, list[float]]] = {n: {"rps": [], "lat": []} for n in urls}
        for _ in range(args.rounds):
            for name in ("off", "on"):
                rps, latencies = await load(urls[name], args.requests, args.concurrency)
                results[name]["rps"].append(rps)
                results[name]["lat"].extend(latencies)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(5)
    paired = [on / off for on, off in zip(results["on"]["rps"], results["off"]["rps"], strict=True)]
    summary: dict[str, Any] = {
        name: {
            "rps": statistics.median(r["rps"]),
            "p50_ms": percentile(r["lat"], 0.5),
            "p99_ms": percentile(r["lat"], 0.99),
            "rounds": r["rps"],
        }
        for name, r in results.items()
    }
    summary["ratio"] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired), "paired": paired}
    summary["answer_tokens"] = tokens
    summary["header"] = header
    return summary


def in_process(iterations: int, checks: str = "typical") -> dict[str, float]:
    """Microseconds of guardrail work per request, as the pipeline does it (no HTTP, no event loop)."""
    import msgspec

    from modelyard.config.loader import parse_config
    from modelyard.providers.base import Completion
    from modelyard.schema.chat import ChatRequest, Usage
    from modelyard.server.codecs.base import Inbound
    from modelyard.server.guards import GuardIndex

    config = parse_config(config_text(1, True, checks), env={})
    index = GuardIndex(config)
    req = msgspec.convert(BODY, ChatRequest)
    answer = document()

    class Ctx:
        key = None

    timings: list[float] = []
    for _ in range(iterations):
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
        started = time.perf_counter()
        guards = index.for_request(req, Ctx(), "guarded")  # type: ignore[arg-type]
        assert guards is not None
        guards.check_input(Inbound(req, BODY))
        problem = guards.vet(Completion(body, Usage(), "sim-small"))
        timings.append((time.perf_counter() - started) * 1e6)
        assert problem is None
    timings.sort()
    return {"p50_us": percentile(timings, 0.5), "p99_us": percentile(timings, 0.99)}


def instructions(sim_port: int, text: str, count: int, tmp: Path) -> int:
    """Instructions the gateway process executes for `count` sequential requests after a warm-up (callgrind;
    machine noise cannot move it). The per-request figure is a difference of two counts (start-up cancels)."""
    import http.client
    import re
    import signal
    import subprocess

    config = tmp / f"config-{count}-{len(text)}.yaml"
    config.write_text(text)
    out = tmp / f"callgrind-{count}-{len(text)}.out"
    port = free_port()
    runner = (
        "import uvicorn; from modelyard.config.loader import parse_config; "
        "from modelyard.server.factory import create_app; "
        f"uvicorn.run(create_app(parse_config(open({str(config)!r}).read(), env={{}})), host='127.0.0.1', "
        f"port={port}, loop='uvloop', http='httptools', log_level='warning', access_log=False)"
    )
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", runner],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 600  # valgrind starts Python slowly
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe.request("GET", "/health/live")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        payload = json.dumps(BODY).encode()
        for _ in range(50 + count):
            conn.request("POST", "/v1/chat/completions", payload, {"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"HTTP {answer.status}")
        conn.close()
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=300)
    found = re.findall(rb"Collected : (\d+)", err)
    if not found:
        raise SystemExit(f"callgrind wrote no total: {err[-2000:]!r}")
    return int(found[-1])


def instructions_bench(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-guard-ir-"))
    root = fleet_files(tmp)
    sim_port = free_port()
    sim = ctx.Process(target=serve_sim, args=(sim_port, str(root)), daemon=True)
    sim.start()
    per: dict[str, float] = {}
    try:
        for name, guarded in (("off", False), ("on", True)):
            text = config_text(sim_port, guarded, args.checks)
            low = instructions(sim_port, text, args.low, tmp)
            high = instructions(sim_port, text, args.high, tmp)
            per[name] = (high - low) / (args.high - args.low)
            print(f"{name}: {per[name]:,.0f} instructions per request", flush=True)
    finally:
        sim.terminate()
    print(f"on/off: {per['on'] / per['off']:.3f}x instructions per request ({args.checks} checks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--checks", choices=("typical", "light"), default="typical")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--instructions", action="store_true", help="callgrind instructions per request instead")
    parser.add_argument("--low", type=int, default=100)
    parser.add_argument("--high", type=int, default=300)
    args = parser.parse_args()
    if args.instructions:
        instructions_bench(args)
        return
    work = in_process(args.iterations, args.checks)
    print(f"guardrail work per request, in-process: p50 {work['p50_us']:.0f} µs, p99 {work['p99_us']:.0f} µs")
    summary = asyncio.run(http_bench(args))
    summary["in_process"] = work
    print(f"answers: {summary['answer_tokens']} completion tokens; x-modelyard-guardrails: {summary['header']}")
    print("| side | req/s (median of rounds) | p50 ms | p99 ms | rounds |")
    print("|---|---|---|---|---|")
    for name in ("off", "on"):
        side = summary[name]
        rounds = ", ".join(f"{r:.0f}" for r in side["rounds"])
        print(f"| {name} | {side['rps']:.0f} | {side['p50_ms']:.2f} | {side['p99_ms']:.2f} | {rounds} |")
    ratio = summary["ratio"]
    print(
        f"on/off req/s: median of {args.rounds} paired rounds {ratio['median']:.3f}x "
        f"(spread {ratio['min']:.3f}-{ratio['max']:.3f}; target >= 0.9x)"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
