"""The response cache in process (server/response_cache.py, the pipeline's hook, codecs/replay.py): what is
cached and served, the Redis calls on a miss and a hit counted (none on the request path of a miss or a local
hit, one GET for another replica's answer), Redis down as this replica's own cache, the replay's shapes read
back into the same answer, and what the key is made of."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.schema.chat import Usage
from modelyard.server.app import Gateway
from modelyard.server.codecs.replay import chat_from_sse, chat_replay, message_from_sse, message_replay
from modelyard.server.response_cache import (
    IGNORED_FIELDS,
    ResponseCache,
    build_response_cache,
    model_settings,
)
from modelyard.state.response_cache_store import MemoryCacheStore, RedisCacheStore
from modelyard.testing.process import free_port
from tests.unit.server.test_pipeline import Recorder, call, messages_body
from tests.unit.state.conftest import REDIS_URL, _reachable
from tests.unit.state.test_response_cache_store import counting_client, until, writes

CONFIG = """
deployments:
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", price: {input: 1, output: 2}}
  - {name: n, provider: anthropic, model: m-n, api_base: "http://n", price: {input: 1, output: 2}}
models:
  chat: {candidates: [b]}
  claude: {candidates: [b]}
  guarded: {candidates: [b], guardrails: [{check: pii, action: redact}]}
  screened-in: {candidates: [b], guardrails: [{check: pii, stage: input, action: redact}]}
  off: {candidates: [b], cache: {enabled: false}}
