"""Health shared between replicas through Redis (state/redis_health.py, issue #15 item 1): several trackers,
each with its own `SharedHealth`, in one process on the real Redis (a unique prefix per test), and an outage
on a private `redis-server` (tests/redis_server.py) that is killed and restarted."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from modelyard.routing.health import BreakerPolicy, BreakerState, HealthTracker
from modelyard.schema.errors import ErrorKind
from modelyard.state.redis_health import SharedHealth
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.unit.state.conftest import REDIS_URL, _reachable

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not _reachable("127.0.0.1", 6379), reason="Redis is not running on 127.0.0.1:6379"),
]

SYNC_S = 0.25
POLICY = BreakerPolicy(failures=2, window_s=10.0, cooldown_s=0.6)

Fleet = Callable[..., Awaitable[list[tuple[HealthTracker, SharedHealth]]]]


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """`await fleet(n)`: n replicas (tracker + SharedHealth) sharing one fresh prefix; cleaned up after."""
    prefix = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    made: list[SharedHealth] = []

    async def make(n: int, url: str = REDIS_URL, **kwargs: Any) -> list[tuple[HealthTracker, SharedHealth]]:
        out = []
        for _ in range(n):
            tracker = HealthTracker(POLICY)
            shared = SharedHealth(
                tracker, url, prefix=prefix, sync_s=SYNC_S, timeout_s=0.3, replica_id=f"r{len(made)}", **kwargs
            )
            made.append(shared)
            await shared.start()
            out.append((tracker, shared))
        return out

    yield make
    for shared in made:
        await shared.close()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
    finally:
        await client.aclose()


def trip(tracker: HealthTracker, name: str = "d") -> None:
    now = time.monotonic()
    for _ in range(POLICY.failures):
        tracker.on_start(name, now)
        tracker.on_failure(name, now, ErrorKind.SERVER)
    assert tracker.get(name).state is BreakerState.OPEN


async def until(check: Callable[[], bool], limit_s: float = 3.0) -> float:
    """Seconds until `check()` holds (polled every 0.5 ms); fails after `limit_s`."""
    start = time.perf_counter()
    while not check():
        assert time.perf_counter() - start < limit_s, "condition not reached"
        await asyncio.sleep(0.0005)
    return time.perf_counter() - start


def state(tracker: HealthTracker, name: str = "d") -> BreakerState:
    return tracker.get(name).state


def fire(trackers: list[HealthTracker], name: str = "d") -> list[int]:
    """One request attempt per replica: the replicas that let it through (half-open probes started)."""
    now = time.monotonic()
    through = []
    for i, tracker in enumerate(trackers):
        if tracker.available(name, now):
            tracker.on_start(name, now)
            assert tracker.get(name).state is BreakerState.HALF_OPEN
            through.append(i)
    return through


async def probe_once(trackers: list[HealthTracker], limit_s: float = 3.0) -> int:
    """Fire at every replica until one lets a probe through; the index of that replica."""
    winners: list[int] = []

    def fired() -> bool:
        winners.extend(fire(trackers))
        return bool(winners)

    await until(fired, limit_s)
    assert len(winners) == 1, winners
    return winners[0]


async def test_an_open_breaker_is_seen_by_another_replica_within_the_sync_bound(fleet: Fleet) -> None:
    (a, _), (b, _) = await fleet(2)
    trip(a)
    delay = await until(lambda: state(b) is BreakerState.OPEN)
    print(f"\nbreaker opened on A seen open on B after {delay * 1000:.1f} ms (pub/sub)")
    assert delay < SYNC_S
    # B's open-until is A's (same cooldown, same moment): it will not probe earlier than A would.
    assert abs(b.breaker("d")[2] - a.breaker("d")[2]) < 0.05


async def test_without_pubsub_the_sync_read_alone_keeps_the_bound(fleet: Fleet) -> None:
    (a, _), (b, _) = await fleet(2, events=False)
    trip(a)
    delay = await until(lambda: state(b) is BreakerState.OPEN)
    print(f"\nbreaker opened on A seen open on B after {delay * 1000:.1f} ms (sync read only)")
    assert delay < SYNC_S + 0.25  # one sync period, with room for a loaded machine


async def test_only_one_replica_probes_after_the_cooldown_and_success_closes_all(fleet: Fleet) -> None:
    replicas = await fleet(3)
    trackers = [t for t, _ in replicas]
    trip(trackers[0])
    await until(lambda: all(state(t) is BreakerState.OPEN for t in trackers))
    assert fire(trackers) == []  # cooling down everywhere
    await asyncio.sleep(POLICY.cooldown_s)
    winner = await probe_once(trackers)
    # Everyone else stays open while the probe runs, however often asked, over several syncs.
    for _ in range(40):
        assert fire(trackers) == []
        await asyncio.sleep(0.02)
    assert sum(s.probes_won for _, s in replicas) == 1
    trackers[winner].on_success("d", time.monotonic(), 50.0)
    delay = await until(lambda: all(state(t) is BreakerState.CLOSED for t in trackers))
    print(f"\nprobe success on replica {winner} closed all in {delay * 1000:.1f} ms")
    assert sum(s.remote_closes for _, s in replicas) == 2


async def test_a_failed_probe_reopens_on_all_with_a_new_open_until(fleet: Fleet) -> None:
    replicas = await fleet(3)
    trackers = [t for t, _ in replicas]
    trip(trackers[1])
    await until(lambda: all(state(t) is BreakerState.OPEN for t in trackers))
    first = [t.breaker("d") for t in trackers]
    await asyncio.sleep(POLICY.cooldown_s)
    winner = await probe_once(trackers)
    failed_at = time.monotonic()
    trackers[winner].on_failure("d", failed_at, ErrorKind.SERVER)

    def reopened() -> bool:
        return all(t.breaker("d")[1] > first[i][1] for i, t in enumerate(trackers))

    await until(reopened, 2.0)
    for tracker, (_, epoch, open_until) in zip(trackers, first, strict=True):
        st, new_epoch, new_until = tracker.breaker("d")
        assert st is BreakerState.OPEN and new_epoch > epoch
        assert new_until > open_until and abs(new_until - (failed_at + POLICY.cooldown_s)) < 0.1
    assert fire(trackers) == []
    # The next probe is a new one (a new epoch, a new key): again exactly one replica takes it.
    await asyncio.sleep(POLICY.cooldown_s)
    await probe_once(trackers)
    assert sum(s.probes_won for _, s in replicas) == 2


async def test_a_slow_probe_keeps_its_key_and_no_second_replica_probes(fleet: Fleet) -> None:
    replicas = await fleet(3, probe_ttl_s=0.3)
    trackers = [t for t, _ in replicas]
    trip(trackers[0])
    await until(lambda: all(state(t) is BreakerState.OPEN for t in trackers))
    await asyncio.sleep(POLICY.cooldown_s)
    winner = await probe_once(trackers)
    # The probe request runs for 4 key TTLs: the winner's syncs keep the key, nobody else gets a probe.
    for _ in range(60):
        assert fire(trackers) == []
        await asyncio.sleep(0.02)
    assert sum(s.probes_won for _, s in replicas) == 1
    trackers[winner].on_success("d", time.monotonic(), 50.0)
    await until(lambda: all(state(t) is BreakerState.CLOSED for t in trackers))


async def test_a_replica_ignores_deployments_it_does_not_serve(fleet: Fleet) -> None:
    (a, _), (b, _) = await fleet(2, names=lambda: {"e"})
    trip(a)
    trip(a, "e")
    await until(lambda: state(b, "e") is BreakerState.OPEN)
    await asyncio.sleep(SYNC_S * 2)
    assert "d" not in b.all() and b.unhealthy == {"e"}


async def test_statistics_are_blended_and_each_replica_publishes_only_its_own(fleet: Fleet) -> None:
    (a, sa), (b, sb) = await fleet(2)
    a.watch_latency(250.0)
    b.watch_latency(250.0)
    now = time.monotonic()
    for _ in range(30):
        a.on_start("d", now)
        a.on_success("d", now, 100.0, 20.0)
    for _ in range(10):
        b.on_start("d", now)
        b.on_success("d", now, 500.0, 60.0)
    assert a.slow_over(250.0) == set() and b.slow_over(250.0) == {"d"}
    await asyncio.sleep(SYNC_S * 3)
    # Weighted by samples (30 vs 10): (30*100 + 10*500) / 40 = 200, TTFT (30*20 + 10*60) / 40 = 30.
    for tracker in (a, b):
        health = tracker.get("d")
        assert health.ewma_total_ms == pytest.approx(200.0, rel=0.02)
        assert health.ewma_ttft_ms == pytest.approx(30.0, rel=0.02)
        assert health.p95_ms == pytest.approx(200.0, rel=0.02)
    assert b.slow_over(250.0) == set()  # the fleet's p95 is under the bound now
    # More local samples on A after the blend: A's own view is recovered from the blended field (not a
    # mix of fleet and own fed back into the fleet) and the blend moves toward it.
    for _ in range(30):
        a.on_start("d", now)
        a.on_success("d", now, 100.0, 20.0)
    await asyncio.sleep(SYNC_S * 3)
    own = a.own_stats(time.monotonic())["d"]
    assert own[0] == pytest.approx(100.0, rel=0.01) and own[1] == pytest.approx(20.0, rel=0.01)
    assert b.own_stats(time.monotonic())["d"][0] == pytest.approx(500.0, rel=0.01)
    assert 100.0 < b.get("d").ewma_total_ms < 200.0  # type: ignore[operator]
    assert sa.syncs > 0 and sb.syncs > 0


async def test_a_replica_that_has_not_measured_a_deployment_gets_the_fleets_numbers(fleet: Fleet) -> None:
    (a, _), (b, _) = await fleet(2)
    now = time.monotonic()
    for _ in range(5):
        a.on_start("d", now)
        a.on_success("d", now, 300.0, 30.0)
    await until(lambda: b.get("d").ewma_total_ms is not None)
    assert b.get("d").ewma_total_ms == pytest.approx(300.0)
    assert b.own_stats(time.monotonic()).get("d") is None  # nothing of its own to publish


async def test_no_redis_call_on_the_request_path(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.connection import AbstractConnection

    sent: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    (a, shared), (b, _) = await fleet(2, events=False)
    shared.sync_s = 3600.0  # only a breaker transition wakes the sync now
    await asyncio.sleep(0.05)
    before = len(sent)
    now = time.monotonic()
    start: Callable[..., object] = a.on_start
    success: Callable[..., object] = a.on_success
    failure: Callable[..., object] = a.on_failure
    for i in range(1000):
        for result in (
            start("d", now),
            success("d", now, 100.0, 10.0) if i % 3 else failure("d", now, ErrorKind.SERVER),
            a.available("d", now),
        ):
            assert not isinstance(result, Awaitable)  # synchronous: nothing left to await
    assert len(sent) == before  # nothing was sent while 1000 requests went through the tracker
    assert state(a) is BreakerState.OPEN
    await until(lambda: state(b) is BreakerState.OPEN, 3.0)
    # The trip woke one sync: a handful of commands, not one per request.
    assert 0 < len(sent) - before < 20, len(sent) - before


async def test_a_closed_port_leaves_the_local_view_in_charge() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    tracker = HealthTracker(POLICY)
    shared = SharedHealth(tracker, f"redis://127.0.0.1:{port}/0", prefix="x", sync_s=SYNC_S, timeout_s=0.2)
    await shared.start()
    try:
        assert shared.unavailable and shared.outages == 1 and not tracker.shared
        trip(tracker)
        await asyncio.sleep(POLICY.cooldown_s)
        assert fire([tracker]) == [0]  # a local probe: no fleet to ask
    finally:
        await shared.close()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_killed_local_view_then_recovery_republishes_open_breakers(fleet: Fleet) -> None:
    with RedisServer() as server:
        (a, sa), (b, sb) = await fleet(2, url=server.url)
        trip(a, "e")  # shared while Redis is up
        await until(lambda: state(b, "e") is BreakerState.OPEN)
        server.kill()
        trip(a)  # wakes A's sync, which finds Redis gone
        await until(lambda: sa.unavailable and sb.unavailable, 2.0)
        assert not a.shared and not b.shared and sa.outages == 1
        assert state(b) is BreakerState.CLOSED  # B cannot learn it; it keeps its own view
        # Each replica's own breakers work as without sharing: local cooldowns, local probes.
        await asyncio.sleep(POLICY.cooldown_s)
        assert fire([a]) == [0] and fire([b], "e") == [0]
        a.on_failure("d", time.monotonic(), ErrorKind.SERVER)
        b.on_success("e", time.monotonic(), 10.0)
        assert state(a) is BreakerState.OPEN and state(b, "e") is BreakerState.CLOSED
        server.start()  # empty: the fleet's verdicts are gone
        back = await until(lambda: not sa.unavailable and not sb.unavailable, 5.0)
        print(f"\nshared health back {back * 1000:.0f} ms after Redis restarted")
        assert a.shared and b.shared
        # What A learnt during the outage reaches B; and a replica that starts now learns both of A's open
        # breakers, "e" included, which A had published before the restart (so published again on return).
        await until(lambda: state(b) is BreakerState.OPEN, 2.0)
        ((c, _),) = await fleet(1, url=server.url)
        assert state(c) is BreakerState.OPEN and state(c, "e") is BreakerState.OPEN
        await until(lambda: state(b, "e") is BreakerState.OPEN, 2.0)


ROUTERS = """
deployments:
  - {{name: bad, provider: openai, model: m-bad, api_base: "http://bad/v1", price: {{input: 1, output: 2}}}}
  - {{name: good, provider: openai, model: m-good, api_base: "http://good/v1", price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [bad, good]}}
