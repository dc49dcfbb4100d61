"""The executor against a scripted transport: retries, backoff, failover, context-length, hedging, streams."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.providers.base import SSEEvent
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, UserMessage
from modelyard.schema.errors import ErrorKind, ProviderError

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m-a, api_base: "http://a/v1", price: {input: 1, output: 2}, context_window: 1000}
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", price: {input: 1, output: 2}, context_window: 8000}
  - {name: c, provider: openai, model: m-c, api_base: "http://c/v1", price: {input: 1, output: 2}}
models:
  m:
    candidates: [a, b, c]
  hedged:
    candidates: [a, b, c]
    hedge_after_ms: 50
  solo:
    candidates: [a]
    fallbacks: [m2]
  m2:
    candidates: [c]
  capped:
    candidates: [a, b, c]
    options: {max_attempts: 3, failover_on_content_filter: true}
"""


def ok_body(model: str) -> bytes:
    return msgspec.json.encode(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    )


class FakeStream:
    def __init__(self, events: list[bytes], cut: bool = False) -> None:
        self._events = events
        self.closed = False
        self.headers: dict[str, str] = {}

    async def batches(self):
        for data in self._events:
            await asyncio.sleep(0)
            yield [SSEEvent(data)]

    def close(self) -> None:
        self.closed = True


