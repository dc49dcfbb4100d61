"""The exact-match response cache (issue #15 item 2) against the real gateway on loopback, over the simulator,
read with the official openai and anthropic SDKs: a hit is the same answer at no cost and no upstream call,
JSON or replayed as a stream the SDKs parse like a live one; key A's answers never reach key B; Cache-Control,
determinism and opt-in decide what is cached; the spend row of a hit; two gateways sharing a Redis cache.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.unit.state.conftest import REDIS_URL, _reachable

MASTER = "sk-master-cache-test"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
#: The anthropic SDK of this era has no `temperature` argument; the Messages API still takes the field.
ZERO = {"temperature": 0}


def config_yaml(sim: SimServer, tmp: Path, state: str = "") -> str:
    return f"""
deployments:
  - {{name: small@openai, provider: openai, model: sim-small, api_base: "{sim.openai_base}",
      price: {{input: 1, output: 2}}}}
  - {{name: small@anthropic, provider: anthropic, model: sim-small, api_base: "{sim.anthropic_base}",
      price: {{input: 1, output: 2}}}}
models:
  chat: {{candidates: [small@openai]}}
  claude: {{candidates: [small@anthropic]}}
  claude-translated: {{candidates: [small@openai]}}
  uncached: {{candidates: [small@openai], cache: {{enabled: false}}}}
  short: {{candidates: [small@openai], cache: {{ttl_s: 0.5}}}}
access: {{master_key: {MASTER}, refresh_s: 0}}
spend: {{store: "{tmp / "spend.db"}", spool_dir: "{tmp / "spool"}", flush_interval_s: 0.05}}
cache: {{enabled: true, ttl_s: 60}}
{state}
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    tmp = tmp_path_factory.mktemp("cache")
    with BackgroundServer(create_app(parse_config(config_yaml(sim, tmp), source="cache.yaml"))) as server:
        server.tmp = tmp  # type: ignore[attr-defined]
        yield server


