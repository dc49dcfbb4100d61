"""One attempt loop: hedged legs and embeddings follow the plan's own RetryPolicy like any attempt, and the
native pass-through mode is taken per attempt, only where the deployment's adapter speaks the format."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.config.model import Deployment
from modelyard.providers import load_adapter
from modelyard.providers.base import Completion, HttpCall, NativePassthrough, SSEEvent, discover
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor, NativeBody
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.chat import EmbeddingRequest, Usage
from modelyard.schema.errors import ErrorKind, ProviderError
from tests.unit.routing.test_executor import ScriptedTransport, request

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m-a, api_base: "http://a/v1", price: {input: 1, output: 2}}
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", price: {input: 1, output: 2}}
  - {name: c, provider: openai, model: m-c, api_base: "http://c/v1", price: {input: 1, output: 2}}
  - {name: n, provider: anthropic, model: m-n, api_base: "http://n", price: {input: 1, output: 2}}
  - {name: e1, provider: openai, kind: embedding, model: m-e1, api_base: "http://e1/v1", price: {input: 1, output: 0}}
  - {name: e2, provider: openai, kind: embedding, model: m-e2, api_base: "http://e2/v1", price: {input: 1, output: 0}}
  - {name: e3, provider: openai, kind: embedding, model: m-e3, api_base: "http://e3/v1", price: {input: 1, output: 0},
     limits: {rpm: 1}}
models:
  hedged:
    candidates: [a, b, c]
    hedge_after_ms: 30
  hedged-capped:
    candidates: [a, b, c]
    hedge_after_ms: 30
    options: {max_attempts: 2}
  hedged-filter-failover:
    candidates: [a, b, c]
    hedge_after_ms: 30
    options: {failover_on_content_filter: true}
  native-first:
    candidates: [n, b]
    strategy: priority
  emb:
    candidates: [e1, e2]
    strategy: priority
  emb-limited:
    candidates: [e3, e2]
    strategy: priority
"""

FORMAT = "acme-messages"