class ScriptedTransport:
    """Per deployment host, a queue of outcomes: "ok", an ErrorKind, ("sleep", s), or ("ok-after", s)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[str] = []

    def _next(self, url: str) -> tuple[str, Any]:
        host = url.split("//")[1].split("/")[0]
        self.calls.append(host)
        queue = self.script.get(host) or ["ok"]
        return host, (queue.pop(0) if len(queue) > 1 else queue[0])

    async def send(self, call, timeouts, adapter):
        host, step = self._next(call.url)
        if isinstance(step, tuple):
            await asyncio.sleep(step[1])
            step = "ok"
        if isinstance(step, ErrorKind):
            raise ProviderError(
                step, f"scripted {step.value}", retry_after=0.0 if step is ErrorKind.RATE_LIMITED else None
            )
        return ok_body(f"m-{host}"), {}

    async def open_stream(self, call, timeouts, adapter):
        host, step = self._next(call.url)
        if isinstance(step, tuple):
            await asyncio.sleep(step[1])
            step = "ok"
        if isinstance(step, ErrorKind):
            raise ProviderError(step, f"scripted {step.value}")
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": f"m-{host}",
            "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": None}],
        }
        last = {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}
        events = [msgspec.json.encode(chunk)]
        if step != "cut":
            events += [msgspec.json.encode(last), b"[DONE]"]
        return FakeStream(events)


def make(script: dict[str, list[Any]], **policy: Any) -> tuple[Router, ScriptedTransport]:
    router = Router(parse_config(CONFIG), seed=3)
    transport = ScriptedTransport(script)
    router._executor = Executor(
        transport=transport,
        adapters=router.adapters,
        health=router.health,  # type: ignore[arg-type]
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(base_s=0.001, max_backoff_s=0.002, **policy),
        rng=random.Random(0),
    )
    return router, transport


def request(model: str = "m", stream: bool = False) -> tuple[ChatRequest, dict[str, Any], RequestFeatures]:
    req = ChatRequest(model=model, messages=[UserMessage(content="hello")], stream=stream or None)
    raw = msgspec.to_builtins(req)
    return req, raw, RequestFeatures(prompt_tokens=10, max_output_tokens=20, stream=stream)


async def test_success_first_try():
    router, transport = make({})
    result = await router.complete(*request())
    assert result.deployment.name == "a" and transport.calls == ["a"]
    assert [r.outcome for r in result.records] == ["ok"]
    assert result.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)


async def test_retry_same_deployment_then_success():
    router, transport = make({"a": [ErrorKind.RATE_LIMITED, "ok"]})
    result = await router.complete(*request())
    assert transport.calls == ["a", "a"]
    assert [r.outcome for r in result.records] == ["rate_limited", "ok"]


async def test_failover_after_retries_exhausted():
    router, transport = make({"a": [ErrorKind.SERVER], "b": [ErrorKind.OVERLOADED]}, retries=1)
    result = await router.complete(*request())
    assert transport.calls == ["a", "a", "b", "b", "c"]
    assert result.deployment.name == "c"
    assert sum(r.cost_usd for r in result.records[:-1]) == 0  # failed attempts cost nothing


async def test_timeout_fails_over_without_retry():
    router, transport = make({"a": [ErrorKind.TIMEOUT]})
    result = await router.complete(*request())
    assert transport.calls == ["a", "b"]
    assert result.records[0].outcome == "timeout"


async def test_bad_request_stops_and_content_filter_configurable():
    router, transport = make({"a": [ErrorKind.BAD_REQUEST]})
    with pytest.raises(ProviderError) as info:
        await router.complete(*request())
    assert info.value.kind is ErrorKind.BAD_REQUEST and transport.calls == ["a"]
    assert [r.outcome for r in info.value.records] == ["bad_request"]
    router, transport = make({"a": [ErrorKind.CONTENT_FILTER]}, failover_on_content_filter=True)
    result = await router.complete(*request())
    assert result.deployment.name == "b"


async def test_a_models_options_override_the_retry_defaults():
    router, transport = make({"a": [ErrorKind.SERVER], "b": [ErrorKind.SERVER]}, retries=1)
    with pytest.raises(ProviderError):
        await router.complete(*request("capped"))
    assert transport.calls == ["a", "a", "b"]  # max_attempts: 3 (the default allows 8: a, a, b, b, c)
    router, transport = make({"a": [ErrorKind.CONTENT_FILTER]})
    result = await router.complete(*request("capped"))
    assert result.deployment.name == "b"  # the model fails over where the default stops
    with pytest.raises(ProviderError):
        await make({"a": [ErrorKind.CONTENT_FILTER]})[0].complete(*request("m"))


async def test_auth_fails_over():
    router, transport = make({"a": [ErrorKind.AUTH]})
    result = await router.complete(*request())
    assert transport.calls == ["a", "b"]
    assert result.deployment.name == "b"


async def test_context_length_skips_candidates_with_smaller_window():
    script = {"a": [ErrorKind.CONTEXT_LENGTH], "b": [ErrorKind.CONTEXT_LENGTH]}
    router, transport = make(script)
    result = await router.complete(*request())
    assert transport.calls == ["a", "b", "c"]  # b's window (8000) > a's (1000); c unknown: tried
    assert result.deployment.name == "c"


async def test_fallback_model_after_all_candidates_fail():
    router, transport = make({"a": [ErrorKind.SERVER]}, retries=0)
    result = await router.complete(*request("solo"))
    assert transport.calls == ["a", "c"] and result.deployment.name == "c"


async def test_everything_fails_raises_last_error_with_history():
    router, _ = make({"a": [ErrorKind.SERVER], "b": [ErrorKind.SERVER], "c": [ErrorKind.CONNECTION]}, retries=0)
    with pytest.raises(ProviderError) as info:
        await router.complete(*request())
    assert info.value.kind is ErrorKind.CONNECTION
    assert [(r.deployment, r.outcome) for r in info.value.records] == [
        ("a", "server"),
        ("b", "server"),
        ("c", "connection"),
    ]


async def test_hedge_fires_and_first_answer_wins_both_costs_counted():
    router, _ = make({"a": [("sleep", 1.0)], "b": ["ok"]})
    started = asyncio.get_running_loop().time()
    result = await router.complete(*request("hedged"))
    elapsed = asyncio.get_running_loop().time() - started
    assert result.deployment.name == "b" and elapsed < 0.5
    outcomes = {r.deployment: (r.outcome, r.hedge) for r in result.records}
    assert outcomes == {"a": ("cancelled", False), "b": ("ok", True)}
    loser = next(r for r in result.records if r.deployment == "a")
    assert loser.cost_usd > 0  # the prompt the slow provider already read is billed (estimate)
    assert router.health.get("a").in_flight == 0


async def test_no_hedge_when_first_answers_in_time():
    router, transport = make({"a": ["ok"]})
    result = await router.complete(*request("hedged"))
    assert transport.calls == ["a"] and len(result.records) == 1


async def test_stream_failover_before_first_byte_and_clean_stream():
    router, _ = make({"a": [ErrorKind.CONNECTION], "b": ["ok"]}, retries=0)
    req, raw, features = request(stream=True)
    result = await router.stream(req, raw, features)
    chunks = [c async for c in result.chunks()]
    assert result.deployment.name == "b"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello"
    assert [r.outcome for r in result.records] == ["connection", "ok"]


async def test_stream_cut_after_first_byte_raises():
    router, _ = make({"a": ["cut"]})
    req, raw, features = request(stream=True)
    result = await router.stream(req, raw, features)
    got = []
    with pytest.raises(ProviderError) as info:
        async for chunk in result.chunks():
            got.append(chunk)
    assert len(got) == 1 and info.value.after_first_byte
    assert result.records[-1].outcome == "connection"


async def test_breaker_opens_and_candidate_is_skipped():
    router, transport = make({"a": [ErrorKind.SERVER]}, retries=0)
    router.health.policy = type(router.health.policy)(failures=2, window_s=60, cooldown_s=60)
    for _ in range(2):
        await router.complete(*request())
    transport.calls.clear()
    result = await router.complete(*request())
    assert transport.calls == ["b"] and result.deployment.name == "b"


async def test_rpm_headroom_is_checked_as_the_walk_reaches_a_deployment():
    router, transport = make({})
    a = router.table.deployments["a"]
    limited = type(a.limits)(rpm=1)
    router.table.deployments["a"] = type(a)(**{**{f: getattr(a, f) for f in a.__struct_fields__}, "limits": limited})
    plan = router.plan("m", RequestFeatures(prompt_tokens=10, max_output_tokens=20))
    plan.order[0] = router.table.deployments["a"]
    req, raw, features = request()
    await router.executor.complete(plan, router.replanner(features), req, raw, features)
    plan = router.plan("m", features)
    plan.order[0] = router.table.deployments["a"]
    result = await router.executor.complete(plan, router.replanner(features), req, raw, features)
    assert transport.calls == ["a", "b"] and result.deployment.name == "b"
    assert any(s.deployment == "a" and "rpm" in s.reason for s in plan.ctx.skipped)