def new_key(url: str) -> str:
    response = httpx.post(url + "/admin/keys", json={"name": f"k-{uuid.uuid4().hex[:8]}"}, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


def upstream_calls(sim: SimServer) -> int:
    return int(sum(model.get("requests", 0) for model in sim.stats().values() if isinstance(model, dict)))


def prompt() -> list[dict[str, Any]]:
    """A prompt no other test sends (the cache is shared by the module's gateway)."""
    return [{"role": "user", "content": f"Say something short. {uuid.uuid4().hex}"}]


def oa(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def ant(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def chat(url: str, key: str, messages: list[dict[str, Any]], **extra: Any) -> Any:
    return oa(url, key).chat.completions.with_raw_response.create(
        model=extra.pop("model", "chat"), messages=messages, temperature=extra.pop("temperature", 0), **extra
    )


def chat_stream(url: str, key: str, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, list[Any], str | None]:
    """(the text, every chunk, the cache header) of a streamed chat answer, as the openai SDK parses it."""
    with oa(url, key).chat.completions.with_streaming_response.create(
        model="chat", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}, **extra
    ) as response:
        chunks = list(response.parse())
        header = response.headers.get("x-modelyard-cache")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks, header


def test_chat_hit_is_the_same_answer_at_no_cost_without_an_upstream_call(
    gateway: BackgroundServer, sim: SimServer
) -> None:
    key, messages = new_key(gateway.url), prompt()
    first = chat(gateway.url, key, messages)
    assert first.headers["x-modelyard-cache"] == "miss"
    calls = upstream_calls(sim)
    second = chat(gateway.url, key, messages)
    assert second.headers["x-modelyard-cache"] == "hit"
    assert upstream_calls(sim) == calls  # nothing went upstream
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.id != a.id  # a fresh id for a fresh answer
    assert b.usage.prompt_tokens == a.usage.prompt_tokens and b.usage.completion_tokens == a.usage.completion_tokens
    assert b.usage.model_extra["cost"] == 0.0 and a.usage.model_extra["cost"] > 0
    assert second.headers["x-modelyard-cost-usd"] == "0.00000000"
    assert second.headers["x-modelyard-model"] == "small@openai"
    assert second.headers["x-modelyard-attempts"].startswith("0;")  # no attempts
    assert first.headers["x-modelyard-attempts"].startswith("1;")


def test_chat_stream_replay_parses_like_a_live_stream(gateway: BackgroundServer, sim: SimServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    live_text, live, live_header = chat_stream(gateway.url, key, messages)
    assert live_header == "miss"
    calls = upstream_calls(sim)
    text, replay, header = chat_stream(gateway.url, key, messages)
    assert header == "hit" and upstream_calls(sim) == calls
    assert text == live_text and text
    assert [c.choices[0].finish_reason for c in replay if c.choices][-1] == "stop"
    assert replay[-1].choices == [] and replay[-1].usage is not None  # the usage chunk, as asked for
    assert replay[-1].usage.completion_tokens == live[-1].usage.completion_tokens
    assert replay[-1].usage.model_extra["cost"] == 0.0
    assert len({c.id for c in replay}) == 1 and replay[0].id != live[0].id
    # The raw SSE: data lines only, ending with [DONE].
    raw = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "chat", "messages": messages, "temperature": 0, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert raw.headers["x-modelyard-cache"] == "hit" and raw.headers["content-type"].startswith("text/event-stream")
    frames = raw.text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and all(f.startswith("data: ") for f in frames[:-1])
    assert '"usage"' not in raw.text  # no usage chunk when not asked for


def test_a_non_streamed_answer_replays_as_a_stream_and_back(gateway: BackgroundServer, sim: SimServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    answer = chat(gateway.url, key, messages).parse()
    calls = upstream_calls(sim)
    text, _, header = chat_stream(gateway.url, key, messages)
    assert header == "hit" and text == answer.choices[0].message.content
    other = prompt()
    streamed, _, _ = chat_stream(gateway.url, key, other)
    again = chat(gateway.url, key, other)
    assert again.headers["x-modelyard-cache"] == "hit" and again.parse().choices[0].message.content == streamed
    assert upstream_calls(sim) == calls + 1


@pytest.mark.parametrize("model", ["claude", "claude-translated"])
def test_messages_hit_and_stream_replay_with_the_anthropic_sdk(
    gateway: BackgroundServer, sim: SimServer, model: str
) -> None:
    """`claude` answers by native pass-through, `claude-translated` through the OpenAI wire: both cache."""
    key, messages = new_key(gateway.url), prompt()
    client = ant(gateway.url, key)
    first = client.messages.with_raw_response.create(model=model, max_tokens=64, extra_body=ZERO, messages=messages)
    assert first.headers["x-modelyard-cache"] == "miss"
    calls = upstream_calls(sim)
    second = client.messages.with_raw_response.create(model=model, max_tokens=64, extra_body=ZERO, messages=messages)
    assert second.headers["x-modelyard-cache"] == "hit" and "request-id" in second.headers
    a, b = first.parse(), second.parse()
    assert [blk.model_dump() for blk in b.content] == [blk.model_dump() for blk in a.content]
    assert b.usage.output_tokens == a.usage.output_tokens and b.stop_reason == a.stop_reason and b.id != a.id
    with client.messages.stream(model=model, max_tokens=64, extra_body=ZERO, messages=messages) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert upstream_calls(sim) == calls
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "message_delta" in events
    assert [blk.model_dump() for blk in final.content] == [blk.model_dump() for blk in a.content]
    assert final.usage.output_tokens == a.usage.output_tokens and final.stop_reason == a.stop_reason
    # A streamed answer is cached too: a new prompt, streamed first, then a JSON hit with the same text.
    other = prompt()
    with client.messages.stream(model=model, max_tokens=64, extra_body=ZERO, messages=other) as stream:
        streamed = stream.get_final_message()
    again = client.messages.with_raw_response.create(model=model, max_tokens=64, extra_body=ZERO, messages=other)
    assert again.headers["x-modelyard-cache"] == "hit"
    assert [blk.model_dump() for blk in again.parse().content] == [blk.model_dump() for blk in streamed.content]


def test_one_keys_answer_is_never_served_to_another(gateway: BackgroundServer, sim: SimServer) -> None:
    key_a, key_b, messages = new_key(gateway.url), new_key(gateway.url), prompt()
    chat(gateway.url, key_a, messages)
    assert chat(gateway.url, key_a, messages).headers["x-modelyard-cache"] == "hit"
    calls = upstream_calls(sim)
    assert chat(gateway.url, key_b, messages).headers["x-modelyard-cache"] == "miss"
    assert upstream_calls(sim) == calls + 1


def test_cache_control_no_store_and_no_cache(gateway: BackgroundServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    no_store = {"extra_headers": {"Cache-Control": "no-store"}}
    assert chat(gateway.url, key, messages, **no_store).headers["x-modelyard-cache"] == "miss"
    assert chat(gateway.url, key, messages, **no_store).headers["x-modelyard-cache"] == "miss"  # nothing stored
    chat(gateway.url, key, messages)  # stored now
    no_cache = {"extra_headers": {"Cache-Control": "no-cache"}}
    assert chat(gateway.url, key, messages, **no_cache).headers["x-modelyard-cache"] == "miss"  # lookup skipped
    assert chat(gateway.url, key, messages).headers["x-modelyard-cache"] == "hit"
    fresh = prompt()
    chat(gateway.url, key, fresh, **no_cache)  # no lookup, but stored
    assert chat(gateway.url, key, fresh).headers["x-modelyard-cache"] == "hit"
    both = {"extra_headers": {"Cache-Control": "no-cache, no-store"}}
    assert "x-modelyard-cache" not in chat(gateway.url, key, fresh, **both).headers


def test_only_deterministic_or_opted_in_requests_are_cached(gateway: BackgroundServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    for _ in range(2):
        assert "x-modelyard-cache" not in chat(gateway.url, key, messages, temperature=0.7).headers
        assert "x-modelyard-cache" not in chat(gateway.url, key, messages, n=2).headers
    opted = {"temperature": 0.7, "extra_body": {"modelyard": {"cache": True}}}
    assert chat(gateway.url, key, messages, **opted).headers["x-modelyard-cache"] == "miss"
    assert chat(gateway.url, key, messages, **opted).headers["x-modelyard-cache"] == "hit"
    out = {"extra_body": {"modelyard": {"cache": False}}}
    assert "x-modelyard-cache" not in chat(gateway.url, key, messages, **out).headers
    chat(gateway.url, key, messages)
    assert chat(gateway.url, key, messages).headers["x-modelyard-cache"] == "hit"
    assert "x-modelyard-cache" not in chat(gateway.url, key, messages, **out).headers  # opted out: not served
    # Anthropic's default temperature is 1: only an explicit 0 or the opt-in caches.
    client = ant(gateway.url, key)
    plain = client.messages.with_raw_response.create(model="claude", max_tokens=32, messages=messages)
    assert "x-modelyard-cache" not in plain.headers
    opt_in = client.messages.with_raw_response.create(
        model="claude", max_tokens=32, messages=messages, extra_body={"modelyard": {"cache": True}}
    )
    assert opt_in.headers["x-modelyard-cache"] == "miss"


def test_a_model_with_its_cache_off_and_a_models_own_ttl(gateway: BackgroundServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    for _ in range(2):
        assert "x-modelyard-cache" not in chat(gateway.url, key, messages, model="uncached").headers
    chat(gateway.url, key, messages, model="short")
    assert chat(gateway.url, key, messages, model="short").headers["x-modelyard-cache"] == "hit"
    time.sleep(0.6)
    assert chat(gateway.url, key, messages, model="short").headers["x-modelyard-cache"] == "miss"  # expired


def test_the_spend_row_of_a_hit(gateway: BackgroundServer) -> None:
    key, messages = new_key(gateway.url), prompt()
    chat(gateway.url, key, messages)
    hit = chat(gateway.url, key, messages)
    request_id = hit.headers["x-request-id"]
    db = gateway.tmp / "spend.db"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    row = None
    while row is None and time.monotonic() < deadline:
        time.sleep(0.1)
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT deployment, attempts, prompt_tokens, completion_tokens, cost_usd, status FROM modelyard_spend "
                "WHERE id = ?",
                (request_id,),
            ).fetchone()
    assert row == ("small@openai", 0, 0, 0, 0.0, "ok")


needs_redis = pytest.mark.skipif(not _reachable("127.0.0.1", 6379), reason="Redis is not running on 127.0.0.1:6379")


@needs_redis
def test_two_gateways_share_a_redis_cache(sim: SimServer, tmp_path: Path) -> None:
    """A miss through gateway 1 is a hit through gateway 2, streamed and not; the keys are hashed."""
    prefix = f"rc-test-{uuid.uuid4().hex[:8]}"
    state = f'state: {{redis_url: "{REDIS_URL}", prefix: {prefix}, on_unavailable: fail_open}}'
    configs = []
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        configs.append(parse_config(config_yaml(sim, tmp_path / str(n), state), source=f"g{n}.yaml"))
    configs[1].spend.store = configs[0].spend.store  # one store: keys made on 1 work on 2
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        with BackgroundServer(create_app(configs[0])) as one, BackgroundServer(create_app(configs[1])) as two:
            key, messages = new_key(one.url), prompt()
            assert chat(one.url, key, messages).headers["x-modelyard-cache"] == "miss"
            time.sleep(0.05)  # written to Redis after the answer, then announced: about one round trip
            calls = upstream_calls(sim)
            assert chat(two.url, key, messages).headers["x-modelyard-cache"] == "hit"
            _, _, header = chat_stream(two.url, key, messages)
            assert header == "hit" and upstream_calls(sim) == calls
            other = prompt()
            chat_stream(one.url, key, other)
            time.sleep(0.05)
            assert chat(two.url, key, other).headers["x-modelyard-cache"] == "hit"
            names = [name.decode() for name in client.scan_iter(f"{prefix}:rc:*")]
            assert len(names) == 2 and all(len(name.rsplit(":", 1)[1]) == 64 for name in names)
            assert all("Say" not in name for name in names)
            ttl_ms = client.pttl(names[0])
            assert 0 < ttl_ms <= 60_000
    finally:
        for name in client.scan_iter(f"{prefix}:*"):
            client.delete(name)
        client.close()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("outage", ["killed", "hung"])
def test_redis_down_falls_back_to_the_local_cache_never_an_error_and_sharing_returns_with_it(
    sim: SimServer, tmp_path: Path, outage: str
) -> None:
    """A private Redis, killed (connections refused) or paused (connections hang): every request still gets
    its answer, quickly (no request waits on Redis), from this gateway's own cache when it has it: an answer
    stored before the outage is still a hit, and one made during it is stored locally and a hit the second
    time. Once Redis is back, new answers are written to it again."""
    import redis

    with RedisServer() as redis_server:
        state = f'state: {{redis_url: "{redis_server.url}", on_unavailable: fail_open, redis_timeout_s: 0.3}}'
        config = parse_config(config_yaml(sim, tmp_path, state), source="outage.yaml")
        client = redis.Redis.from_url(redis_server.url, socket_timeout=1)
        with BackgroundServer(create_app(config)) as gw:
            key, messages = new_key(gw.url), prompt()
            chat(gw.url, key, messages)
            assert chat(gw.url, key, messages).headers["x-modelyard-cache"] == "hit"
            redis_server.kill() if outage == "killed" else redis_server.pause()
            during = prompt()
            calls = upstream_calls(sim)
            took, seen = [], []
            for ask in (messages, messages, during, during, during):
                start = time.monotonic()
                answer = chat(gw.url, key, ask)
                took.append(time.monotonic() - start)
                assert answer.status_code == 200
                seen.append(answer.headers["x-modelyard-cache"])
            assert seen == ["hit", "hit", "miss", "hit", "hit"]  # the local fallback
            assert upstream_calls(sim) == calls + 1
            assert max(took) < 0.25  # not one request waited for Redis's timeout
            redis_server.start() if outage == "killed" else redis_server.resume()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                before = len(list(client.scan_iter("*:rc:*")))
                chat(gw.url, key, prompt())
                time.sleep(0.1)
                if len(list(client.scan_iter("*:rc:*"))) > before:
                    break
            else:
                pytest.fail("answers were not written to Redis again once it returned")
        client.close()


def test_responses_api_hit_replay_and_the_hit_continues_a_conversation(
    gateway: BackgroundServer, sim: SimServer
) -> None:
    """Translated Responses answers are cached as canonical completions and rebuilt per request: a new id,
    stored so `previous_response_id` finds it; a stream replays the Responses events the SDK parses."""
    key, text = new_key(gateway.url), prompt()[0]["content"]
    client = oa(gateway.url, key)
    first = client.responses.with_raw_response.create(model="chat", input=text, temperature=0)
    assert first.headers["x-modelyard-cache"] == "miss"
    calls = upstream_calls(sim)
    second = client.responses.with_raw_response.create(model="chat", input=text, temperature=0)
    assert second.headers["x-modelyard-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert b.output_text == a.output_text and b.output_text and b.id != a.id
    assert b.usage is not None and a.usage is not None and b.usage.output_tokens == a.usage.output_tokens
    with client.responses.stream(model="chat", input=text, temperature=0) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert upstream_calls(sim) == calls
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.output_text == a.output_text
    follow = client.responses.create(model="chat", input="And again?", previous_response_id=b.id, temperature=0)
    assert follow.output_text and follow.previous_response_id == b.id
    # A streamed Responses answer is replayed from the cache but not stored from the stream.
    other = prompt()[0]["content"]
    with client.responses.stream(model="chat", input=other, temperature=0) as stream:
        stream.get_final_response()
    again = client.responses.with_raw_response.create(model="chat", input=other, temperature=0)
    assert again.headers["x-modelyard-cache"] == "miss"
