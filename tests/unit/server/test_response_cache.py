"""The response cache in process (server/response_cache.py, the pipeline's hook, codecs/replay.py): what is
cached and served, the Redis calls on a miss and a hit counted, Redis down as a miss, the replay's shapes
read back into the same answer, and what the key is made of."""

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


class Counting:
    """A redis-py client that records every command it is asked for."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.commands: list[str] = []
        self.connection_pool = client.connection_pool

    async def get(self, key: str) -> Any:
        self.commands.append("GET")
        return await self.client.get(key)

    async def set(self, key: str, value: bytes, px: int) -> Any:
        self.commands.append(f"SET PX {px}")
        return await self.client.set(key, value, px=px)

    async def ping(self) -> Any:
        self.commands.append("PING")
        return await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[Counting, str]]:
    if not _reachable("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis.asyncio as aioredis

    prefix = f"rc-unit-{uuid.uuid4().hex[:8]}"
    client = Counting(aioredis.Redis.from_url(REDIS_URL))
    try:
        yield client, prefix
    finally:
        async for name in client.client.scan_iter(f"{prefix}:*"):
            await client.client.delete(name)


async def test_one_get_on_a_miss_one_set_after_the_answer_and_one_get_on_a_hit(
    redis_client: tuple[Counting, str],
) -> None:
    client, prefix = redis_client
    cache = ResponseCache(RedisCacheStore(REDIS_URL, prefix=prefix, timeout_s=0.5, client=client))
    gw, transport = gateway(cache)
    await call(gw, "POST", "/v1/chat/completions", chat_body())
    assert client.commands == ["GET", "SET PX 60000"]
    client.commands.clear()
    hit = await call(gw, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert client.commands == ["GET"] and hit.headers["x-modelyard-cache"] == "hit" and transport.calls == ["b"]
    client.commands.clear()
    # Not cacheable: no Redis call at all.
    await call(gw, "POST", "/v1/chat/completions", chat_body(temperature=0.5))
    assert client.commands == []
    # The key is hashed: the prefix, `rc`, 64 hex digits.
    names = [name.decode() async for name in client.client.scan_iter(f"{prefix}:*")]
    assert len(names) == 1 and len(names[0]) == len(prefix) + 4 + 64


async def test_redis_down_is_a_miss_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    import redis.asyncio as aioredis

    client = Counting(aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2))
    store = RedisCacheStore("unused", prefix="x", timeout_s=0.2, client=client)
    store.link.probe_min_s = store.link.probe_max_s = 30  # no probe during the test
    gw, transport = gateway(ResponseCache(store))
    with caplog.at_level(logging.WARNING, logger="modelyard.state"):
        for _ in range(3):
            answer = await call(gw, "POST", "/v1/chat/completions", chat_body())
            assert answer.status == 200 and answer.headers["x-modelyard-cache"] == "miss"
    assert transport.calls == ["b", "b", "b"]
    assert client.commands == ["GET"]  # then nothing: neither a store nor a lookup while it is down
    assert store.stats.redis_errors == 1 and store.stats.misses == 3 and store.stats.stores == 0
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    await store.close()


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
