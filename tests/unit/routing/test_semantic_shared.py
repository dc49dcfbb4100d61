"""The semantic cache shared between replicas (issue #15, item 2): two `Intelligence` objects (two replicas,
the real MiniLM) on the shared Redis. A store on one is a hit on the other within about one round trip, with the
other replica's own Deployment; an entry naming a deployment a replica lacks is skipped; a replica does not
insert its own entries twice; a lookup makes no Redis call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("numpy")

from modelyard.config.loader import parse_config
from modelyard.routing.embeddings import EmbeddingUnavailable
from modelyard.routing.features import RequestFeatures
from modelyard.routing.intelligence import Intelligence, IntelligenceUnavailable
from modelyard.schema.chat import Usage
from modelyard.state.redis_link import make_client
from tests.redis_server import REDIS_SERVER, RedisServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REDIS_URL = os.environ.get("MODELYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
CONFIG = """
deployments:
  - {name: a, provider: openai, model: model-a}
  - {name: b, provider: openai, model: model-b}
models:
  chat: {candidates: [a, b], semantic_cache: {threshold: 0.9, ttl_s: 600}}
"""
ONLY_A = """
deployments:
  - {name: a, provider: openai, model: model-a}
models:
  chat: {candidates: [a], semantic_cache: {threshold: 0.9, ttl_s: 600}}
