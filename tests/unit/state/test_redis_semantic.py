"""The semantic cache's Redis stream (state/redis_semantic.py): an entry written by one replica is delivered to
the others within about one round trip, a replica that starts later loads the recent entries, TTLs and bounds
hold, a replica never receives its own entries, and an outage is counted and recovered from.

The shared Redis on 6379 with a unique key per test; the outage tests use a private `redis-server` they kill.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from modelyard.state.redis_link import make_client
from modelyard.state.redis_semantic import SemanticStream, SharedEntry
from tests.redis_server import REDIS_SERVER, RedisServer

from .conftest import REDIS_URL, _reachable

pytestmark = pytest.mark.redis


class Replica:
    """One replica's end of the stream: what it was delivered, and when."""

    def __init__(self, url: str, key: str, **kw: Any) -> None:
        self.got: list[tuple[float, SharedEntry]] = []
        self.arrived = asyncio.Event()
        self.stream = SemanticStream(url, key=key, replica_id=uuid.uuid4().hex, deliver=self.deliver, **kw)

    async def deliver(self, entries: list[SharedEntry]) -> None:
        now = time.monotonic()
        self.got.extend((now, e) for e in entries)
        self.arrived.set()

    async def wait_for(self, n: int, limit_s: float = 3.0) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"{len(self.got)} of {n} entries arrived in {limit_s}s"
            await asyncio.sleep(0.002)


@pytest.fixture
async def shared() -> AsyncIterator[Callable[..., Any]]:
    """Replicas on the shared Redis, one stream key per test, deleted afterwards."""
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    key = f"modelyard_test_{uuid.uuid4().hex[:12]}:semcache"
    made: list[Replica] = []

    async def replica(start: bool = True, **kw: Any) -> Replica:
        r = Replica(REDIS_URL, key, timeout_s=0.5, **kw)
        made.append(r)
        if start:
            await r.stream.start(wait_s=2.0)
        return r

    replica.key = key  # type: ignore[attr-defined]
    try:
        yield replica
    finally:
        for r in made:
            await r.stream.close()
        client = make_client(REDIS_URL, 1.0)
        await client.delete(key)
        await client.aclose()


async def settled(stream: SemanticStream, limit_s: float = 3.0) -> None:
    """Until every queued store is written."""
    deadline = time.monotonic() + limit_s
    while stream._pending:
        assert time.monotonic() < deadline, "the stores were not written"
        await asyncio.sleep(0.005)


async def test_an_entry_reaches_the_other_replica_within_one_round_trip_never_its_writer(
    shared: Callable[..., Any],
) -> None:
    a, b = await shared(), await shared()
    delays = []
    for i in range(50):
        sent = time.monotonic()
        assert a.stream.publish(f"m\x00k{i}", b"\x00" * 16, b"answer", 60.0)
        await b.wait_for(i + 1)
        delays.append(b.got[-1][0] - sent)
    delays.sort()
    print(f"\npropagation over 50 entries: p50 {delays[25] * 1000:.2f} ms, max {delays[-1] * 1000:.2f} ms")
    assert delays[-1] < 0.25  # a blocking read wakes on the write: no polling interval in the way
    assert [e.ns for _, e in b.got] == [f"m\x00k{i}" for i in range(50)]  # in order, each once
    await asyncio.sleep(0.05)
    assert a.got == [] and a.stream.received == 0  # its own entries are already in its shelf
    assert a.stream.published == 50 and not a.stream.unavailable


async def test_a_replica_that_starts_later_loads_the_recent_entries_before_start_returns(
    shared: Callable[..., Any],
) -> None:
    a = await shared()
    for i in range(600):  # more than one read's batch (256)
        a.stream.publish(f"m\x00k{i}", b"v", b"x", 60.0)
    await settled(a.stream)
    late = await shared()  # start() returns once it has caught up
    assert len(late.got) == 600
    assert late.got[0][1].ns == "m\x00k0" and late.got[-1][1].ns == "m\x00k599"


async def test_entries_past_their_ttl_are_skipped_and_the_stream_key_expires(shared: Callable[..., Any]) -> None:
    a = await shared()
    a.stream.publish("m\x00k", b"v", b"x", 60.0)
    await settled(a.stream)
    client = make_client(REDIS_URL, 1.0)
    try:
        ttl_ms = await client.pttl(shared.key)  # type: ignore[attr-defined]
    finally:
        await client.aclose()
    assert 0 < ttl_ms <= 60_000  # the stream goes with its entries' TTL after the last write
    later = await shared(wall=lambda: time.time() + 61)  # a replica whose clock says the entry is 61 s old
    fresh = await shared()
    assert later.got == [] and later.stream.expired == 1
    assert len(fresh.got) == 1 and fresh.stream.expired == 0


