"""Deployment RPM/TPM buckets shared in Redis (state/redis_rates.py, issue #14 item 5): the same decisions as
the local GCRA (routing/limits.py) for the same sequence, one bucket for every replica, give-back and
correction, keys that expire and cannot be reshaped by a name, and an outage that raises within the timeout.

The shared tests use the Redis on 127.0.0.1:6379 (a unique prefix each, skipped when it is absent); the
outage tests a private redis-server (tests/redis_server.py) that they pause and kill.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from modelyard.config.model import Limits
from modelyard.routing.limits import DeploymentLimits
from modelyard.state.outage import StateUnavailable
from modelyard.state.redis_rates import SharedRates, key_name
from modelyard.testing.process import free_port
from tests.redis_server import REDIS_SERVER, RedisServer

REDIS_URL = os.environ.get("MODELYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not _reachable(), reason="Redis is not running on 127.0.0.1:6379")


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    made = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    yield made
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{made}:*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def rates(prefix: str) -> AsyncIterator[SharedRates]:
    made = SharedRates(REDIS_URL, prefix=prefix)
    yield made
    await made.close()


async def fits(rates: SharedRates, limits: Limits, n: int, tokens: int = 0, name: str = "d") -> int:
    return sum([await rates.take(name, limits, tokens) == 0.0 for _ in range(n)])


def local_fits(limits: Limits, n: int, tokens: int = 0) -> int:
    local, count = DeploymentLimits(), 0
    for _ in range(n):
        now = time.monotonic()
        if local.wait_s("d", limits, now, tokens) == 0.0:
            local.take("d", limits, now, tokens)
            count += 1
    return count


@needs_redis
@pytest.mark.parametrize(
    ("limits", "tokens", "expected"),
    [
        (Limits(rpm=600, burst_s=1), 0, 10),  # depth 1 s of 0.1 s requests
        (Limits(rpm=60, burst_s=60), 0, 60),  # a whole minute at once
        (Limits(rpm=5, burst_s=1), 0, 1),  # depth below one interval: one request always fits an idle bucket
        (Limits(tpm=1000, burst_s=60), 100, 10),  # 100 tokens of 0.06 s each into a 60 s deep bucket
        (Limits(rpm=600, tpm=1000, burst_s=1), 10, 1),  # the token bucket is the shorter one
        (Limits(tpm=1000, burst_s=1), 5000, 1),  # larger than the depth: only into a full bucket
    ],
)
async def test_the_count_that_fits_a_quick_run_is_the_local_buckets(
    rates: SharedRates, limits: Limits, tokens: int, expected: int
) -> None:
    assert local_fits(limits, 3 * expected + 5, tokens) == expected
    assert await fits(rates, limits, 3 * expected + 5, tokens) == expected


@needs_redis
async def test_the_wait_is_the_local_one(rates: SharedRates) -> None:
    limits = Limits(rpm=600, tpm=6000, burst_s=1)
    local = DeploymentLimits()
    lags: list[float] = []
    for _ in range(10):
        now = time.monotonic()
        local.take("d", limits, now, 10)
        assert await rates.take("d", limits, 10) == 0.0
        lags.append(time.monotonic() - now)
    before = time.monotonic()
    shared = await rates.take("d", limits, 10)
    after = time.monotonic()
    # Redis runs each take a little after the local one (its round trip, and on a busy machine milliseconds
    # more): the shared wait is the local one give or take those lags (a fixed 10 ms failed under load).
    slack = max(lags) + (after - before) + 0.002
    assert shared == pytest.approx(local.wait_s("d", limits, before, 10), abs=slack)
    assert 0 < shared <= 0.1  # the request bucket: the oldest of ten 0.1 s requests to drain
    which = (await rates.take_or_wait("d", limits, 500))[1]
    assert which == "tpm"  # 500 tokens of 0.01 s need 5 s more than the depth
    await asyncio.sleep(shared + 0.005)
    assert await rates.take("d", limits, 10) == 0.0


@needs_redis
async def test_a_request_larger_than_the_depth_waits_for_a_full_bucket(rates: SharedRates) -> None:
    limits = Limits(tpm=600, burst_s=1)  # 0.1 s a token, depth 1 s
    local, now = DeploymentLimits(), time.monotonic()
    local.take("d", limits, now, 50)
    assert await rates.take("d", limits, 50) == 0.0  # a full bucket takes it, 5 s of debt
    wait = await rates.take("d", limits, 50)
    assert wait == pytest.approx(local.wait_s("d", limits, now, 50), abs=0.01)
    assert 4.99 < wait <= 5.0  # until the debt is paid off, not 5 s beyond the depth
    assert 4.09 < await rates.take("d", limits, 1) <= 4.1  # a small one: once it fits within the depth


@needs_redis
async def test_a_request_one_bucket_refuses_takes_nothing_from_the_other(rates: SharedRates) -> None:
    limits = Limits(rpm=600, tpm=1000, burst_s=1)  # depth 1 s: 16 tokens, or 10 requests
    assert await rates.take("d", limits, 16) == 0.0
    assert await rates.take("d", limits, 16) > 0.0  # tokens short, nine requests left
    assert await fits(rates, limits, 20, tokens=0) == 9


@needs_redis
async def test_two_replicas_share_one_bucket(prefix: str) -> None:
    limits = Limits(rpm=600, burst_s=1)
    replicas = [SharedRates(REDIS_URL, prefix=prefix), SharedRates(REDIS_URL, prefix=prefix)]
    try:
        start = time.monotonic()
        waits = await asyncio.gather(*(replicas[i % 2].take("d", limits, 0) for i in range(100)))
        refilled = (time.monotonic() - start) / 0.1
    finally:
        for replica in replicas:
            await replica.close()
    taken = sum(wait == 0.0 for wait in waits)
    assert 10 <= taken <= 10 + refilled + 1  # one bucket of 10 (+ what refilled meanwhile), not 10 per replica
    assert refilled < 5


@needs_redis
async def test_a_reserve_keeps_the_last_of_the_bucket_for_higher_classes(rates: SharedRates) -> None:
    limits = Limits(rpm=600, burst_s=1)  # 10 requests deep, one every 0.1 s
    for _ in range(8):
        assert await rates.take("d", limits, 0) == 0.0
    # Two left: a request that must leave 0.2 s (two intervals) to higher classes does not fit, and waits
    # about one interval more than the plain request behind it would; a plain request still fits.
    assert await rates.take("d", limits, 0, reserve_s=0.2) > 0.0
    assert await rates.take("d", limits, 0) == 0.0
    assert await rates.take("d", limits, 0, reserve_s=0.1) > 0.0
    assert await rates.take("d", limits, 0) == 0.0
    assert await rates.take("d", limits, 0) > 0.0  # now it is empty for everyone


@needs_redis
async def test_give_back_and_correct_move_the_bucket(rates: SharedRates) -> None:
    limits = Limits(rpm=600, tpm=1000, burst_s=1)
    assert await fits(rates, limits, 10, tokens=1) == 10
    assert await rates.take("d", limits, 1) > 0.0
    await rates.give_back("d", limits, 1)
    assert await rates.take("d", limits, 1) == 0.0  # the given-back request's room
    tokens = Limits(tpm=600, burst_s=1)  # 10 tokens of 0.1 s
    assert await rates.take("t", tokens, 5) == 0.0
    await rates.correct("t", tokens, 5)  # it used 10
    assert await rates.take("t", tokens, 1) > 0.0
    await rates.correct("t", tokens, -5)  # it used 5 after all
    assert await rates.take("t", tokens, 5) == 0.0


@needs_redis
async def test_a_positive_correction_on_an_expired_bucket_is_charged(rates: SharedRates, prefix: str) -> None:
    limits = Limits(tpm=600, burst_s=1)
    await rates.correct("d", limits, 30)  # 3 s charged onto an expired bucket: tat = now - depth + 3 s
    wait = await rates.take("d", limits, 1)
    assert 1.05 < wait <= 1.1  # backlog 2 s + 0.1 s - depth 1 s
    await rates.give_back("fresh", limits, 100)  # nothing to give back to: no key, no credit
    assert await fits(rates, limits, 20, tokens=1, name="fresh") == 10


@needs_redis
async def test_keys_expire_once_the_bucket_is_full_again(rates: SharedRates, prefix: str) -> None:
    limits = Limits(rpm=600, tpm=6000, burst_s=1)
    assert await fits(rates, limits, 5, tokens=10) == 5
    keys = sorted([key.decode() async for key in rates._client.scan_iter(match=f"{prefix}:*")])
    assert keys == [f"{prefix}:rate:{{d}}:r:600:1.0", f"{prefix}:rate:{{d}}:t:6000:1.0"]
    for key in keys:
        ttl = await rates._client.pttl(key)
        assert 1400 <= ttl <= 1500  # backlog 0.5 s + depth 1 s
    await rates.give_back("d", limits, 10)
    assert 1300 <= await rates._client.pttl(keys[0]) <= 1400
    for _ in range(15):  # tat a depth in the past: the bucket is full, the key gone (not kept for nothing)
        await rates.give_back("d", limits, 10)
    assert [key async for key in rates._client.scan_iter(match=f"{prefix}:*")] == []


@needs_redis
async def test_new_limits_start_a_new_bucket(rates: SharedRates) -> None:
    assert await fits(rates, Limits(rpm=600, burst_s=1), 20) == 10
    assert await fits(rates, Limits(rpm=1200, burst_s=1), 30) == 20  # a reload: its own, full bucket
    assert await fits(rates, Limits(rpm=600, burst_s=1), 5) == 0  # the old one is still the old one


@needs_redis
async def test_no_limits_no_redis_call() -> None:
    rates = SharedRates("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.1)
    try:
        assert await rates.take("d", Limits(max_concurrency=3), 100) == 0.0
        await rates.give_back("d", Limits(), 100)
        await rates.correct("d", Limits(rpm=5), 100)  # no token bucket to correct
    finally:
        await rates.close()


def test_names_cannot_reshape_a_key() -> None:
    assert key_name("openai/gpt-4o-mini.eu") == "openai/gpt-4o-mini.eu"
    assert key_name("a}:r:1{b c") == "a%7D%3Ar%3A1%7Bb%20c"
    assert key_name("é") == "%C3%A9"
    long_a, long_b = key_name("x" * 300 + "a"), key_name("x" * 300 + "b")
    assert len(long_a) == len(long_b) == 100
    assert long_a != long_b


@needs_redis
async def test_names_with_braces_keep_one_hash_tag(rates: SharedRates, prefix: str) -> None:
    limits = Limits(rpm=600, tpm=6000, burst_s=1)
    assert await rates.take("a}{b", limits, 1) == 0.0
    keys = sorted([key.decode() async for key in rates._client.scan_iter(match=f"{prefix}:*")])
    assert keys == [f"{prefix}:rate:{{a%7D%7Bb}}:r:600:1.0", f"{prefix}:rate:{{a%7D%7Bb}}:t:6000:1.0"]


async def test_a_closed_port_raises_the_outage_within_the_timeout() -> None:
    rates = SharedRates(f"redis://127.0.0.1:{free_port()}/0", prefix="x", timeout_s=0.3)
    try:
        start = time.monotonic()
        with pytest.raises(StateUnavailable):
            await rates.take("d", Limits(rpm=10), 1)
        assert time.monotonic() - start < 0.3
        assert rates.degraded and rates.outages == 1
        start = time.monotonic()
        for _ in range(100):  # meanwhile: at once, without a connection attempt each
            with pytest.raises(StateUnavailable):
                await rates.take("d", Limits(rpm=10), 1)
        with pytest.raises(StateUnavailable):
            await rates.give_back("d", Limits(rpm=10), 1)
        assert time.monotonic() - start < 0.05
    finally:
        await rates.close()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_hung_redis_raises_within_the_timeout_and_is_used_again_once_back() -> None:
    limits = Limits(rpm=600, burst_s=1)
    with RedisServer() as server:
        rates = SharedRates(server.url, prefix="x", timeout_s=0.3, probe_max_s=0.05)
        try:
            assert await rates.take("d", limits, 0) == 0.0
            server.pause()
            start = time.monotonic()
            with pytest.raises(StateUnavailable):
                await rates.take("d", limits, 0)
            assert 0.25 < time.monotonic() - start < 0.45
            server.resume()
            deadline = time.monotonic() + 3
            while rates.degraded:
                assert time.monotonic() < deadline, "the rates did not see Redis come back"
                await asyncio.sleep(0.01)
            assert await fits(rates, limits, 20) == 9  # the same bucket as before the pause
            server.kill()
            server.start()  # empty, without the cached script: redis-py reconnects once, NOSCRIPT loads it again
            assert await fits(rates, limits, 20) == 10
            assert not rates.degraded
        finally:
            await rates.close()