routing: {{breaker: {{failures: 2, cooldown_s: 30}}}}
state: {{redis_url: "{url}", prefix: "{prefix}", redis_timeout_s: 0.3, shared_health: false}}
"""


async def test_two_routers_one_failing_deployment_is_tried_by_one_replica_only() -> None:
    """Two real `Router`s (each with its own SharedHealth, as `Router.start` makes one): after A's breaker for
    the failing deployment opens, B routes around it without a single call of its own to it."""
    from modelyard.config.loader import parse_config
    from modelyard.routing.router import Router
    from modelyard.schema.errors import ProviderError
    from tests.unit.routing.test_admission import GatedTransport, ask, through

    class Failing(GatedTransport):
        async def send(self, call: Any, timeouts: Any, adapter: Any) -> tuple[bytes, dict[str, str]]:
            if "//bad/" in call.url:
                self.calls["bad"] += 1
                raise ProviderError(ErrorKind.SERVER, "upstream failed", status=500)
            return await super().send(call, timeouts, adapter)

    prefix = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    routers: list[Router] = []
    shares: list[SharedHealth] = []
    transports: list[Failing] = []
    try:
        for _ in range(2):
            router = Router(parse_config(ROUTERS.format(url=REDIS_URL, prefix=prefix)), seed=1)
            await router.start()
            routers.append(router)
            transports.append(through(router, Failing()))  # type: ignore[arg-type]
            share = SharedHealth(router.health, REDIS_URL, prefix=prefix, sync_s=SYNC_S, timeout_s=0.3)
            await share.start()
            shares.append(share)
        a, b = routers
        for _ in range(2):
            await a.complete(*ask("chat"))  # bad fails, good answers
        assert transports[0].calls["bad"] == 2 and state(a.health, "bad") is BreakerState.OPEN
        delay = await until(lambda: state(b.health, "bad") is BreakerState.OPEN, 1.0)
        print(f"\nrouter B saw A's breaker open after {delay * 1000:.1f} ms")
        for _ in range(10):
            await b.complete(*ask("chat"))
        assert transports[1].calls["bad"] == 0 and transports[1].calls["good"] == 10
        assert shares[1].remote_opens == 1
    finally:
        for share in shares:
            await share.close()
        for router in routers:
            await router.close()
        client = aioredis.Redis.from_url(REDIS_URL)
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()