"""
NS = "chat\x00key-1"
PROMPT = "What is the capital of France?"


def _reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., Any]]:
    """Started replicas sharing one Redis prefix (unique per test, deleted afterwards)."""
    if not _reachable():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    prefix = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    made: list[Intelligence] = []

    async def replica(config: str = CONFIG) -> Intelligence:
        intelligence = Intelligence.from_config(parse_config(config))
        try:
            await asyncio.to_thread(intelligence.start)
        except (IntelligenceUnavailable, EmbeddingUnavailable) as exc:
            pytest.skip(str(exc))
        made.append(intelligence)
        await intelligence.start_sharing(REDIS_URL, prefix, 0.5)
        return intelligence

    try:
        yield replica
    finally:
        for intelligence in made:
            await intelligence.close_sharing()
            intelligence.close()
        client = make_client(REDIS_URL, 1.0)
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


def features(text: str = PROMPT) -> RequestFeatures:
    return RequestFeatures(prompt_text=text, task="chat")


def answer_of(replica: Intelligence, dep: str) -> tuple[dict[str, Any], Any, Usage]:
    deployment = next(d for d in replica.config.deployments if d.name == dep)
    body = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}
    return body, deployment, Usage(prompt=12, completion=3)


async def first_hit(replica: Intelligence, text: str, limit_s: float = 3.0) -> tuple[Any, float]:
    start = time.monotonic()
    while True:
        insight = await replica.analyse("chat", features(text), NS)
        if insight.cached is not None:
            return insight.cached, time.monotonic() - start
        assert time.monotonic() - start < limit_s, "the other replica's entry never became a hit"
        await asyncio.sleep(0.001)


@pytest.mark.redis
async def test_a_store_on_one_replica_is_a_hit_on_the_other_with_its_own_deployment(
    replicas: Callable[..., Any],
) -> None:
    one, two = await replicas(), await replicas()
    miss = await one.analyse("chat", features(), NS)
    assert miss.cached is None
    assert (await two.analyse("chat", features(), NS)).cached is None
    sent = time.monotonic()
    one.remember(NS, miss, answer_of(one, "b"))
    (body, dep, usage), _ = await first_hit(two, "what's the capital of france")  # a similar prompt
    took = time.monotonic() - sent
    print(f"\nstore on replica 1 -> hit on replica 2: {took * 1000:.1f} ms (incl. one embedding per try)")
    assert took < 0.5
    assert body["choices"][0]["message"]["content"] == "Paris."
    assert dep is next(d for d in two.config.deployments if d.name == "b")  # resolved by name, its own
    assert usage == Usage(prompt=12, completion=3)
    assert two.sharing is not None and two.sharing.received == 1 and not two.sharing.unavailable
    # Another key's namespace never sees it, on either replica.
    assert (await two.analyse("chat", features(), "chat\x00key-2")).cached is None


@pytest.mark.redis
async def test_a_replica_inserts_its_own_entries_once_and_skips_an_unknown_deployment(
    replicas: Callable[..., Any],
) -> None:
    one, two, only_a = await replicas(), await replicas(), await replicas(ONLY_A)
    miss = await one.analyse("chat", features(), NS)
    one.remember(NS, miss, answer_of(one, "b"))
    await first_hit(two, PROMPT)
    assert one.sharing is not None and only_a.sharing is not None
    deadline = time.monotonic() + 3
    while only_a.sharing.received < 1 or one.sharing.last_id == b"0-0":
        assert time.monotonic() < deadline, "the entry did not reach every reader"
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # any insert still on the embedding thread
    assert one.cache is not None and len(one.cache) == 1  # its own entry, read back from the stream: not added
    assert one.sharing.received == 0
    assert only_a.shared_skipped == 1  # names deployment b, which this replica does not have
    assert only_a.cache is not None and len(only_a.cache) == 0
    assert (await only_a.analyse("chat", features(), NS)).cached is None


@pytest.mark.redis
async def test_a_replica_started_later_has_the_earlier_entries_when_start_sharing_returns(
    replicas: Callable[..., Any],
) -> None:
    one = await replicas()
    miss = await one.analyse("chat", features(), NS)
    one.remember(NS, miss, answer_of(one, "a"))
    assert one.sharing is not None
    deadline = time.monotonic() + 3
    while one.sharing.published < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    late = await replicas()
    assert (await late.analyse("chat", features(), NS)).cached is not None  # no wait: loaded at start


@pytest.mark.redis
async def test_a_lookup_makes_no_redis_call(replicas: Callable[..., Any]) -> None:
    one, two = await replicas(), await replicas()
    miss = await one.analyse("chat", features(), NS)
    one.remember(NS, miss, answer_of(one, "a"))
    await first_hit(two, PROMPT)
    assert two.sharing is not None
    calls = 0
    for client in (two.sharing._client, two.sharing._reader):  # every command takes a pooled connection
        pool = client.connection_pool
        original = pool.get_connection

        async def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await _original(*args, **kwargs)

        pool.get_connection = counting
    start = time.monotonic()
    hits = 0
    for i in range(100):
        hits += (await two.analyse("chat", features(PROMPT), NS)).cached is not None
        assert (await two.analyse("chat", features(f"tell me a story number {i}"), NS)).cached is None
    window = time.monotonic() - start
    assert hits == 100
    # The reader's blocking XREAD is re-issued once per idle block_s; 200 lookups call nothing themselves.
    assert calls <= window / two.sharing.block_s + 1, f"{calls} Redis calls during 200 lookups"


def test_an_entry_from_another_replica_keeps_its_own_expiry_and_a_wrong_size_changes_nothing() -> None:
    import numpy as np

    from modelyard.routing.semantic import SemanticCache

    now = [1000.0]
    cache: SemanticCache[str] = SemanticCache(threshold=0.9, max_entries=1, ttl_s=60.0, clock=lambda: now[0])
    v = np.array([1.0, 0.0, 0.0], np.float32)
    assert not cache.store("ns", v, "too old", age_s=60.0)  # already past the TTL where it was stored
    assert cache.store("ns", v, "fifty seconds old", age_s=50.0)
    now[0] += 9
    assert cache.lookup("ns", v) == "fifty seconds old"
    now[0] += 2  # 61 s after the other replica stored it
    assert cache.lookup("ns", v) is None
    assert cache.store("ns", v, "fresh")
    with pytest.raises(ValueError):
        cache.store("ns", np.ones(4, np.float32), "another embedding space")
    assert cache.lookup("ns", v) == "fresh"  # nothing evicted for the refused entry


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_down_the_cache_serves_locally_counts_the_outage_and_shares_again_when_it_returns() -> None:
    with RedisServer() as redis:
        made: list[Intelligence] = []
        try:
            for _ in range(2):
                intelligence = Intelligence.from_config(parse_config(CONFIG))
                try:
                    await asyncio.to_thread(intelligence.start)
                except (IntelligenceUnavailable, EmbeddingUnavailable) as exc:
                    pytest.skip(str(exc))
                made.append(intelligence)
                await intelligence.start_sharing(redis.url, "t", 0.3)
            one, two = made
            assert one.sharing is not None and two.sharing is not None
            redis.kill()
            miss = await one.analyse("chat", features(), NS)
            one.remember(NS, miss, answer_of(one, "a"))  # no error, no wait
            assert (await one.analyse("chat", features(), NS)).cached is not None  # the local cache serves
            deadline = time.monotonic() + 3
            while not (one.sharing.unavailable and two.sharing.unavailable):
                assert time.monotonic() < deadline, "the outage was not noticed"
                await asyncio.sleep(0.01)
            assert one.sharing.outages == 1 and two.sharing.outages == 1
            assert (await two.analyse("chat", features(), NS)).cached is None
            redis.start()  # empty: the store made during the outage is written once Redis is back
            _, took = await first_hit(two, PROMPT, limit_s=5.0)
            assert not one.sharing.unavailable and not two.sharing.unavailable
            print(f"\nafter Redis returned, the outage's store was a hit on replica 2 in {took * 1000:.0f} ms")
        finally:
            for intelligence in made:
                await intelligence.close_sharing()
                intelligence.close()


def test_a_vector_with_nan_is_refused_not_a_hit_for_every_prompt() -> None:
    import numpy as np

    from modelyard.routing.semantic import SemanticCache

    cache: SemanticCache[str] = SemanticCache(threshold=0.95, ttl_s=None)
    cache.store("ns", np.array([1.0, 0.0], np.float32), "honest")
    with pytest.raises(ValueError):
        cache.store("ns", np.array([np.nan, 0.0], np.float32), "poison")
    with pytest.raises(ValueError):
        cache.store("ns", np.array([np.inf, 0.0], np.float32), "poison")
    assert cache.lookup("ns", np.array([0.0, 1.0], np.float32)) is None
    assert cache.lookup("ns", np.array([1.0, 0.0], np.float32)) == "honest"


@pytest.mark.redis
async def test_a_poisoned_entry_in_the_stream_is_skipped_and_the_next_one_inserted(
    replicas: Callable[..., Any],
) -> None:
    import msgspec
    import numpy as np

    from modelyard.routing.intelligence import SharedAnswer
    from modelyard.state.redis_semantic import FIELD, SharedEntry

    two = await replicas()
    assert two.sharing is not None
    answer = msgspec.msgpack.encode(SharedAnswer({"choices": []}, "a", Usage()))
    nan = np.full(384, np.nan, np.float32).tobytes()
    good = np.zeros(384, np.float32)
    good[0] = 1.0
    client = make_client(REDIS_URL, 1.0)
    try:
        for vector in (nan, good.tobytes()):
            entry = SharedEntry("another replica", NS, vector, answer, time.time(), 60.0, "Tell me a joke")
            await client.xadd(two.sharing.key, {FIELD: msgspec.msgpack.encode(entry)})
    finally:
        await client.aclose()
    deadline = time.monotonic() + 3
    while two.sharing.received < 2 or two.cache is None or len(two.cache) < 1:
        assert time.monotonic() < deadline, "the entries were not read"
        await asyncio.sleep(0.005)
    assert two.shared_skipped == 1 and len(two.cache) == 1
    assert (await two.analyse("chat", features(), NS)).cached is None  # the NaN entry is no hit for any prompt


@pytest.mark.redis
async def test_an_entry_written_before_the_guard_is_never_inserted_so_never_a_hit(
    replicas: Callable[..., Any],
) -> None:
    """An old replica's entry (the layout without the prompt) cannot be checked by the precision guard."""
    import msgspec

    from modelyard.routing.intelligence import SharedAnswer, np_float32_bytes
    from modelyard.state.redis_semantic import FIELD

    two = await replicas()
    assert two.sharing is not None and two._full is not None
    answer = msgspec.msgpack.encode(SharedAnswer({"choices": []}, "a", Usage()))
    vector = np_float32_bytes(two._full.embed_one(PROMPT))  # the very prompt: a hit if it were inserted
    old_layout = ["old replica", NS, vector, answer, time.time(), 60.0]
    client = make_client(REDIS_URL, 1.0)
    try:
        await client.xadd(two.sharing.key, {FIELD: msgspec.msgpack.encode(old_layout)})
    finally:
        await client.aclose()
    deadline = time.monotonic() + 3
    while two.sharing.received < 1 or two.shared_skipped < 1:
        assert time.monotonic() < deadline, "the entry was not read"
        await asyncio.sleep(0.005)
    assert two.cache is not None and len(two.cache) == 0
    assert (await two.analyse("chat", features(), NS)).cached is None
