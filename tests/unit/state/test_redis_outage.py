"""Counters that survive their store (issue #10, item 5): re-seeding whenever a budget is missing, the outage
policy (fail_closed / fail_open), settlements replayed after an outage, clamped amounts.

Redis here is a private `redis-server` on a free port (tests/redis_server.py), killed and restarted empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from modelyard.state.counters import MAX_TOKENS, Ask, MemoryCounters
from modelyard.state.outage import StateUnavailable
from modelyard.state.redis_counters import RedisCounters
from tests.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

BUDGET = 1_000_000
ESTIMATE = 100_000


def ask(
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens: int = 0,
    seed: bool = True,
    estimate: int = ESTIMATE,
    budget: int | None = BUDGET,
) -> Ask:
    return Ask("k", rpm, tpm, tokens, budget, 0, estimate, 3600, seed_required=seed)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def make(redis: RedisServer, policy: str = "fail_closed") -> RedisCounters:
    counters = RedisCounters(
        redis.url,
        prefix="t",
        on_unavailable=policy,  # type: ignore[arg-type]
        timeout_s=0.3,
    )
    await counters.start()
    return counters


@pytest.fixture
async def counters(redis: RedisServer) -> AsyncIterator[RedisCounters]:
    made = await make(redis)
    try:
        yield made
    finally:
        await made.close()


async def wait_back(counters: RedisCounters, limit_s: float = 2.0) -> float:
    start = time.monotonic()
    while counters.degraded:
        assert time.monotonic() - start < limit_s, "the counters did not see Redis come back"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_memory_counters_refuse_an_unseeded_budget_until_seeded() -> None:
    counters = MemoryCounters()
    assert (await counters.admit(ask())).reason == "unseeded"
    await counters.seed_budget("k", 0, 300_000, 3600)
    assert not counters.degraded
    assert (await counters.admit(ask())).ok
    assert await counters.budget_state("k", 0) == (300_000, ESTIMATE)


async def test_a_missing_budget_is_reported_unseeded_every_time_not_once(
    counters: RedisCounters, redis: RedisServer
) -> None:
    assert (await counters.admit(ask())).reason == "unseeded"
    await counters.seed_budget("k", 0, 500_000, 3600)
    first = await counters.admit(ask())
    assert first.ok and first.reservation is not None
    counters.settle(first.reservation, 50_000, 0)
    await counters.drain()
    assert await counters.budget_state("k", 0) == (550_000, 0)
    await counters._client.flushall()  # Redis lost everything (restart, eviction)
    assert (await counters.admit(ask())).reason == "unseeded"
    await counters.seed_budget("k", 0, 550_000, 3600)
    await counters.seed_budget("k", 0, 0, 3600)  # a second seed (another replica) does not reset it
    assert await counters.budget_state("k", 0) == (550_000, 0)


async def test_a_reseed_carries_the_reservations_in_flight(counters: RedisCounters) -> None:
    await counters.seed_budget("k", 0, 0, 3600)
    held = [await counters.admit(ask()) for _ in range(3)]
    assert all(v.ok for v in held)
    await counters._client.flushall()
    await counters.seed_budget("k", 0, 200_000, 3600)  # what the spend log says; the 3 are still running
    assert await counters.budget_state("k", 0) == (200_000, 3 * ESTIMATE)
    admitted = 0
    while (await counters.admit(ask())).ok:  # only what is left beside the 3 in flight
        admitted += 1
    assert admitted == (BUDGET - 200_000 - 3 * ESTIMATE) // ESTIMATE
    for verdict in held:
        assert verdict.reservation is not None
        counters.settle(verdict.reservation, 10_000, 0)
    await counters.drain()
    spent, reserved = await counters.budget_state("k", 0)
    assert spent == 230_000 and reserved == admitted * ESTIMATE  # each carried reservation given back once


async def test_a_reservation_from_a_lost_budget_adds_its_cost_but_not_a_reservation(
    counters: RedisCounters, redis: RedisServer
) -> None:
    await counters.seed_budget("k", 0, 0, 3600)
    old = await counters.admit(ask())
    assert old.reservation is not None
    await counters._client.flushall()
    await counters._client.hset("t:{k}:budget:0", mapping={"spent": 0, "reserved": 0, "epoch": "other"})
    counters.settle(old.reservation, 40_000, 0)  # seeded elsewhere without it: its cost still counts
    await counters.drain()
    assert await counters.budget_state("k", 0) == (40_000, 0)


async def test_fail_closed_refuses_quickly_during_an_outage_and_serves_within_2s_of_the_return(
    counters: RedisCounters, redis: RedisServer
) -> None:
    await counters.seed_budget("k", 0, 0, 3600)
    taken = await counters.admit(ask(rpm=100))
    assert taken.reservation is not None
    redis.kill()
    start = time.monotonic()
    with pytest.raises(StateUnavailable):
        await counters.admit(ask(rpm=100))
    assert counters.degraded
    counters.settle(taken.reservation, 70_000, 0)  # fails now: queued, replayed when Redis is back
    for _ in range(50):
        with pytest.raises(StateUnavailable):
            await counters.admit(ask(rpm=100))
    assert time.monotonic() - start < 1.0
    redis.start()  # empty
    assert await wait_back(counters) < 2.0
    # The replayed settlement found no budget (Redis restarted empty): the next seed counts it from the log.
    assert (await counters.admit(ask(rpm=100))).reason == "unseeded"
    assert not counters._pending


async def test_settlements_made_during_a_partition_are_replayed_into_the_surviving_budget(
    counters: RedisCounters, redis: RedisServer
) -> None:
    await counters.seed_budget("k", 0, 0, 3600)
    taken = [await counters.admit(ask()) for _ in range(2)]
    redis.pause()  # a partition: commands time out, the data survives
    try:
        with pytest.raises(StateUnavailable):
            await counters.admit(ask())
        for verdict in taken:
            assert verdict.reservation is not None
            counters.settle(verdict.reservation, 25_000, 0)
        await counters.drain()
    finally:
        redis.resume()
    await wait_back(counters)
    assert await counters.budget_state("k", 0) == (50_000, 0)  # nothing stranded, nothing doubled


async def test_a_settlement_whose_answer_was_lost_is_replayed_once_not_twice(
    counters: RedisCounters, redis: RedisServer
) -> None:
    await counters.seed_budget("k", 0, 0, 3600)
    taken = await counters.admit(ask())
    assert taken.reservation is not None
    redis.pause()
    try:
        counters.settle(taken.reservation, 25_000, 0)  # sent, then times out: queued for a replay
        await counters.drain()
        assert counters.degraded and len(counters._pending) == 1
    finally:
        redis.resume()  # the first send runs now, then the replay
    await wait_back(counters)
    assert await counters.budget_state("k", 0) == (25_000, 0)


async def test_fail_open_limits_each_replica_in_memory_until_redis_returns(redis: RedisServer) -> None:
    counters = await make(redis, "fail_open")
    try:
        await counters.seed_budget("k", 0, 0, 3600)
        assert (await counters.admit(ask(rpm=2))).ok
        redis.kill()
        verdict = await counters.admit(ask(rpm=2))
        assert verdict.reason == "unseeded"  # the local budget starts from the spend log too
        await counters.seed_budget("k", 0, 100_000, 3600)
        local = [await counters.admit(ask(rpm=2)) for _ in range(3)]
        assert [v.ok for v in local] == [True, True, False] and local[2].reason == "rpm"
        assert counters.degraded
        assert local[0].reservation is not None
        redis.start()
        await wait_back(counters)
        counters.settle(local[0].reservation, 30_000, 0)  # a local reservation settles locally ...
        await counters.drain()
        assert (await counters.admit(ask(rpm=2))).reason == "unseeded"  # ... and Redis, empty, is re-seeded
    finally:
        await counters.close()


async def test_huge_token_counts_and_estimates_are_clamped_not_overflowing(counters: RedisCounters) -> None:
    verdict = await counters.admit(ask(tpm=1000, tokens=10**20, budget=None))
    assert verdict.ok and verdict.reservation is not None and verdict.reservation.tokens == MAX_TOKENS
    assert not (await counters.admit(ask(tpm=1000, tokens=1, budget=None))).ok
    counters.settle(verdict.reservation, 10**30, 10**25)
    await counters.drain()
    await counters.seed_budget("k", 0, 0, 3600)
    refused = await counters.admit(ask(estimate=10**25))
    assert not refused.ok and refused.reason == "budget"


async def test_counters_start_while_redis_is_down(redis: RedisServer) -> None:
    redis.kill()
    counters = await make(redis)
    try:
        assert counters.degraded
        with pytest.raises(StateUnavailable):
            await counters.admit(ask())
        redis.start()
        await wait_back(counters)
        assert (await counters.admit(ask())).reason == "unseeded"
    finally:
        await counters.close()
