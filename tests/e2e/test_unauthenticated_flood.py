"""Nothing unbounded before authentication (issue #10, item 2), against the real gateway process.

Before: 3,000 no-key requests with unique 20 kB model names took the gateway's RSS from 106 to 304 MB (the
model string became a metrics label and a spend row before the key was checked), one /metrics scrape to
1.45 GB and 30 s, and froze /health/live for 12 s. Here 5,000 such requests must leave RSS within 10 MB,
/metrics under 1 MB and 100 ms, and /health/live's p99 under 50 ms while they run, measured by a separate
prober process (so the load generator's own event loop and GIL do not count against the gateway).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .fuzzing import MASTER, Stack, report

REQUESTS = 5_000
CLIENTS = 8
NAME_BYTES = 20_000
DEADLINE_S = 60.0

#: A separate process with two connections: GET /health/live every 10 ms, and /metrics (master key) every 250 ms
#: and once more after the stop file appears; then it prints latencies and sizes as JSON. A /metrics body is read
#: to 1 MB at most (the bug this guards against made it 1.45 GB).
PROBER = r"""
import http.client, json, os, sys, threading, time
port, stop, master = int(sys.argv[1]), sys.argv[2], sys.argv[3]
LIMIT = 1_000_000
def get(conn, path, headers):
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    size = len(response.read(LIMIT + 1))
    if size > LIMIT:
        conn.close()  # do not read the rest; http.client reconnects on the next request
    return response.status, size, (time.perf_counter() - started) * 1000
def probe(path, headers, every, out, final):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not os.path.exists(stop):
        out.append(get(conn, path, headers))
        time.sleep(every)
    if final:
        out.append(get(conn, path, headers))
live, scrapes = [], []
threads = [threading.Thread(target=probe, args=("/health/live", {}, 0.01, live, False)),
           threading.Thread(target=probe, args=("/metrics", {"authorization": "Bearer " + master}, 0.25, scrapes,
                                                True))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"live": live, "metrics": scrapes}))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("flood")).start()
    try:
        yield running
    finally:
        running.stop()


async def flood(url: str, names: range, statuses: dict[int, int]) -> None:
    """POST a chat request with no key and a unique 20 kB model name for each of `names`, CLIENTS at a time."""
    todo = iter(names)
    padding = "m" * NAME_BYTES

    async def client(session: aiohttp.ClientSession) -> None:
        for i in todo:
            body = json.dumps({"model": f"{i}-{padding}", "messages": [{"role": "user", "content": "hi"}]})
            async with session.post(
                url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.wait_for(asyncio.gather(*(client(session) for _ in range(CLIENTS))), DEADLINE_S)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def start_prober(stack: Stack, stop: Path) -> subprocess.Popen[str]:
    assert stack.gateway is not None
    return subprocess.Popen(
        [sys.executable, "-c", PROBER, str(stack.gateway.port), str(stop), MASTER], stdout=subprocess.PIPE, text=True
    )


def test_unauthenticated_flood_of_unique_model_names_stays_bounded(
    stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    statuses: dict[int, int] = {}
    asyncio.run(flood(stack.url, range(-200, 0), statuses))  # warm: the baseline holds what any first request fills
    assert stack.get("/metrics", key="master").status == 200
    before = stack.rss_bytes()
    stop = tmp_path / "stop"
    prober = start_prober(stack, stop)
    try:
        started = time.monotonic()
        statuses.clear()
        asyncio.run(flood(stack.url, range(REQUESTS), statuses))
        seconds = time.monotonic() - started
    finally:
        stop.touch()
        try:
            out, _ = prober.communicate(timeout=90)
        finally:
            if prober.poll() is None:
                prober.kill()
                prober.wait()
    grown = stack.rss_bytes() - before
    probed = json.loads(out)
    live_ms = [ms for status, _, ms in probed["live"] if status == 200]
    scrapes = probed["metrics"]
    report(
        request,
        f"flood: {REQUESTS} no-key requests in {seconds:.1f}s, statuses {statuses}; RSS +"
        f"{grown / 2**20:.1f} MB; /health/live p99 {p99(live_ms):.1f} ms over {len(live_ms)} probes; "
        f"/metrics max {max(s[1] for s in scrapes)} bytes, {max(s[2] for s in scrapes):.0f} ms",
    )

    assert statuses == {401: REQUESTS}
    assert len(live_ms) == len(probed["live"]) >= 10, "/health/live failed, or was probed too few times"
    assert p99(live_ms) < 50, f"/health/live p99 {p99(live_ms):.1f} ms during the flood"
    assert all(status == 200 for status, _, _ in scrapes)
    assert max(size for _, size, _ in scrapes) < 1_000_000, "/metrics grew past 1 MB"
    assert max(ms for _, _, ms in scrapes) < 100, "a /metrics scrape took 100 ms or more"
    assert grown <= 10 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over {REQUESTS} unauthenticated requests"
