"""The response cache's backends (state/response_cache_store.py): the memory LRU's bounds and expiry, Redis
values with their TTL, and an outage as misses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from modelyard.state.response_cache_store import MemoryCacheStore, RedisCacheStore
from modelyard.testing.process import free_port
from tests.unit.state.conftest import REDIS_URL, _reachable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_entries_bound_drops_the_least_recently_used() -> None:
    store = MemoryCacheStore(max_entries=2, max_bytes=1 << 20)
    await store.put("a", b"1", 60)
    await store.put("b", b"2", 60)
    assert await store.get("a") == b"1"  # a is now the most recently used
    await store.put("c", b"3", 60)
    assert await store.get("b") is None and await store.get("a") == b"1" and await store.get("c") == b"3"
    assert len(store) == 2 and store.stats.evictions == 1


async def test_memory_bytes_bound_counts_keys_and_values() -> None:
    store = MemoryCacheStore(max_entries=100, max_bytes=30)
    await store.put("k1", b"x" * 10, 60)  # 12 bytes
    await store.put("k2", b"x" * 10, 60)  # 24
    assert store.stats.bytes == 24
    await store.put("k3", b"x" * 10, 60)  # 36 > 30: k1 goes
    assert await store.get("k1") is None and store.stats.bytes == 24 and store.stats.evictions == 1
    assert not await store.put("huge", b"x" * 40, 60)  # larger than the whole cache: not kept, nothing evicted
    assert len(store) == 2
    await store.put("k2", b"y", 60)  # replacing an entry frees its old bytes
    assert store.stats.bytes == 12 + 3 and await store.get("k2") == b"y"


async def test_memory_entries_expire_and_expired_ones_are_not_evictions() -> None:
    clock = Clock()
    store = MemoryCacheStore(max_entries=1, max_bytes=1 << 20, clock=clock)
    await store.put("a", b"1", 5)
    clock.now += 4.9
    assert await store.get("a") == b"1"
    clock.now += 0.2
    assert await store.get("a") is None and len(store) == 0 and store.stats.bytes == 0
    await store.put("b", b"1", 1)
    clock.now += 2
    await store.put("c", b"1", 1)  # pushes out b, which had expired: not an eviction
    assert store.stats.evictions == 0


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisCacheStore]:
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    prefix = f"rc-state-{uuid.uuid4().hex[:8]}"
    store = RedisCacheStore(REDIS_URL, prefix=prefix, timeout_s=0.5)
    try:
        yield store
    finally:
        async for name in store.client.scan_iter(f"{prefix}:*"):
            await store.client.delete(name)
        await store.close()


async def test_redis_values_carry_their_ttl(redis_store: RedisCacheStore) -> None:
    assert await redis_store.get("k") is None
    assert await redis_store.put("k", b"value", 0.2)
    assert await redis_store.get("k") == b"value"
    ttl = await redis_store.client.pttl(redis_store.prefix + "k")
    assert 0 < ttl <= 200
    await asyncio.sleep(0.3)
    assert await redis_store.get("k") is None
    assert redis_store.stats.bytes_written == 5 and redis_store.stats.redis_errors == 0


async def test_redis_unreachable_is_a_miss_and_no_store_then_no_calls() -> None:
    store = RedisCacheStore(f"redis://127.0.0.1:{free_port()}/0", prefix="x", timeout_s=0.2)
    store.link.probe_min_s = store.link.probe_max_s = 30
    try:
        assert await store.get("k") is None
        assert not store.link.available and store.stats.redis_errors == 1
        assert not await store.put("k", b"v", 10)
        assert await store.get("k") is None
        assert store.stats.redis_errors == 1  # no call was made while it is known to be down
    finally:
        await store.close()