class EmbeddingTransport(ScriptedTransport):
    """The scripted transport, answering embeddings calls with an embeddings body."""

    async def send(self, call: HttpCall, timeouts: Any, adapter: Any) -> tuple[bytes, dict[str, str]]:
        if "/embeddings" not in call.url:
            answer: tuple[bytes, dict[str, str]] = await super().send(call, timeouts, adapter)  # type: ignore[no-untyped-call]
            return answer
        host, step = self._next(call.url)
        if isinstance(step, ErrorKind):
            raise ProviderError(step, f"scripted {step.value}")
        body = {
            "object": "list",
            "model": f"m-{host}",
            "data": [{"object": "embedding", "embedding": [0.5, 0.25], "index": 0}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
        return msgspec.json.encode(body), {}


class NativeEvents:
    """A native stream translator: each event re-framed as is; substance only once the finish is seen (so a
    stream cut after its first event has none, and fails over)."""

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self.model = model
        self.answered = False
        self._done = False

    def feed(self, event: SSEEvent) -> list[Any]:
        if event.data == b"[DONE]":
            self._done = True
            self.usage = Usage(prompt=7, completion=3)
        elif b'"finish_reason":"stop"' in event.data:
            self.answered = True
        return [msgspec.Raw(b"event: delta\ndata: " + event.data + b"\n\n")]

    def finish(self) -> list[Any]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "cut")
        return []

    @property
    def done(self) -> bool:
        return self._done


class NativeAnthropic:
    """The anthropic adapter plus the native pass-through capability for a made-up format."""

    native_formats: ClassVar[frozenset[str]] = frozenset({FORMAT})

    def __init__(self) -> None:
        self._inner = load_adapter("anthropic")
        self.name = "anthropic"
        self.options_type = self._inner.options_type
        self.sent: list[tuple[dict[str, Any], dict[str, str]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def native_call(
        self,
        dep: Deployment,
        fmt: str,
        body: dict[str, Any],
        stream: bool,
        headers: Mapping[str, str],
        *,
        raw: bytes = b"",
    ) -> HttpCall:
        sent = {**body, "model": dep.model}
        self.sent.append((sent, dict(headers)))
        return HttpCall("POST", f"{dep.api_base}/native", dict(headers), msgspec.json.encode(sent))

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        decoded = msgspec.json.decode(body)
        usage = decoded.get("usage") or {}
        return Completion(
            decoded, Usage(prompt=usage.get("prompt_tokens", 0), completion=usage.get("completion_tokens", 0)),
            decoded.get("model", dep.model), native=body,
        )  # fmt: skip

    def native_stream(self, dep: Deployment, fmt: str) -> NativeEvents:
        return NativeEvents(dep.model)


def make(script: dict[str, list[Any]], native: NativeAnthropic | None = None, **policy: Any) -> tuple[Router, Any]:
    router = Router(parse_config(CONFIG), seed=3)
    transport = EmbeddingTransport(script)
    adapters = dict(router.adapters)
    if native is not None:
        adapters["anthropic"] = native  # type: ignore[assignment]
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=adapters,
        health=router.health,
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(base_s=0.001, max_backoff_s=0.002, **policy),
        rng=random.Random(0),
    )
    return router, transport


# ----------------------------------------------------------------------------- hedged legs and the policy


async def test_a_hedged_leg_that_is_a_bad_request_stops_the_request_without_failover() -> None:
    router, transport = make({"a": [("sleep", 1.0)], "b": [ErrorKind.BAD_REQUEST]})
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as info:
        await router.complete(*request("hedged"))
    assert asyncio.get_running_loop().time() - started < 0.5  # not waiting for the slow leg either
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert transport.calls == ["a", "b"]  # c never tried
    assert {r.deployment: r.outcome for r in info.value.records} == {"a": "cancelled", "b": "bad_request"}
    assert router.health.get("a").in_flight == 0


async def test_hedged_legs_count_against_the_models_own_max_attempts() -> None:
    script: dict[str, list[Any]] = {"a": [("sleep", 0.2)], "b": [ErrorKind.SERVER], "c": ["ok"]}
    router, transport = make(script)
    capped = await router.complete(*request("hedged-capped"))
    assert transport.calls == ["a", "b"] and capped.deployment.name == "a"  # max_attempts: 2, no third leg
    assert len(capped.records) == 2
    router, transport = make(script)
    uncapped = await router.complete(*request("hedged"))  # the gateway default (8) lets c take b's place
    assert transport.calls == ["a", "b", "c"] and uncapped.deployment.name == "c"


async def test_a_hedged_content_filter_stops_unless_the_model_fails_over_on_it() -> None:
    script: dict[str, list[Any]] = {"a": [("sleep", 1.0)], "b": [ErrorKind.CONTENT_FILTER], "c": ["ok"]}
    router, transport = make(script)
    with pytest.raises(ProviderError) as info:
        await router.complete(*request("hedged"))
    assert info.value.kind is ErrorKind.CONTENT_FILTER and transport.calls == ["a", "b"]
    router, transport = make(script)
    result = await router.complete(*request("hedged-filter-failover"))
    assert result.deployment.name == "c" and transport.calls == ["a", "b", "c"]


# ----------------------------------------------------------------------------- embeddings


def embed_request(model: str = "emb") -> tuple[EmbeddingRequest, dict[str, Any], RequestFeatures]:
    req = EmbeddingRequest(model=model, input="hello")
    return req, msgspec.to_builtins(req), RequestFeatures(prompt_tokens=4, kind="embedding")


async def test_embeddings_fail_over_and_attribute_the_failure() -> None:
    router, transport = make({"e1": [ErrorKind.SERVER]}, retries=0)
    result = await router.embed(*embed_request())
    assert transport.calls == ["e1", "e2"] and result.deployment.name == "e2"
    assert [(r.deployment, r.outcome) for r in result.records] == [("e1", "server"), ("e2", "ok")]
    assert result.records[1].cost_usd == pytest.approx(4 / 1e6) and result.cost_usd == pytest.approx(4 / 1e6)
    assert result.completion.body["data"][0]["embedding"] == [0.5, 0.25]
    assert router.health.get("e1").failures == 1 and router.health.get("e2").failures == 0
    assert router.health.get("e1").in_flight == 0 and router.health.get("e2").in_flight == 0


async def test_embeddings_retry_under_the_policy_before_failing_over() -> None:
    router, transport = make({"e1": [ErrorKind.RATE_LIMITED, "ok"]}, retries=1)
    result = await router.embed(*embed_request())
    assert transport.calls == ["e1", "e1"] and result.deployment.name == "e1"


async def test_an_embeddings_bad_request_stops() -> None:
    router, transport = make({"e1": [ErrorKind.BAD_REQUEST]})
    with pytest.raises(ProviderError) as info:
        await router.embed(*embed_request())
    assert info.value.kind is ErrorKind.BAD_REQUEST and transport.calls == ["e1"]
    assert info.value.deployment == "e1" and [r.outcome for r in info.value.records] == ["bad_request"]


async def test_embeddings_respect_a_deployments_rpm_window() -> None:
    router, transport = make({})
    first = await router.embed(*embed_request("emb-limited"))
    second = await router.embed(*embed_request("emb-limited"))
    assert first.deployment.name == "e3" and second.deployment.name == "e2"  # rpm: 1 spent by the first
    assert transport.calls == ["e3", "e2"]


# ----------------------------------------------------------------------------- native pass-through


def test_the_fake_adapter_is_discovered_as_native() -> None:
    adapter = NativeAnthropic()
    assert isinstance(adapter, NativePassthrough) and discover(adapter).native is adapter


def native_body(stream: bool = False) -> NativeBody:
    body: dict[str, Any] = {"model": "native-first", "messages": [{"role": "user", "content": "hi"}], "x": [1]}
    if stream:
        body["stream"] = True
    return NativeBody(FORMAT, body, {"anthropic-beta": "b1"})


async def test_a_native_body_goes_out_as_sent_and_the_answer_comes_back_as_bytes() -> None:
    native = NativeAnthropic()
    router, transport = make({}, native)
    result = await router.complete(*request("native-first"), native=native_body())
    assert transport.calls == ["n"] and result.deployment.name == "n"
    sent, headers = native.sent[0]
    assert sent == {**native_body().body, "model": "m-n"} and headers == {"anthropic-beta": "b1"}
    assert result.completion.native is not None
    assert msgspec.json.decode(result.completion.native) == result.completion.body  # the upstream's own bytes
    assert result.cost_usd == pytest.approx((10 * 1 + 5 * 2) / 1e6)  # priced from the native usage


async def test_failover_may_cross_from_native_to_translated() -> None:
    native = NativeAnthropic()
    router, transport = make({"n": [ErrorKind.SERVER]}, native, retries=0)
    result = await router.complete(*request("native-first"), native=native_body())
    assert transport.calls == ["n", "b"] and result.deployment.name == "b"
    assert result.completion.native is None and result.completion.body["object"] == "chat.completion"


async def test_a_format_the_adapter_does_not_speak_is_translated() -> None:
    native = NativeAnthropic()
    router, _ = make({}, native)
    other = NativeBody("something-else", native_body().body, {})
    result = await router.complete(*request("native-first"), native=other)
    assert native.sent == [] and result.completion.native is None


async def test_a_native_stream_passes_the_upstream_events_framed() -> None:
    router, _ = make({}, NativeAnthropic())
    req, raw, features = request("native-first", stream=True)
    result = await router.stream(req, raw, features, native=native_body(stream=True))
    assert result.native == FORMAT
    events = [bytes(chunk) for batch in [b async for b in result.batches()] for chunk in batch]  # type: ignore[arg-type]
    assert all(e.startswith(b"event: delta\ndata: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"event: delta\ndata: [DONE]\n\n"
    assert result.usage == Usage(prompt=7, completion=3) and result.cost_usd == pytest.approx((7 + 6) / 1e6)
    assert len(result.records) == 1 and result.records[0].outcome == "ok"


async def test_a_native_stream_cut_before_substance_fails_over_to_a_translated_deployment() -> None:
    router, transport = make({"n": ["cut"]}, NativeAnthropic(), retries=0)
    req, raw, features = request("native-first", stream=True)
    result = await router.stream(req, raw, features, native=native_body(stream=True))
    assert transport.calls == ["n", "b"] and result.native is None  # canonical chunks from here on
    chunks = [c async for c in result.chunks()]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello"
    assert [(r.deployment, r.outcome) for r in result.records] == [("n", "connection"), ("b", "ok")]
