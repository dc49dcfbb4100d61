"""Three gateway processes behind HAProxy on loopback (modelyard.testing.cluster), as docker-compose runs them:
the load balancer spreads requests over all three, and a replica killed with SIGKILL is taken out while
requests keep succeeding, then comes back after a restart."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelyard.testing.cluster import (
    DEFAULT_POSTGRES,
    DEFAULT_REDIS,
    REPLICA_HEADER,
    Cluster,
    ClusterError,
    _reachable,
)

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not _reachable(DEFAULT_REDIS, 6379) or not _reachable(DEFAULT_POSTGRES, 5432):
        pytest.skip("Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 are needed")
    with Cluster(replicas=3) as running:
        yield running


def _served_ok(replica_url: str, headers: dict[str, str]) -> int:
    """Requests for `chat` a replica answered ok, by its own /metrics."""
    text = httpx.get(replica_url + "/metrics", headers=headers, timeout=5).text
    pattern = r'^modelyard_requests_total\{[^}]*model="chat"[^}]*status="ok"[^}]*\} (\S+)$'
    return sum(int(float(m)) for m in re.findall(pattern, text, flags=re.MULTILINE))


def test_requests_are_spread_over_all_three_replicas(cluster: Cluster) -> None:
    before = [_served_ok(url, cluster.headers) for url in cluster.replica_urls]
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=cluster.url, headers=cluster.headers, timeout=10) as client:
        for _ in range(30):
            answer = client.post("/v1/chat/completions", json=BODY)
            assert answer.status_code == 200, answer.text
            seen[answer.headers[REPLICA_HEADER]] += 1
    assert set(seen) == {"r0", "r1", "r2"}
    assert min(seen.values()) >= 8, seen  # round robin: ~10 each
    # The header is HAProxy's word; each replica's own counters agree that it did the work.
    after = [_served_ok(url, cluster.headers) for url in cluster.replica_urls]
    assert [a - b for a, b in zip(after, before, strict=True)] == [seen["r0"], seen["r1"], seen["r2"]]


@dataclass
class _Call:
    started: float
    status: int
    replica: str
    error: str = ""


def _traffic(cluster: Cluster, calls: list[_Call], stop: threading.Event) -> None:
    """One request at a time until `stop`: at most one can be in flight when a replica dies."""
    with httpx.Client(base_url=cluster.url, headers=cluster.headers, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                answer = client.post("/v1/chat/completions", json=BODY)
                calls.append(_Call(started, answer.status_code, answer.headers.get(REPLICA_HEADER, "")))
            except httpx.HTTPError as exc:
                calls.append(_Call(started, 0, "", repr(exc)))


def test_a_replica_killed_with_sigkill_is_taken_out_and_requests_keep_succeeding(cluster: Cluster) -> None:
    calls: list[_Call] = []
    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(cluster, calls, stop), daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        cluster.kill(1)  # returns once the process is gone
        killed_at = time.monotonic()
        taken_out_s = cluster.wait_lb("r1", "DOWN", timeout_s=5)
        out_at = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=15)
    before = [c for c in calls if c.started < killed_at]
    after = [c for c in calls if c.started >= killed_at]
    assert {c.replica for c in before if c.status == 200} == {"r0", "r1", "r2"}
    # A refused connection is redispatched by HAProxy: every request sent after the kill succeeded, even
    # before the health checks took r1 out; only the one in flight at the kill could have failed.
    assert len(after) > 20 and all(c.status == 200 for c in after), [c for c in after if c.status != 200]
    assert sum(c.status != 200 for c in before) <= 1, [c for c in before if c.status != 200]
    assert {c.replica for c in after if c.started >= out_at} == {"r0", "r2"}
    assert taken_out_s < 2.0  # two failed checks 200 ms apart

    cluster.restart(1)
    with httpx.Client(base_url=cluster.url, headers=cluster.headers, timeout=10) as client:
        back = Counter(client.post("/v1/chat/completions", json=BODY).headers[REPLICA_HEADER] for _ in range(9))
    assert set(back) == {"r0", "r1", "r2"}


def test_a_replica_that_cannot_start_fails_the_cluster_with_its_log(tmp_path: Path) -> None:
    bad = (
        "deployments:\n  - {name: x, provider: openai, model: m, api_base: http://127.0.0.1:9, price: {input: oops}}\n"
    )
    with pytest.raises(ClusterError) as failure:
        Cluster(bad, replicas=2, redis_url=None, postgres_dsn=None, workdir=tmp_path, ready_timeout_s=20).start()
    message = str(failure.value)
    assert "exited while starting" in message
    assert "price.input" in message  # the replica's own `file:line: key: message`, from its log
    assert (tmp_path / "replica-0" / "gateway.log").exists()  # kept for a look
