"""The response cache's backends (state/response_cache_store.py): the memory LRU's bounds and expiry; the
two-level Redis store with every Redis command it sends counted: a miss and an L1 hit send none, an L2 hit one
GET, a store leaves in the background and reaches another replica's key index within milliseconds (measured),
the index is loaded at start and honours expiry, the write queue is bounded, and with Redis killed L1 alone
serves (and stores) until Redis returns."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from modelyard.state.response_cache_store import (
    KeyIndex,
    MemoryCacheStore,
    RedisCacheStore,
    announcement,
    key_digest,
    read_announcement,
)
from modelyard.testing.process import free_port
from tests.redis_server import REDIS_SERVER, RedisServer
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


def test_key_index_is_bounded_drops_the_oldest_and_honours_expiry() -> None:
    clock = Clock()
    index = KeyIndex(2, clock=clock)
    a, b, c = (key_digest(x) for x in "abc")
    index.add(a, 10)
    index.add(b, 1)
    index.add(c, 10)  # over the bound: a, the oldest learned, goes
    assert a not in index and b in index and c in index and len(index) == 2
    clock.now += 1.5
    assert index.expiry(b) is None and len(index) == 1  # expired: dropped when read
    index.add(b"not a digest", 10)  # only 32-byte digests are kept
    assert len(index) == 1


def test_announcements_round_trip_and_garbage_is_ignored() -> None:
    records = [(key_digest("a"), 1500), (key_digest("b"), 60_000)]
    assert read_announcement(announcement(records)) == records
    assert read_announcement(b"garbage") == [] and read_announcement("text") == [] and read_announcement(b"") == []
    assert key_digest("ab" * 32) == bytes.fromhex("ab" * 32)  # a caller's hex SHA-256 is its own digest


# ----------------------------------------------------------------------------- Redis, every command counted


def counting_client(url: str, timeout_s: float = 0.5) -> tuple[Any, list[str]]:
    """A redis-py client like the gateway's whose connections record the name of every command they send
    (pipelined and pub/sub ones too; the handshake's CLIENT/HELLO are left out)."""
    import redis.asyncio as aioredis
    from redis.asyncio.connection import Connection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    seen: list[str] = []

    class Counted(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            if name.split()[0].upper() not in ("CLIENT", "HELLO"):
                seen.append(name.upper())
            return super().pack_command(*args)

    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        connection_class=Counted,
    )
    return client, seen


def writes(seen: list[str]) -> list[str]:
    """The commands of background writes, less the script's loading (once per Redis and script version, or
    after a restart): an EVALSHA answered NOSCRIPT, then SCRIPT LOAD, then the EVALSHA again."""
    names = list(seen)
    loads = [name for name in names if name.split()[0] == "SCRIPT"]  # "SCRIPT" or "SCRIPT LOAD" by redis-py version
    for load in loads:
        names.remove("EVALSHA")
        names.remove(load)
    return names


async def until(check: Callable[[], bool], timeout_s: float = 3.0) -> float:
    """Seconds until `check()` held (fails the test past `timeout_s`)."""
    start = time.perf_counter()
    while not check():
        assert time.perf_counter() - start < timeout_s, "not within the time allowed"
        await asyncio.sleep(0.0005)
    return time.perf_counter() - start


class Replicas:
    """Stores on one Redis under one prefix, each with its own counted client: replicas of one gateway."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.stores: list[tuple[RedisCacheStore, list[str]]] = []

    async def add(self, **options: Any) -> tuple[RedisCacheStore, list[str]]:
        client, seen = counting_client(self.url)
        store = RedisCacheStore(self.url, prefix=self.prefix, timeout_s=0.5, client=client, **options)
        store.link.probe_min_s = 0.02
        await store.start()
        await until(store.listening.is_set)
        self.stores.append((store, seen))
        return store, seen

    async def close(self) -> None:
        for store, _ in self.stores:
            await store.close()


@pytest.fixture
async def replicas() -> AsyncIterator[Replicas]:
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    prefix = f"rc-state-{uuid.uuid4().hex[:8]}"
    group = Replicas(REDIS_URL, prefix)
    try:
        yield group
    finally:
        await group.close()
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        async for name in client.scan_iter(f"{prefix}:*"):
            await client.delete(name)
        await client.aclose()


async def test_a_miss_and_an_l1_hit_send_no_command_and_a_store_leaves_in_the_background(
    replicas: Replicas,
) -> None:
    store, seen = await replicas.add()
    seen.clear()
    assert await store.get("k" * 64) is None
    assert seen == []  # a miss: not in L1, not in the index, so no Redis call at all
    assert await store.put("k" * 64, b"value", 60)
    assert await store.get("k" * 64) == b"value"
    assert seen == []  # the store is queued; the hit came from L1
    assert await store.flush()
    assert writes(seen) == ["EVALSHA"], seen  # the store, in the background: one script call
    ttl = await store.client.pttl(store.prefix + key_digest("k" * 64).hex())
    assert 59_000 < ttl <= 60_000
    score = await store.client.zscore(store.index_key, key_digest("k" * 64))
    assert score is not None and 0 < score - time.time() * 1000 <= 60_000  # in the index, scored by expiry
    seen.clear()
    assert await store.get("k" * 64) == b"value" and seen == []


async def test_another_replica_hits_with_exactly_one_get_milliseconds_after_the_store(replicas: Replicas) -> None:
    one, _ = await replicas.add()
    two, seen = await replicas.add()
    waits = []
    for i in range(20):
        key = uuid.uuid4().hex * 2
        started = time.perf_counter()
        await one.put(key, f"answer {i}".encode(), 60)
        await until(lambda key=key: key_digest(key) in two.index)  # type: ignore[misc]
        waits.append(time.perf_counter() - started)
        seen.clear()
        assert await two.get(key) == f"answer {i}".encode()
        assert seen == ["GET"]  # L2: one GET, because the index knows the key
        assert await two.get(key) == f"answer {i}".encode() and seen == ["GET"]  # now from L1
    print(
        f"\nannounced to another replica's index: median {statistics.median(waits) * 1000:.2f} ms, "
        f"max {max(waits) * 1000:.2f} ms"
    )
    assert statistics.median(waits) < 0.01
    assert two.stats.shared_hits == 20


async def test_a_starting_replica_loads_the_index_and_expiry_is_honoured(replicas: Replicas) -> None:
    one, _ = await replicas.add()
    for i in range(5):
        await one.put(f"{i}" * 64, b"v%d" % i, 60)
    await one.put("s" * 64, b"short", 0.2)
    assert await one.flush()
    late, seen = await replicas.add(max_entries=4)  # only the 4 that expire last
    assert len(late.index) == 4 and key_digest("s" * 64) not in late.index
    seen.clear()
    assert await late.get("4" * 64) == b"v4" and seen == ["GET"]
    # An entry learned with a short TTL leaves the index when it expires: then a miss with no call.
    other, seen = await replicas.add()
    assert key_digest("s" * 64) in other.index
    await asyncio.sleep(0.25)
    seen.clear()
    assert await other.get("s" * 64) is None and seen == []


async def test_the_write_queue_is_bounded_and_every_answer_stays_local(replicas: Replicas) -> None:
    store, _ = await replicas.add(queue_max=2)
    for i in range(5):  # no await yields here, so the writer has not run yet
        assert await store.put(f"{i}" * 64, b"v", 60)
    assert store.stats.dropped == 3
    assert all([await store.get(f"{i}" * 64) == b"v" for i in range(5)])
    assert await store.flush()
    names = [n async for n in store.client.scan_iter(f"{store.prefix}*")]
    assert len(names) == 2
    # Bounded in bytes too: values wait in the queue until written.
    small, _ = await replicas.add(queue_max_bytes=10)
    assert await small.put("a" * 64, b"x" * 6, 60) and await small.put("b" * 64, b"x" * 6, 60)
    assert small.stats.dropped == 1 and await small.get("b" * 64) == b"x" * 6


async def test_garbage_on_the_channel_and_under_the_index_key_is_ignored(replicas: Replicas) -> None:
    one, _ = await replicas.add()
    await one.client.publish(one.channel, b"not an announcement")
    await one.client.zadd(one.index_key, {b"short": time.time() * 1000 + 60_000})
    late, _ = await replicas.add()
    assert len(late.index) == 0 and not one.unavailable and late.listening.is_set()
    # The index key made something else: its ZADD is refused, counted, and the answer is still shared.
    await one.client.delete(one.index_key)
    await one.client.set(one.index_key, b"garbage")
    await one.put("k" * 64, b"v", 60)
    assert await one.flush()
    assert one.stats.redis_errors >= 1 and not one.unavailable
    await until(lambda: key_digest("k" * 64) in late.index)
    assert await late.get("k" * 64) == b"v"


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_killed_l1_serves_and_stores_unavailable_says_so_and_sharing_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with RedisServer() as server:
        group = Replicas(server.url, "rc-outage")
        try:
            one, _ = await group.add()
            two, two_seen = await group.add()
            await one.put("a" * 64, b"before", 60)
            await until(lambda: key_digest("a" * 64) in two.index)
            with caplog.at_level(logging.WARNING, logger="modelyard.state"):
                server.kill()
                await until(lambda: one.unavailable and two.unavailable)  # the listeners notice at once
                assert await one.get("a" * 64) == b"before"  # L1
                two_seen.clear()
                assert await two.get("a" * 64) is None and two_seen == []  # in Redis only: a miss, no call
                assert await two.put("b" * 64, b"during", 60)  # the local fallback: stored in L1 ...
                assert await two.get("b" * 64) == b"during"  # ... and served from it
                assert two_seen == [] and one.stats.redis_errors >= 1
                down = [r for r in caplog.records if "unreachable" in r.getMessage()]
                assert len(down) == 2  # once per store (per replica), not per call
                server.start()  # empty
                await until(lambda: not one.unavailable and not two.unavailable and two.listening.is_set())
            await one.put("c" * 64, b"after", 60)
            await until(lambda: key_digest("c" * 64) in two.index)
            two_seen.clear()
            assert await two.get("c" * 64) == b"after" and two_seen == ["GET"]
        finally:
            await group.close()


async def test_redis_unreachable_from_the_start_serves_from_l1_and_sends_nothing_more() -> None:
    client, seen = counting_client(f"redis://127.0.0.1:{free_port()}/0", 0.2)
    store = RedisCacheStore("unused", prefix="x", timeout_s=0.2, client=client)
    store.link.probe_min_s = store.link.probe_max_s = 30
    try:
        await store.start()
        await until(lambda: store.unavailable)  # the listener could not subscribe
        assert store.stats.redis_errors == 1
        calls = len(seen)
        assert await store.get("k") is None
        assert await store.put("k", b"v", 10)
        assert await store.get("k") == b"v"
        await asyncio.sleep(0.05)
        assert len(seen) == calls and store.stats.redis_errors == 1  # no call while it is known to be down
    finally:
        await store.close()
