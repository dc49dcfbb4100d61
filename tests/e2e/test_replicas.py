"""Three replicas behind HAProxy share what they learn (issue #15, "Done when"): real `modelyard serve` processes
(modelyard.testing.cluster), the simulator as the provider, Redis on loopback.

- Under ~100 req/s spread over the three, a deployment that starts failing stops receiving traffic from all
  three within 1 s of the first replica's breaker opening (measured: the first open seen on any replica's
  /health/ready against the last request the simulator received for that deployment).
- Failed upstream calls over the same outage, shared health against per-replica health (`state.shared_health:
  false`), in the same run: the shared fleet sends one half-open probe per cooldown, per-replica sends three.
- An answer cached through replica 1 is a hit through replica 2, chat and messages, JSON and streamed, at cost 0.
- Redis unavailable (a private redis-server, killed and restarted): requests keep succeeding, every replica's
  `modelyard_shared_health_unavailable` says 1 and a breaker still opens on the local view; the response cache
  falls back to each replica's own (the same prompt twice on one replica: the second is a hit; the outage
  counted as backend errors); when Redis returns, sharing resumes: the breaker opened during the outage
  reaches the other replicas and a cached answer is a hit elsewhere again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.sim.server import SimServer
from modelyard.testing.cluster import DEFAULT_REDIS, Cluster, _reachable
from modelyard.testing.process import free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

#: The failing deployment's simulator model; the healthy one answers as sim-small. Different models, so the
#: simulator's own counters tell the two apart.
BAD_MODEL = "sim-medium"
#: Breaker settings of the scenario: trip after 5 failures, probe after 2 s.
FAILURES = 5
COOLDOWN_S = 2.0
#: Load while the deployment fails: open loop, one request every 10 ms through the load balancer.
RATE = 100.0
#: How long the outage lasts in each health scenario (two probe rounds of COOLDOWN_S).
OUTAGE_S = 5.0
#: Metric families that say 1 while Redis is unreachable (server/metrics.py).
HEALTH_UNAVAILABLE = "modelyard_shared_health_unavailable"
#: Response-cache Redis calls that failed (the listener cut off, a batch of writes lost, a lookup missed).
CACHE_ERRORS = "modelyard_response_cache_errors_total"


def config(*, shared_health: bool = True, cooldown_s: float = COOLDOWN_S) -> str:
    """`chat` tries `bad` (tier 1) then `good` (tier 2): while `bad` is closed it gets every request, once it is
    open none; no retry on the same deployment (a failure fails over at once). `claude` answers on the
    Anthropic wire. The response cache on, shared through the cluster's Redis."""
    sim = '"${MODELYARD_SIM_URL}'
    common = "api_key: sk-sim, price: {input: 0.1, output: 0.4}, timeouts: {connect: 2, first_token: 5, total: 10}"
    return f"""
deployments:
  - {{name: bad, provider: openai, model: {BAD_MODEL}, api_base: {sim}/v1", tier: 1, {common}}}
  - {{name: good, provider: openai, model: sim-small, api_base: {sim}/v1", tier: 2, {common}}}
  - {{name: small@anthropic, provider: anthropic, model: sim-small, api_base: {sim}", {common}}}
models:
  chat: {{candidates: [bad, good]}}
  claude: {{candidates: [small@anthropic]}}
routing:
  retries: 0
  breaker: {{failures: {FAILURES}, window_s: 30, cooldown_s: {cooldown_s}}}
cache: {{enabled: true, ttl_s: 120}}
drain: {{grace_s: 0.2, deadline_s: 5}}
state:
  redis_url: "${{MODELYARD_REDIS_URL}}"
  prefix: "${{MODELYARD_STATE_PREFIX}}"
  shared_health: {str(shared_health).lower()}
  health_sync_s: 0.25
  redis_timeout_s: 0.2
spend: {{store: ":memory:", spool_dir: "${{MODELYARD_SPOOL_DIR}}", flush_interval_s: 0.2}}
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    if not _reachable(DEFAULT_REDIS, 6379):
        pytest.skip("Redis on 127.0.0.1:6379 is needed")
    with SimServer(seed=11, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def shared(sim: SimServer) -> Iterator[Cluster]:
    with Cluster(config(), replicas=3, sim=sim, postgres_dsn=None) as running:
        yield running


# ---------------------------------------------------------------------------------------------- the outage


def sim_requests(sim: SimServer, model: str) -> int:
    return int(sim.stats()["models"].get(model, {}).get("requests", 0))


@dataclass
class Outage:
    """What one outage scenario saw: every poll's clock is time.monotonic() of this process."""

    fault_at: float = 0.0
    #: Per replica, when its /health/ready first listed `bad` among open circuits.
    opened: dict[str, float] = field(default_factory=dict)
    #: (time, count) each time the simulator's request count for BAD_MODEL changed.
    bad_requests: list[tuple[float, int]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failed_calls: int = 0

    @property
    def first_open(self) -> float:
        return min(self.opened.values())

    def last_request_before(self, until: float) -> float:
        """When the simulator last received a request for `bad` before `until` (the poll that saw it)."""
        return max(at for at, _ in self.bad_requests if at < until)


def _poll(stop: threading.Event, every_s: float, step: Callable[[], None]) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            step()
            time.sleep(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _watch_sim(sim: SimServer, seen: Outage) -> Callable[[], None]:
    def step() -> None:
        count = sim_requests(sim, BAD_MODEL)
        if not seen.bad_requests or seen.bad_requests[-1][1] != count:
            seen.bad_requests.append((time.monotonic(), count))

    return step


def _watch_breakers(cluster: Cluster, seen: Outage, client: httpx.Client) -> Callable[[], None]:
    def step() -> None:
        for replica in cluster.replicas:
            if replica.name in seen.opened:
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = client.get(replica.url + "/health/ready").json()
                if "bad" in body.get("open_circuits", ()):
                    seen.opened[replica.name] = time.monotonic()

    return step


async def _load(url: str, headers: dict[str, str], seconds: float, statuses: dict[int, int]) -> None:
    """Open loop at RATE req/s for `seconds` (a request is sent on schedule whatever the others do)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=15, limits=limits) as client:

        async def one() -> None:
            try:
                answer = await client.post("/v1/chat/completions", json=body)
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        for i in range(int(seconds * RATE)):
            delay = started + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


def run_outage(cluster: Cluster, sim: SimServer) -> Outage:
    """1 s of healthy traffic, then `bad` fails every call for OUTAGE_S under the same load; `bad` healthy again
    at the end (and its breakers closed: the next scenario starts from scratch on a new cluster)."""
    seen = Outage()
    before = sim_requests(sim, BAD_MODEL)
    stop = threading.Event()
    with httpx.Client(headers=cluster.headers, timeout=2) as poller:
        threads = [_poll(stop, 0.005, _watch_sim(sim, seen)), _poll(stop, 0.01, _watch_breakers(cluster, seen, poller))]

        async def scenario() -> None:
            load = asyncio.create_task(_load(cluster.url, cluster.headers, 1.0 + OUTAGE_S, seen.statuses))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(sim.set_faults, BAD_MODEL, server_error=1.0)
            seen.fault_at = time.monotonic()
            faulty_from = await asyncio.to_thread(sim_requests, sim, BAD_MODEL)
            await load
            seen.failed_calls = await asyncio.to_thread(sim_requests, sim, BAD_MODEL) - faulty_from

        try:
            asyncio.run(scenario())
        finally:
            sim.set_faults(BAD_MODEL, server_error=0.0)
            stop.set()
            for thread in threads:
                thread.join(timeout=5)
    assert sim_requests(sim, BAD_MODEL) > before  # `bad` served while healthy
    return seen


def test_a_failing_deployment_stops_getting_traffic_from_all_three_within_a_second(
    shared: Cluster, sim: SimServer
) -> None:
    seen = run_outage(shared, sim)
    per_replica = run_per_replica(sim)

    # Every client request succeeded: the failures were absorbed by failing over to `good`.
    assert set(seen.statuses) == {200}, seen.statuses
    assert set(per_replica.statuses) == {200}, per_replica.statuses
    assert set(seen.opened) == {"r0", "r1", "r2"}, seen.opened
    first_open = seen.first_open
    assert first_open > seen.fault_at
    # The trip phase: before the first half-open probe (COOLDOWN_S after the first open).
    stopped_after = seen.last_request_before(first_open + COOLDOWN_S - 0.3) - first_open
    spread = max(seen.opened.values()) - first_open
    alone_spread = max(per_replica.opened.values()) - per_replica.first_open
    print(
        f"\nshared health: first breaker open {1000 * (first_open - seen.fault_at):.0f} ms after the fault; last "
        f"request to the failing deployment {1000 * stopped_after:.0f} ms after the first open (polls: sim 5 ms, "
        f"/health/ready 10 ms); all three open within {1000 * spread:.0f} ms (per-replica health: "
        f"{1000 * alone_spread:.0f} ms)"
    )
    print(
        f"failed upstream calls in {OUTAGE_S:.0f} s of outage at {RATE:.0f} req/s (breaker: {FAILURES} failures, "
        f"cooldown {COOLDOWN_S:.0f} s): shared health {seen.failed_calls}, per-replica health "
        f"{per_replica.failed_calls}"
    )
    assert stopped_after < 1.0
    assert seen.failed_calls < per_replica.failed_calls
    # Per-replica, each replica trips on its own failures: never fewer than three times the threshold.
    assert per_replica.failed_calls >= 3 * FAILURES


def run_per_replica(sim: SimServer) -> Outage:
    """The same outage on a cluster whose replicas keep health to themselves."""
    with Cluster(config(shared_health=False), replicas=3, sim=sim, postgres_dsn=None) as alone:
        return run_outage(alone, sim)


# ---------------------------------------------------------------------------------------------- the cache


def _cost(answer: httpx.Response) -> float:
    return float(answer.headers["x-modelyard-cost-usd"])


def cost_total(url: str, headers: dict[str, str]) -> float:
    """The cost of every answer a replica has given, by its /metrics."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=5).text
    return sum(float(v) for v in re.findall(r"^modelyard_cost_usd_total\{[^}]*\} (\S+)$", text, flags=re.MULTILINE))


def _sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def ask(url: str, headers: dict[str, str], wire: str, prompt: str, *, stream: bool = False) -> httpx.Response:
    """One deterministic (temperature 0) request on `wire`, read whole (a stream to its end)."""
    messages = [{"role": "user", "content": prompt}]
    if wire == "chat":
        path, body = "/v1/chat/completions", {"model": "chat", "messages": messages, "temperature": 0}
        if stream:
            body["stream_options"] = {"include_usage": True}
    else:
        path, body = "/v1/messages", {"model": "claude", "messages": messages, "temperature": 0, "max_tokens": 64}
    if stream:
        body["stream"] = True
    with httpx.Client(timeout=15) as client:
        answer = client.post(url + path, json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


@pytest.mark.parametrize("wire", ["chat", "messages"])
def test_an_answer_cached_through_replica_one_is_a_hit_through_replica_two(
    shared: Cluster, sim: SimServer, wire: str
) -> None:
    one, two = shared.replica_urls[1], shared.replica_urls[2]
    for first_stream in (False, True):
        prompt = f"Say something short. {uuid.uuid4().hex}"
        miss = ask(one, shared.headers, wire, prompt, stream=first_stream)
        assert miss.headers["x-modelyard-cache"] == "miss"
        if not first_stream:
            assert _cost(miss) > 0
        calls = sim.stats()["totals"]["requests"]
        assert cost_total(one, shared.headers) > 0  # what a live answer costs shows in /metrics
        spent = cost_total(two, shared.headers)
        time.sleep(0.2)  # the store is written to Redis after the answer, then announced to the others
        hit = ask(two, shared.headers, wire, prompt)
        assert hit.headers["x-modelyard-cache"] == "hit", (wire, first_stream)
        assert _cost(hit) == 0.0
        replay = ask(two, shared.headers, wire, prompt, stream=True)
        assert replay.headers["x-modelyard-cache"] == "hit", (wire, first_stream)
        assert replay.headers["content-type"].startswith("text/event-stream")
        events = _sse_data(replay.text)
        if wire == "chat":
            assert hit.json()["usage"]["cost"] == 0.0
            assert replay.text.rstrip().endswith("data: [DONE]")
            usage = [e["usage"] for e in events if e.get("usage")]
            assert usage and usage[-1]["cost"] == 0.0
            text = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", ()))
            assert text == hit.json()["choices"][0]["message"]["content"]
        else:
            assert [e["type"] for e in events][-1] == "message_stop"
            text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
            assert text == "".join(block.get("text", "") for block in hit.json()["content"])
            delta = next(e for e in events if e["type"] == "message_delta")
            assert delta["usage"]["output_tokens"] == hit.json()["usage"]["output_tokens"]
        assert sim.stats()["totals"]["requests"] == calls  # neither went upstream
        assert cost_total(two, shared.headers) == spent  # and replica 2 counted no cost for either


# ---------------------------------------------------------------------------------------------- Redis down


class PrivateRedis:
    """A redis-server of this test's own (no persistence), to kill and restart: the shared one must stay up."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            command, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while not _reachable(self.url, self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def gauges(url: str, headers: dict[str, str]) -> dict[str, float]:
    """Every unlabelled `modelyard_*` sample of a replica's /metrics."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(r"^(modelyard_\w+) (\S+)$", text, flags=re.MULTILINE)}


def cache_listeners(url: str) -> int:
    """Response caches subscribed to their key announcements on this Redis (one per replica when sharing)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        channels = client.pubsub_channels("*:rc-keys")
        return sum(int(count) for _, count in client.pubsub_numsub(*channels)) if channels else 0
    finally:
        client.close()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_redis_down_falls_back_to_local_views_and_sharing_returns_with_it(sim: SimServer, tmp_path: Path) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    trip = {"model": "chat", "messages": [{"role": "user", "content": "not cached: no temperature"}], "max_tokens": 8}
    try:
        # A long cooldown: the breaker opened during the outage must still be open when Redis returns.
        with Cluster(config(cooldown_s=60), replicas=3, sim=sim, postgres_dsn=None, redis_url=redis.url) as cluster:
            urls, headers = cluster.replica_urls, cluster.headers
            prompt = f"Say something short. {uuid.uuid4().hex}"
            assert ask(urls[0], headers, "chat", prompt).headers["x-modelyard-cache"] == "miss"
            time.sleep(0.2)
            assert ask(urls[1], headers, "chat", prompt).headers["x-modelyard-cache"] == "hit"
            errors = [gauges(url, headers)[CACHE_ERRORS] for url in urls]
            assert all(gauges(url, headers)[HEALTH_UNAVAILABLE] == 0 for url in urls)

            redis.kill()
            # Requests keep succeeding on every replica and through the load balancer.
            down = f"Say something short. {uuid.uuid4().hex}"
            for url in urls:
                answer = ask(url, headers, "chat", down)
                assert answer.headers["x-modelyard-cache"] == "miss"
            # Each replica falls back to its own cache: the same prompt again on one replica is a hit.
            calls = sim.stats()["totals"]["requests"]
            assert ask(urls[0], headers, "chat", down).headers["x-modelyard-cache"] == "hit"
            assert ask(urls[0], headers, "chat", prompt).headers["x-modelyard-cache"] == "hit"  # kept from before
            assert sim.stats()["totals"]["requests"] == calls
            with httpx.Client(base_url=cluster.url, headers=headers, timeout=10) as client:
                assert all(client.post("/v1/chat/completions", json=trip).status_code == 200 for _ in range(30))
            noticed = wait_for(
                lambda: all(gauges(url, headers)[HEALTH_UNAVAILABLE] == 1 for url in urls),
                5.0,
                "every replica reporting the shared health view unavailable",
            )
            assert all(gauges(url, headers)[CACHE_ERRORS] > before for url, before in zip(urls, errors, strict=True))
            # Health is local, not gone: a breaker still opens on the replica that sees the failures.
            sim.set_faults(BAD_MODEL, server_error=1.0)
            try:
                with httpx.Client(base_url=urls[0], headers=headers, timeout=10) as client:
                    assert all(
                        client.post("/v1/chat/completions", json=trip).status_code == 200 for _ in range(FAILURES)
                    )
            finally:
                sim.set_faults(BAD_MODEL, server_error=0.0)
            opened = [httpx.get(u + "/health/ready", timeout=5).json()["open_circuits"] for u in urls]
            assert opened == [["bad"], [], []], opened

            redis.start()  # empty: a restarted Redis has lost everything
            recovered = wait_for(
                lambda: all(gauges(url, headers)[HEALTH_UNAVAILABLE] == 0 for url in urls),
                10.0,
                "every replica sharing health again",
            )
            # Sharing is back: r0 publishes its open breaker again, and r1 and r2 adopt it; the cache is shared.
            adopted = wait_for(
                lambda: all("bad" in httpx.get(u + "/health/ready", timeout=5).json()["open_circuits"] for u in urls),
                3.0,
                "r0's open breaker reaching r1 and r2 after Redis returned",
            )
            # The response cache has its own probe: its listeners resubscribe once it finds Redis back.
            wait_for(lambda: cache_listeners(redis.url) == 3, 5.0, "every replica's response cache sharing again")
            again = f"Say something short. {uuid.uuid4().hex}"
            assert ask(urls[2], headers, "chat", again).headers["x-modelyard-cache"] == "miss"
            time.sleep(0.2)
            assert ask(urls[0], headers, "chat", again).headers["x-modelyard-cache"] == "hit"
            print(
                f"\nRedis down: seen by all three in {noticed:.2f} s; after its restart all three share again in "
                f"{recovered:.2f} s and adopt r0's open breaker {adopted:.2f} s later"
            )
    finally:
        redis.kill()
