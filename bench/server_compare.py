"""The same apps under different HTTP servers: is uvicorn worth replacing, and does the gain hold?

    /tmp/venv-servers/bin/python bench/server_compare.py [--rounds 3] [--duration 8]
    /tmp/venv-servers/bin/python bench/server_compare.py --quick          # ~3 minutes

Run it with an interpreter whose environment has the servers (the main .venv stays clean):
    python3 -m venv /tmp/venv-servers && /tmp/venv-servers/bin/pip install -e ".[dev]" granian socketify

Apps: modelyard with every feature on (bench/configs/everything_on.yaml, plain row, self-checked) and the
pass-through floor (bench/passthrough.py). Servers, one worker each: `uvicorn` (today: `modelyard serve`,
uvloop + modelyard's own HTTP/1.1 protocol, server/protocol.py; the pass-through under plain uvicorn +
httptools), `granian` (its ASGI interface, uvloop, HTTP/1, its header read timeout set to modelyard serve's
10 s: the default is 30 s), `socketify` (its ASGI interface), each only if it imports here.

Throughput: wrk with bench/chat.lua at c=16, c=64 and streaming c=16, against bench/upstream.py; req/s and
CPU per request of the server's process tree; every server/app pair in turn within a round (the order rotated
each round), medians and spread (min-max) over the rounds.

Behaviour, pass/fail per server and app:
- streaming: a streamed answer arrives whole (every event, then `[DONE]`);
- keep-alive: three requests on one connection, none closes it;
- backpressure: a client that reads nothing for a while during a ~14 MB stream (upstream.py's big stream)
  and then reads it all: the answer is complete and the server's RSS grew by less than half the answer
  (it stopped reading upstream instead of buffering);
- slow client: headers dribbled a line a second (slowloris): the server closes the connection within
  `--slowloris-s` (modelyard serve's header timeout is 10 s);
- 10 MB body: a just-under-10-MiB request gets a well-formed answer (200, or a clean 4xx such as 413 or a
  context-length 400) within 60 s and the server keeps serving.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb

BIN = Path(sys.executable).parent
SCENARIOS = {"c16": (16, False), "c64": (64, False), "stream-c16": (16, True)}
BIG_STREAM_CHUNKS = 100_000  # upstream.py streams max_tokens chunks from 1,000 on: ~14 MB
BODY_BYTES = 10 * 1024 * 1024 - 4096


def server_commands() -> dict[str, tuple[list[str] | None, list[str] | None, dict[str, str]]]:
    """server -> (modelyard command, pass-through command, extra environment); None: that app's default
    (`modelyard serve`, uvicorn). Servers that do not import here are left out."""
    found: dict[str, tuple[list[str] | None, list[str] | None, dict[str, str]]] = {"uvicorn": (None, None, {})}
    if (BIN / "granian").exists():
        granian = [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}"]
        granian += ["--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning"]
        granian += ["--no-access-log", "--http1-header-read-timeout", "10000"]  # as `modelyard serve`'s 10 s
        found["granian"] = (
            [*granian, "--factory", "modelyard.server.factory:app_from_env"],
            [*granian, "passthrough:app"],
            {},
        )
    if importlib.util.find_spec("socketify") is not None:
        socketify = [sys.executable, "-m", "socketify", "{app}", "--host", "127.0.0.1", "--port", "{port}"]
        socketify += ["--workers", "1", "--interface", "asgi", "--lifespan", "on", "--disable-listen-log", "true"]

        def app(name: str) -> list[str]:
            return [name if part == "{app}" else part for part in socketify]

        found["socketify"] = (app("served_modelyard:app"), app("passthrough:app"), {"PYTHONPATH": str(gb.HERE)})
    return found


def start(server: str, app: str, upstream: str, tmp: Path) -> gb.Contender:
    modelyard_cmd, passthrough_cmd, env = server_commands()[server]
    name = f"{app}@{server}"
    if app == "modelyard":
        return gb.modelyard(upstream, tmp, name=name, server=modelyard_cmd, extra_env=env)
    return gb.passthrough(upstream, tmp, name=name, server=passthrough_cmd)


# --------------------------------------------------------------------------- behaviour checks


def _request_bytes(contender: gb.Contender, body: bytes, extra: str = "") -> bytes:
    host = urlsplit(contender.url).netloc
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {contender.key}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _chat(stream: bool = False, max_tokens: int = 16, content: str = "Say hello in five words.") -> bytes:
    body: dict[str, Any] = {
        "model": "bench",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": content}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def _connection(contender: gb.Contender, timeout: float = 30) -> http.client.HTTPConnection:
    where = urlsplit(contender.url)
    return http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=timeout)


def _headers(contender: gb.Contender) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {contender.key}"}


def check_streaming(contender: gb.Contender) -> tuple[bool, str]:
    conn = _connection(contender)
    try:
        conn.request("POST", "/v1/chat/completions", _chat(stream=True), _headers(contender))
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    events = [line for line in data.split(b"\n") if line.startswith(b"data: ")]
    ok = resp.status == 200 and len(events) >= 10 and events[-1] == b"data: [DONE]"
    return ok, f"{resp.status}, {len(events)} events"


def check_keep_alive(contender: gb.Contender) -> tuple[bool, str]:
    conn = _connection(contender)
    statuses, same = [], True
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", _chat(), _headers(contender))
            sock = conn.sock
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
            same = same and sock is not None and conn.sock is sock and not resp.will_close
    finally:
        conn.close()
    return same and statuses == [200, 200, 200], f"{statuses}, one connection: {same}"


def check_backpressure(contender: gb.Contender, pause_s: float) -> tuple[bool, str]:
    """A reader that stalls during a ~14 MB stream: the server must stop reading upstream, not buffer it."""
    assert contender.proc is not None
    pid = contender.proc.pid
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    where = urlsplit(contender.url)
    sock.connect((where.hostname, where.port))
    before = gb.rss_mb(pid, peak=False)
    try:
        sock.sendall(
            _request_bytes(contender, _chat(stream=True, max_tokens=BIG_STREAM_CHUNKS), "connection: close\r\n")
        )
        time.sleep(pause_s)
        grown = gb.rss_mb(pid, peak=False) - before
        sock.settimeout(60)
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    finally:
        sock.close()
    size_mb = len(received) / 1e6
    done = b"data: [DONE]" in received[-200:]
    ok = done and size_mb > 5 and grown < size_mb / 2
    return ok, f"{size_mb:.1f} MB, complete: {done}, RSS +{grown:.1f} MB while stalled {pause_s:.0f} s"


def check_slowloris(contender: gb.Contender, limit_s: float) -> tuple[bool, str]:
    """Headers one line a second: is the connection cut off within `limit_s`?"""
    where = urlsplit(contender.url)
    sock = socket.create_connection((where.hostname, where.port), timeout=1)  # recv's timeout paces the dribble
    started = time.monotonic()
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        line = 0
        while time.monotonic() - started < limit_s:
            try:
                got = sock.recv(4096)
            except TimeoutError:
                got = None
            except OSError:
                got = b""
            took = time.monotonic() - started
            if got == b"":
                return True, f"closed after {took:.1f} s"
            if got is not None:
                return True, f"answered {got.split(b' ', 2)[1].decode(errors='replace')} after {took:.1f} s"
            try:
                sock.sendall(f"x-dribble-{line}: y\r\n".encode())
            except OSError:
                return True, f"closed after {took:.1f} s"
            line += 1
    finally:
        sock.close()
    return False, f"still open after {limit_s:.0f} s ({line} header lines)"


def check_big_body(contender: gb.Contender) -> tuple[bool, str]:
    words = "hello world " * ((BODY_BYTES - 200) // 12)
    body = _chat(content=words)
    conn = _connection(contender, timeout=60)
    started = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", body, _headers(contender))
        resp = conn.getresponse()
        answer = resp.read()
        status = resp.status
    except OSError as exc:
        return False, f"{type(exc).__name__} after {time.monotonic() - started:.1f} s"
    finally:
        conn.close()
    took = time.monotonic() - started
    clean = status == 200 or (400 <= status < 500 and answer.lstrip().startswith(b"{"))
    after = _connection(contender)
    try:
        after.request("POST", "/v1/chat/completions", _chat(), _headers(contender))
        still = after.getresponse().status == 200
    finally:
        after.close()
    return clean and still, f"{len(body) / 2**20:.2f} MiB: {status} in {took:.1f} s; serving after: {still}"


CHECKS: dict[str, Callable[..., tuple[bool, str]]] = {
    "streaming": check_streaming,
    "keep-alive": check_keep_alive,
    "backpressure": check_backpressure,
    "10 MB body": check_big_body,
}


def behaviour(contenders: list[gb.Contender], pause_s: float, slowloris_s: float) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {c.name: {} for c in contenders}

    def slow(contender: gb.Contender) -> None:
        try:
            results[contender.name]["slow client"] = check_slowloris(contender, slowloris_s)
        except Exception as exc:  # a check that breaks is a fail, not the end of the run
            results[contender.name]["slow client"] = (False, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=slow, args=(c,)) for c in contenders]  # in parallel: each waits
    for thread in threads:
        thread.start()
    for contender in contenders:
        for title, check in CHECKS.items():
            try:
                args = (pause_s,) if check is check_backpressure else ()
                results[contender.name][title] = check(contender, *args)
            except Exception as exc:
                results[contender.name][title] = (False, f"{type(exc).__name__}: {exc}")
            print(f"  {contender.name:>22} {title}: {results[contender.name][title]}", flush=True)
    for thread in threads:
        thread.join()
    return results


# --------------------------------------------------------------------------- throughput


def throughput(
    contenders: list[gb.Contender], rounds: int, duration: float, died: dict[str, str]
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """(req/s, CPU µs per request) per contender and scenario, one sample per round, contenders alternated.
    A server that stops answering (wrk gets no result) is written into `died` and skipped from then on."""
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {c.name: {s: [] for s in SCENARIOS} for c in contenders}

    def run(contender: gb.Contender, connections: int, seconds: float, stream: bool) -> dict[str, Any] | None:
        if contender.name in died:
            return None
        try:
            return gb.wrk(contender, connections, seconds, stream)
        except RuntimeError as exc:
            code = contender.proc.poll() if contender.proc else None
            died[contender.name] = f"exit status {code}" if code is not None else str(exc).splitlines()[0]
            print(f"  {contender.name} stopped answering: {died[contender.name]}", flush=True)
            return None

    for contender in contenders:
        run(contender, 16, min(2.0, duration), False)  # warm-up
    for rnd in range(rounds):
        shift = rnd % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for scenario, (connections, stream) in SCENARIOS.items():
            for contender in order:
                pid = contender.proc.pid if contender.proc else 0
                cpu = gb.cpu_seconds(pid)
                result = run(contender, connections, duration, stream)
                if result is None:
                    continue
                cpu_us = (gb.cpu_seconds(pid) - cpu) * 1e6 / max(1, result["requests"])
                samples[contender.name][scenario].append((float(result["rps"]), cpu_us))
                print(
                    f"  round {rnd + 1} {contender.name:>22} {scenario:>10}: {result['rps']:.0f} req/s, "
                    f"{cpu_us:.0f} µs CPU/req, errors {result['errors']}, non2xx {result['non2xx']}",
                    flush=True,
                )
    return samples


def _cell(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def throughput_table(samples: dict[str, dict[str, list[tuple[float, float]]]], died: dict[str, str]) -> str:
    lines = [
        "each cell: median (min-max) over the rounds; ratio: against the same app under uvicorn, paired per round",
        "",
        "| app@server | req/s c=16 | req/s c=64 | streams/s c=16 | CPU µs/req c=16 | CPU µs/stream | "
        "req/s ratio c=16 / c=64 / stream vs uvicorn |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in samples.items():
        base = samples.get(name.split("@")[0] + "@uvicorn", {})
        ratios = []
        for scenario in SCENARIOS:
            pairs = zip(runs[scenario], base.get(scenario, []), strict=False)
            ratios.append(_cell([a[0] / b[0] for a, b in pairs if b[0]], 2))
        lines.append(
            f"| {name} | {_cell([r for r, _ in runs['c16']])} | {_cell([r for r, _ in runs['c64']])} "
            f"| {_cell([r for r, _ in runs['stream-c16']])} | {_cell([c for _, c in runs['c16']])} "
            f"| {_cell([c for _, c in runs['stream-c16']])} | {' / '.join(ratios)} |"
        )
    lines += [
        f"\n{name} stopped answering under load ({why}): its cells hold the runs before that"
        for name, why in died.items()
    ]
    return "\n".join(lines)


def behaviour_table(results: dict[str, dict[str, Any]]) -> str:
    titles = [*CHECKS, "slow client"]
    lines = ["| app@server | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for name, found in results.items():
        cells = []
        for title in titles:
            ok, detail = found.get(title, (False, "not run"))
            cells.append(f"{'pass' if ok else '**fail**'}: {detail}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s runs, 3 rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--servers", default="uvicorn,granian,socketify")
    parser.add_argument("--apps", default="modelyard,passthrough")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-behaviour", action="store_true")
    parser.add_argument("--stall-s", type=float, default=3.0, help="how long the slow reader reads nothing")
    parser.add_argument("--slowloris-s", type=float, default=15.0, help="a slow client must be cut off by then")
    args = parser.parse_args()
    if args.rounds < 3:
        sys.exit("error: --rounds must be at least 3")
    duration = 1.0 if args.quick else args.duration
    available = server_commands()
    servers = [s for s in args.servers.split(",") if s in available]
    missing = [s for s in args.servers.split(",") if s not in available]
    if missing:
        print(f"not installed in {sys.prefix}, left out: {', '.join(missing)}", flush=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "nproc": os.cpu_count(), "servers": servers}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_proc = gb.start_upstream(0)
        started: list[gb.Contender] = []
        try:
            for server in servers:
                for app in args.apps.split(","):
                    try:
                        started.append(start(server, app, upstream, tmp))
                    except Exception as exc:
                        print(f"  {app}@{server} did not start: {exc}", flush=True)
                        report.setdefault("failed_to_start", {})[f"{app}@{server}"] = str(exc)
            died: dict[str, str] = {}
            if not args.no_throughput:
                report["throughput"] = throughput(started, args.rounds, duration, died)
                report["died"] = died
            if not args.no_behaviour:
                report["behaviour"] = behaviour(started, args.stall_s, args.slowloris_s)
        finally:
            for contender in started:
                contender.stop()
            upstream_proc.terminate()
    if "throughput" in report:
        print("\n" + throughput_table(report["throughput"], report["died"]))
    if "behaviour" in report:
        print("\n" + behaviour_table(report["behaviour"]))
    out_dir = gb.HERE / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"servers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