cache: {enabled: true, ttl_s: 60, max_entry_bytes: 4096}
"""


def gateway(cache: ResponseCache | None = None, config: str = CONFIG) -> tuple[Gateway, Recorder]:
    gw = Gateway(parse_config(config))
    router = gw.router
    transport = Recorder({})
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=dict(router.adapters),  # Messages translated (the scripted upstream speaks OpenAI chat)
        health=router.health,
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(base_s=0.001, max_backoff_s=0.002, retries=0),
        rng=random.Random(0),
    )
    gw.response_cache = cache or ResponseCache(MemoryCacheStore(100, 1 << 20))
    return gw, transport


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 0, **extra}


async def test_chat_miss_then_hit_json_and_stream() -> None:
    gw, transport = gateway()
    first = await call(gw, "POST", "/v1/chat/completions", chat_body())
    assert first.headers["x-modelyard-cache"] == "miss" and transport.calls == ["b"]
    second = await call(gw, "POST", "/v1/chat/completions", chat_body())
    assert second.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"]["cost"] == 0.0 and first.json()["usage"]["cost"] > 0
    streamed = await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert streamed.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    assert len(streamed.writes) == 1 and streamed.body.endswith(b"data: [DONE]\n\n")  # one write
    assert streamed.headers["content-type"].startswith("text/event-stream")
    stats = gw.response_cache.stats  # type: ignore[union-attr]
    assert (stats.hits, stats.misses, stats.stores) == (2, 1, 1)


async def test_a_streamed_answer_is_stored_and_served_as_json() -> None:
    gw, transport = gateway()
    live = await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert live.headers["x-modelyard-cache"] == "miss"
    hit = await call(gw, "POST", "/v1/chat/completions", chat_body())
    assert hit.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    assert hit.json()["choices"][0]["message"]["content"] == "hello"


async def test_messages_answer_is_cached_and_replayed() -> None:
    gw, transport = gateway()
    body = messages_body(temperature=0)
    first = await call(gw, "POST", "/v1/messages", body)
    second = await call(gw, "POST", "/v1/messages", body)
    assert second.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    assert second.headers["request-id"] == second.headers["x-request-id"]
    a, b = first.json(), second.json()
    assert b["content"] == a["content"] and b["id"] != a["id"]
    replay = await call(gw, "POST", "/v1/messages", {**body, "stream": True})
    assert replay.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    assert message_from_sse(replay.body) == {**a, "id": message_from_sse(replay.body)["id"]}  # type: ignore[index]


async def test_not_cached_output_guardrails_model_off_and_nondeterministic() -> None:
    gw, transport = gateway()
    for body in (chat_body(model="guarded"), chat_body(model="off"), chat_body(temperature=1), chat_body(n=2)):
        for _ in range(2):
            answer = await call(gw, "POST", "/v1/chat/completions", body)
            assert answer.status == 200 and "x-modelyard-cache" not in answer.headers
    assert len(transport.calls) == 8
    # Input-only guardrails do not stop caching (the redacted request is what is keyed and answered).
    await call(gw, "POST", "/v1/chat/completions", chat_body(model="screened-in"))
    again = await call(gw, "POST", "/v1/chat/completions", chat_body(model="screened-in"))
    assert again.headers["x-modelyard-cache"] == "hit"


async def test_a_hit_whose_deployment_left_the_config_is_a_miss() -> None:
    cache = ResponseCache(MemoryCacheStore(100, 1 << 20))
    gw, _ = gateway(cache)
    await call(gw, "POST", "/v1/chat/completions", chat_body())
    other, transport = gateway(cache, CONFIG.replace("name: b,", "name: b2,").replace("[b]", "[b2]"))
    answer = await call(other, "POST", "/v1/chat/completions", chat_body())
    assert answer.headers["x-modelyard-cache"] == "miss" and transport.calls == ["b"]
    assert cache.stats.hits == 0 and cache.stats.misses == 2


async def test_an_answer_over_max_entry_bytes_is_not_stored() -> None:
    gw, transport = gateway(config=CONFIG.replace("max_entry_bytes: 4096", "max_entry_bytes: 64"))
    for _ in range(2):
        assert (await call(gw, "POST", "/v1/chat/completions", chat_body())).headers["x-modelyard-cache"] == "miss"
    for _ in range(2):
        await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert len(transport.calls) == 4 and gw.response_cache.stats.too_large == 4  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- Redis calls, counted


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis.asyncio as aioredis

    prefix = f"rc-unit-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        async for name in client.scan_iter(f"{prefix}:*"):
            await client.delete(name)
        await client.aclose()


async def counted_cache(prefix: str) -> tuple[ResponseCache, RedisCacheStore, list[str]]:
    client, seen = counting_client(REDIS_URL)
    store = RedisCacheStore(REDIS_URL, prefix=prefix, timeout_s=0.5, client=client)
    cache = ResponseCache(store)
    await cache.start()
    await until(store.listening.is_set)
    seen.clear()
    return cache, store, seen


async def test_no_redis_call_on_a_miss_or_a_local_hit_one_get_on_another_replicas_hit(redis_prefix: str) -> None:
    cache, store, seen = await counted_cache(redis_prefix)
    other_cache, other, other_seen = await counted_cache(redis_prefix)
    try:
        gw, transport = gateway(cache)
        first = await call(gw, "POST", "/v1/chat/completions", chat_body())
        assert first.headers["x-modelyard-cache"] == "miss"
        assert seen == []  # neither the lookup nor the store waited on Redis
        hit = await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
        assert hit.headers["x-modelyard-cache"] == "hit" and seen == [] and transport.calls == ["b"]
        assert await store.flush()
        assert writes(seen) == ["EVALSHA"], seen  # written once, in the background
        # Another replica: the announcement put the key in its index, so its lookup is exactly one GET.
        digests = [n async for n in store.client.scan_iter(f"{store.prefix}*")]
        assert len(digests) == 1 and len(digests[0]) == len(redis_prefix) + 4 + 64  # hashed: 64 hex digits
        await until(lambda: len(other.index) == 1)
        gw2, transport2 = gateway(other_cache)
        shared = await call(gw2, "POST", "/v1/chat/completions", chat_body())
        assert shared.headers["x-modelyard-cache"] == "hit" and other_seen == ["GET"] and transport2.calls == []
        # Not cacheable: no Redis call at all.
        seen.clear()
        await call(gw, "POST", "/v1/chat/completions", chat_body(temperature=0.5))
        await store.flush()
        assert seen == []
    finally:
        await cache.close()
        await other_cache.close()


async def test_redis_down_falls_back_to_this_replicas_cache_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, seen = counting_client(f"redis://127.0.0.1:{free_port()}/0", 0.2)
    store = RedisCacheStore("unused", prefix="x", timeout_s=0.2, client=client)
    store.link.probe_min_s = store.link.probe_max_s = 30  # no probe during the test
    cache = ResponseCache(store)
    gw, transport = gateway(cache)
    with caplog.at_level(logging.WARNING, logger="modelyard.state"):
        await cache.start()
        await until(lambda: cache.unavailable)
        answers = [await call(gw, "POST", "/v1/chat/completions", chat_body()) for _ in range(3)]
    assert all(answer.status == 200 for answer in answers)
    assert [answer.headers["x-modelyard-cache"] for answer in answers] == ["miss", "hit", "hit"]
    assert transport.calls == ["b"]  # the local fallback served the repeats
    assert store.stats.redis_errors == 1 and store.stats.misses == 1 and store.stats.stores == 1
    assert all(name in ("SUBSCRIBE",) for name in seen), seen  # only the listener's one failed attempt
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    await cache.close()


# ----------------------------------------------------------------------------- replay shapes


def test_chat_replay_reads_back_into_the_same_answer_with_tool_calls_and_reasoning() -> None:
    usage = Usage(prompt=7, completion=3)
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    message = {"role": "assistant", "content": "ok", "reasoning_content": "think", "tool_calls": calls}
    body = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": usage.to_openai(),
    }
    sse = chat_replay(body, usage, wants_usage=True)
    assert chat_from_sse(sse, usage) == body
    frames = [msgspec.json.decode(f[6:]) for f in sse.split(b"\n\n") if f.startswith(b"data: {")]
    assert frames[-1]["choices"] == [] and frames[-1]["usage"]["cost"] == 0.0
    assert all(f["object"] == "chat.completion.chunk" and f["id"] == "chatcmpl-9" for f in frames)
    assert b'"usage"' not in chat_replay(body, usage, wants_usage=False)


def test_message_replay_reads_back_into_the_same_message_with_thinking_and_tools() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "hi"},
            {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"a": [1, 2]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 9},
    }
    sse = message_replay(message)
    assert message_from_sse(sse) == message
    names = [line[7:] for line in sse.decode().split("\n") if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]


def test_an_error_event_or_a_cut_stream_is_not_read_back() -> None:
    assert chat_from_sse(b'data: {"error": {"message": "x"}}\n\n', Usage()) is None
    assert (
        chat_from_sse(b'data: {"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n', Usage()) is None
    )
    start = b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m"}}\n\n'
    assert message_from_sse(start) is None
    assert message_from_sse(start + b'event: error\ndata: {"type": "error"}\n\n') is None


# ----------------------------------------------------------------------------- the key, the settings


async def keys_of(gw: Gateway, bodies: list[dict[str, Any]], headers: list[dict[str, str]] | None = None) -> list[str]:
    """The stored key each request leaves behind (each a new miss on a fresh cache)."""
    store = MemoryCacheStore(100, 1 << 20)
    gw.response_cache = ResponseCache(store)
    for i, body in enumerate(bodies):
        await call(gw, "POST", "/v1/chat/completions", body, (headers or [{}] * len(bodies))[i])
    return list(store._entries)


async def test_the_key_ignores_delivery_and_identity_fields_only() -> None:
    gw, _ = gateway()
    base = chat_body()
    same = [
        base,
        {**base, "stream": True, "stream_options": {"include_usage": True}},
        {**base, "user": "u1", "store": False, "prompt_cache_key": "p", "service_tier": "auto"},
        {**base, "modelyard": {"cache": True}},
        {k: base[k] for k in reversed(list(base))},  # another key order
    ]
    assert len(set(await keys_of(gw, same))) == 1
    assert {"stream", "stream_options", "user"} <= IGNORED_FIELDS
    different = [
        base,
        {**base, "max_tokens": 5},
        {**base, "messages": [{"role": "user", "content": "y"}]},
        {**base, "metadata": {"task": "code"}},
    ]
    assert len(set(await keys_of(gw, different))) == 4
    tagged = await keys_of(gw, [base, base], [{}, {"x-modelyard-strategy": "cost"}])
    assert len(set(tagged)) == 2


def test_model_settings_and_build() -> None:
    config = parse_config(
        CONFIG.replace(
            "off: {candidates: [b], cache: {enabled: false}}",
            "off: {candidates: [b], cache: {enabled: false, ttl_s: 5}}",
        )
    )
    assert model_settings(config, "chat") == (True, 60.0)
    assert model_settings(config, "off") == (False, 5.0)
    assert model_settings(config, "b") == (True, 60.0)  # a deployment name: the top-level settings
    assert isinstance(build_response_cache(config).store, MemoryCacheStore)  # type: ignore[union-attr]
    assert (
        build_response_cache(parse_config(CONFIG.replace("cache: {enabled: true,", "cache: {enabled: false,"))) is None
    )
    only_one = CONFIG.replace("cache: {enabled: true,", "cache: {enabled: false,").replace(
        "chat: {candidates: [b]}", "chat: {candidates: [b], cache: {enabled: true}}"
    )
    assert build_response_cache(parse_config(only_one)) is not None
    redis = CONFIG + 'state: {redis_url: "redis://127.0.0.1:1/0"}\n'
    assert isinstance(build_response_cache(parse_config(redis)).store, RedisCacheStore)  # type: ignore[union-attr]
    memory = redis.replace("max_entry_bytes: 4096}", "max_entry_bytes: 4096, backend: memory}")
    assert isinstance(build_response_cache(parse_config(memory)).store, MemoryCacheStore)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("control", "served"),
    [
        ("max-age=0", False),
        ("MAX-AGE = 0", False),
        ('max-age="0"', False),
        ('no-cache="set-cookie"', False),
        ("max-age=60", True),
        ("private", True),
    ],
)
async def test_cache_control_max_age_zero_and_field_lists_skip_the_lookup(control: str, served: bool) -> None:
    gw, transport = gateway()
    await call(gw, "POST", "/v1/chat/completions", chat_body())
    again = await call(gw, "POST", "/v1/chat/completions", chat_body(), {"cache-control": control})
    assert again.headers["x-modelyard-cache"] == ("hit" if served else "miss")
    assert len(transport.calls) == (1 if served else 2)


async def test_streams_kept_for_the_cache_share_one_budget_given_back_however_they_end() -> None:
    """Many long streams at once cannot hold more than the cache's recording budget: a stream that would go
    over it is not stored (counted), and every stream's bytes go back when it ends."""
    cache = ResponseCache(MemoryCacheStore(100, 1 << 20), recording_limit=60)
    gw, _ = gateway(cache)
    answer = await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert answer.headers["x-modelyard-cache"] == "miss" and cache.stats.too_large == 1 and cache.stats.stores == 0
    assert cache.recording == 0
    roomy = ResponseCache(MemoryCacheStore(100, 1 << 20), recording_limit=1 << 20)
    gw, _ = gateway(roomy)
    await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert roomy.stats.stores == 1 and roomy.recording == 0
