"""The simulator's prompt cache: a repeated prefix on the same model is reported (and only there)."""

from __future__ import annotations

from typing import Any

from modelyard.sim.app import create_app
from modelyard.sim.prompt_cache import PromptCache, prefix_segments, segments_from_body
from tests.unit.sim.sim_helpers import asgi_call, fleet

SYSTEM = "You are a careful coding agent. " * 200  # about 1600 tokens: past the 1024-token minimum


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"step {i}: " + "read the file and fix it. " * 20})
        if i < turns - 1:
            messages.append({"role": "assistant", "content": f"done step {i}. " * 30})
    return messages


def segs(turns: int) -> list[bytes]:
    return prefix_segments(None, conversation(turns))


def test_first_use_writes_then_a_longer_prompt_reads_the_prefix() -> None:
    cache = PromptCache(clock=Clock())
    first = cache.use("m", segs(1), 2000)
    assert first.read == 0 and first.written > 1024
    second = cache.use("m", segs(2), 2600)
    assert second.read == first.written  # the whole first prompt (rounded to blocks) is read back
    assert second.read % 128 == 0
    assert second.read + second.written <= 2600


def test_cache_is_per_model_and_keyed_by_the_prefix() -> None:
    cache = PromptCache(clock=Clock())
    cache.use("m", segs(1), 2000)
    assert cache.use("other", segs(2), 2600).read == 0
    changed = prefix_segments(None, [{"role": "system", "content": SYSTEM + "!"}, *conversation(2)[1:]])
    assert cache.use("m", changed, 2600).read == 0


def test_short_prompts_are_not_cached_and_reads_never_exceed_the_prompt() -> None:
    cache = PromptCache(clock=Clock())
    short = prefix_segments(None, [{"role": "user", "content": "hi"}])
    assert cache.use("m", short, 5).written == 0
    assert cache.use("m", short, 5).read == 0
    cache.use("m", segs(2), 2600)
    assert cache.use("m", segs(2), 1500).read <= 1500


def test_entries_expire_after_the_ttl_and_a_hit_refreshes_them() -> None:
    clock = Clock()
    cache = PromptCache(clock=clock, ttl_s=300)
    cache.use("m", segs(1), 2000)
    clock.now = 250
    assert cache.use("m", segs(1), 2000).read > 0  # refreshed until 550
    clock.now = 500
    assert cache.use("m", segs(1), 2000).read > 0
    clock.now = 900
    assert cache.use("m", segs(1), 2000).read == 0


def test_the_cache_is_bounded() -> None:
    cache = PromptCache(clock=Clock(), max_entries=10)
    for i in range(50):
        cache.use("m", prefix_segments(i, conversation(3)), 4000)
    assert len(cache) <= 10


def test_segments_from_any_wire_body() -> None:
    anthropic = b'{"model":"m","system":"s","tools":[],"messages":[{"role":"user","content":"a"}]}'
    gemini = b'{"contents":[{"role":"user","parts":[{"text":"a"}]},{"role":"model","parts":[]}]}'
    assert len(segments_from_body(anthropic)) == 2
    assert len(segments_from_body(gemini)) == 3
    assert segments_from_body(b"not json") == []


# ------------------------------------------------------------------ through the app


def _app() -> Any:
    return create_app(fleet({"name": "a"}, {"name": "b"}))


async def _openai(app: Any, model: str, turns: int) -> dict[str, Any]:
    result = await asgi_call(app, "POST", "/v1/chat/completions", {"model": model, "messages": conversation(turns)})
    assert result.status == 200, result.body
    usage: dict[str, Any] = result.json()["usage"]
    return usage


async def test_openai_reports_cached_tokens_on_the_same_model_only() -> None:
    app = _app()
    first = await _openai(app, "a", 1)
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    again = await _openai(app, "a", 2)
    cached = again["prompt_tokens_details"]["cached_tokens"]
    assert 1024 <= cached <= again["prompt_tokens"]
    elsewhere = await _openai(app, "b", 3)
    assert elsewhere["prompt_tokens_details"]["cached_tokens"] == 0
    app.reset()
    assert (await _openai(app, "a", 2))["prompt_tokens_details"]["cached_tokens"] == 0


async def test_gemini_reports_cached_content_tokens() -> None:
    app = _app()
    contents = [{"role": "user", "parts": [{"text": SYSTEM}]}]
    body = {"contents": contents}
    path = "/v1beta/models/a:generateContent"
    headers = {"x-goog-api-key": "k"}
    first = (await asgi_call(app, "POST", path, body, headers)).json()["usageMetadata"]
    assert "cachedContentTokenCount" not in first
    body = {"contents": [*contents, {"role": "model", "parts": [{"text": "ok"}]}, *contents]}
    second = (await asgi_call(app, "POST", path, body, headers)).json()["usageMetadata"]
    assert 1024 <= second["cachedContentTokenCount"] <= second["promptTokenCount"]


def _anthropic_body(turns: int, marked: bool) -> dict[str, Any]:
    system: Any = [{"type": "text", "text": SYSTEM}]
    if marked:
        system[0]["cache_control"] = {"type": "ephemeral"}
    messages = [m for m in conversation(turns) if m["role"] != "system"]
    return {"model": "a", "max_tokens": 50, "system": system, "messages": messages}


async def test_anthropic_reports_reads_and_writes_only_with_cache_control() -> None:
    app = _app()
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}

    async def usage(turns: int, marked: bool) -> dict[str, Any]:
        result = await asgi_call(app, "POST", "/v1/messages", _anthropic_body(turns, marked), headers)
        assert result.status == 200, result.body
        found: dict[str, Any] = result.json()["usage"]
        return found

    first = await usage(1, True)
    assert first["cache_read_input_tokens"] == 0 and first["cache_creation_input_tokens"] >= 1024
    second = await usage(2, True)
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    app.reset()
    assert (await usage(1, False))["cache_creation_input_tokens"] == 0
    assert (await usage(2, False))["cache_read_input_tokens"] == 0