async def test_the_stream_is_bounded_and_an_oversized_entry_is_not_shared(shared: Callable[..., Any]) -> None:
    a = await shared(max_len=10, max_entry_bytes=1024)
    for i in range(500):
        a.stream.publish(f"m\x00k{i}", b"v" * 16, b"x" * 64, 60.0)
    await settled(a.stream)
    client = make_client(REDIS_URL, 1.0)
    try:
        length = await client.xlen(shared.key)  # type: ignore[attr-defined]
        node = int((await client.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    finally:
        await client.aclose()
    assert length <= 10 + node  # `MAXLEN ~` trims whole nodes: never more than one node over the cap
    assert length < 500
    assert not a.stream.publish("m\x00big", b"v", b"x" * 2048, 60.0)
    assert a.stream.oversized == 1


async def test_garbage_in_the_stream_is_skipped_not_fatal(shared: Callable[..., Any]) -> None:
    b = await shared()
    client = make_client(REDIS_URL, 1.0)
    try:
        await client.xadd(shared.key, {b"e": b"\xc1not msgpack"})  # type: ignore[attr-defined]
        await client.xadd(shared.key, {b"other": b"x"})  # type: ignore[attr-defined]
        big = SharedEntry("x", "m\x00k", b"v", b"x" * 100_000, time.time(), 60.0)
        await client.xadd(shared.key, {b"e": msgspec.msgpack.encode(big)})  # type: ignore[attr-defined]
    finally:
        await client.aclose()
    a = await shared()
    a.stream.publish("m\x00k", b"v", b"x", 60.0)
    await b.wait_for(1)
    assert b.stream.malformed == 3 and [e.ns for _, e in b.got] == ["m\x00k"]  # the huge one too


# ---------------------------------------------------------------- outages (a private redis-server)

needs_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


async def wait_until(cond: Callable[[], bool], limit_s: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < limit_s, what
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@needs_server
async def test_redis_down_is_counted_stores_queue_bounded_and_flow_again_when_it_returns() -> None:
    with RedisServer() as redis:
        a = Replica(redis.url, "t:semcache", timeout_s=0.3, max_pending=100, block_s=0.5)
        b = Replica(redis.url, "t:semcache", timeout_s=0.3, block_s=0.5)
        await a.stream.start()
        await b.stream.start()
        try:
            a.stream.publish("m\x00before", b"v", b"x", 60.0)
            await b.wait_for(1)
            redis.kill()
            for i in range(250):  # an outage's stores: the newest 100 are kept for Redis's return
                assert a.stream.publish(f"m\x00during{i}", b"v", b"x", 60.0)
            noticed = await wait_until(lambda: a.stream.unavailable and b.stream.unavailable, 3.0, "not noticed")
            assert a.stream.outages == 1 and b.stream.outages == 1
            assert a.stream.dropped == 150
            redis.start()  # empty
            back = await wait_until(lambda: not a.stream.unavailable and not b.stream.unavailable, 3.0, "not back")
            await b.wait_for(101, limit_s=3.0)
            assert [e.ns for _, e in b.got[1:]] == [f"m\x00during{i}" for i in range(150, 250)]
            a.stream.publish("m\x00after", b"v", b"x", 60.0)
            await b.wait_for(102)
            print(f"\noutage noticed in {noticed * 1000:.0f} ms; both back {back * 1000:.0f} ms after the restart")
        finally:
            await a.stream.close()
            await b.stream.close()


@needs_server
async def test_a_replica_that_starts_while_redis_is_down_starts_at_once_and_joins_later() -> None:
    with RedisServer() as redis:
        redis.kill()
        a = Replica(redis.url, "t:semcache", timeout_s=0.3, block_s=0.5)
        b = Replica(redis.url, "t:semcache", timeout_s=0.3, block_s=0.5)
        started = time.monotonic()
        await a.stream.start(wait_s=5.0)
        assert time.monotonic() - started < 1.5  # not the whole wait: the outage settles the start
        assert a.stream.unavailable and a.stream.outages == 1
        try:
            redis.start()
            await b.stream.start()
            await wait_until(lambda: not a.stream.unavailable, 3.0, "a did not see Redis return")
            b.stream.publish("m\x00k", b"v", b"x", 60.0)
            await a.wait_for(1)
        finally:
            await a.stream.close()
            await b.stream.close()


async def test_close_ends_the_sync_even_when_it_lands_in_a_write(shared: Callable[..., Any]) -> None:
    """redis-py can swallow a cancellation inside a command (measured: the writer went back to waiting and
    close() hung); the loops stop on the closed flag too."""
    for _ in range(5):
        a = await shared()
        for i in range(3000):
            a.stream.publish(f"m\x00k{i}", b"v" * 1536, b"x" * 1700, 60.0)
            if i % 20 == 0:
                await asyncio.sleep(0)
        for _ in range(1_000_000):  # until the queue is empty: the last batch is in flight now
            if not a.stream._pending:
                break
            await asyncio.sleep(0)
        tasks = list(a.stream._tasks)
        started = time.monotonic()
        async with asyncio.timeout(3.0):
            await a.stream.close()
        assert all(task.done() for task in tasks)
        assert time.monotonic() - started < 0.4  # no second round of cancels (timeout_s) was needed


async def test_a_key_of_another_type_is_refused_without_counting_an_outage(shared: Callable[..., Any]) -> None:
    client = make_client(REDIS_URL, 1.0)
    try:
        await client.set(shared.key, b"not a stream")  # type: ignore[attr-defined]
        a = await shared()
        assert a.stream.publish("m\x00k", b"v", b"x", 60.0)
        for _ in range(200):
            if a.stream.dropped:
                break
            await asyncio.sleep(0.005)
        assert a.stream.dropped == 1 and a.stream.published == 0
        assert not a.stream.unavailable and a.stream.outages == 0  # Redis is up: no outage, no probe
        assert await client.get(shared.key) == b"not a stream"  # type: ignore[attr-defined]
    finally:
        await client.aclose()
