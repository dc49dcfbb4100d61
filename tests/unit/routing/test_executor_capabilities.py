"""The executor uses an adapter's optional capabilities (issue 17): `CredentialRefresh.authorize` on every
attempt (a failing credential chain is that attempt's AUTH error and the walk fails over, without the chain's
own words), `credentials_rejected` after the provider refuses a credential, `StreamFraming` decoders handed
to the transport, and `Endpoints` for the non-chat endpoints (priced by their units, never hedged)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, Usage, UserMessage
from modelyard.schema.endpoints import EndpointRequest
from modelyard.schema.errors import ErrorKind, ProviderError
from tests.plugins.capable_adapter import CapableAdapter
from tests.unit.routing.test_executor import FakeStream, ok_body

CAPABLE = "tests.plugins.capable_adapter:CapableAdapter"
CONFIG = f"""
deployments:
  - {{name: signed, provider: "{CAPABLE}", model: m-s, api_base: "http://signed/v1", price: {{input: 1, output: 2}},
     timeouts: {{total: 0.2}}}}
  - {{name: plain, provider: openai, model: m-p, api_base: "http://plain/v1", price: {{input: 1, output: 2}}}}
  - {{name: rr, provider: "{CAPABLE}", kind: rerank, model: r, api_base: "http://rr/v1",
     price: {{search_unit: 2.0}}}}
  - {{name: rr2, provider: "{CAPABLE}", kind: rerank, model: r2, api_base: "http://rr2/v1",
     price: {{search_unit: 1.0}}}}
models:
  m: {{candidates: [signed, plain]}}
  ranked: {{candidates: [rr, rr2], hedge_after_ms: 1}}
  unserved: {{candidates: [rr]}}
"""


class RecordingTransport:
    """Answers by host; per host a queue of outcomes ("ok" or an ErrorKind); records every call."""

    def __init__(self, script: dict[str, list[Any]] | None = None, delay_s: float = 0.0) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.decoders: list[Any] = []
        self.delay_s = delay_s

    def _step(self, url: str, headers: dict[str, str]) -> tuple[str, Any]:
        host = url.split("//")[1].split("/")[0]
        self.calls.append((host, dict(headers)))
        queue = self.script.get(host) or ["ok"]
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(step, ErrorKind):
            raise ProviderError(step, f"scripted {step.value}")
        return host, step

    async def send(self, call, timeouts, adapter):
        host, _ = self._step(call.url, call.headers)
        await asyncio.sleep(self.delay_s)
        if call.url.endswith("/rerank"):
            return msgspec.json.encode({"results": [{"index": 0, "relevance_score": 0.9}], "search_units": 3}), {}
        return ok_body(f"m-{host}"), {}

    async def open_stream(self, call, timeouts, adapter, decoder=None):
        self._step(call.url, call.headers)
        self.decoders.append(decoder)
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        }
        return FakeStream([msgspec.json.encode(chunk), b"[DONE]"])


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CapableAdapter.clear()
    yield
    CapableAdapter.clear()


def make(transport: RecordingTransport) -> Router:
    router = Router(parse_config(CONFIG), seed=3)
    router._executor = Executor(
        transport=transport,  # type: ignore[arg-type]
        adapters=router.adapters,
        health=router.health,  # type: ignore[arg-type]
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(retries=0, base_s=0.001, max_backoff_s=0.002),
        rng=random.Random(0),
    )
    return router


def chat(stream: bool = False) -> tuple[ChatRequest, dict[str, Any], RequestFeatures]:
    req = ChatRequest(model="m", messages=[UserMessage(content="hello")], stream=stream or None)
    return req, msgspec.to_builtins(req), RequestFeatures(prompt_tokens=10, max_output_tokens=20, stream=stream)


def rerank(model: str = "ranked") -> tuple[EndpointRequest, RequestFeatures]:
    units = Usage(search_units=1)
    req = EndpointRequest(endpoint="rerank", model=model, fields={"query": "q", "documents": ["a", "b"]}, units=units)
    return req, RequestFeatures(kind="rerank", units=units)


async def test_every_attempt_is_authorized_before_it_is_sent() -> None:
    transport = RecordingTransport()
    result = await make(transport).complete(*chat())
    assert result.deployment.name == "signed"
    assert CapableAdapter.authorized == ["signed"]
    assert transport.calls[0][1]["authorization"] == "Bearer token-for-signed"


async def test_a_failing_credential_chain_fails_over_without_its_own_words() -> None:
    CapableAdapter.broken.add("signed")
    transport = RecordingTransport()
    result = await make(transport).complete(*chat())
    assert result.deployment.name == "plain"
    assert [host for host, _ in transport.calls] == ["plain"]  # nothing was sent to the deployment without a credential
    first = result.records[0]
    assert first.deployment == "signed" and first.outcome == "auth"
    assert "RuntimeError" in (first.error or "") and "/home/ops" not in (first.error or "")


async def test_a_hanging_credential_is_bounded_by_the_attempts_total_and_fails_over() -> None:
    CapableAdapter.hanging.add("signed")
    transport = RecordingTransport()
    started = asyncio.get_running_loop().time()
    result = await make(transport).complete(*chat())
    assert asyncio.get_running_loop().time() - started < 2.0  # the deployment's total is 0.2 s
    assert result.deployment.name == "plain" and [host for host, _ in transport.calls] == ["plain"]
    assert result.records[0].outcome == "auth" and "within 0.2 s" in (result.records[0].error or "")


async def test_a_refused_credential_is_dropped_for_the_next_attempt() -> None:
    transport = RecordingTransport({"signed": [ErrorKind.AUTH]})
    result = await make(transport).complete(*chat())
    assert result.deployment.name == "plain"
    assert CapableAdapter.rejected == ["signed"]


async def test_a_provider_with_its_own_framing_gets_its_decoder_others_sse() -> None:
    transport = RecordingTransport()
    stream = await make(transport).stream(*chat(stream=True))
    await stream.aclose()
    assert len(CapableAdapter.decoders) == 1
    assert transport.decoders == [CapableAdapter.decoders[0]]


async def test_an_endpoint_is_called_through_the_adapter_and_priced_by_its_units() -> None:
    transport = RecordingTransport()
    req, features = rerank()
    result = await make(transport).call_endpoint(req, features)
    assert result.deployment.name == "rr"
    assert transport.calls[0][0] == "rr"
    assert result.completion.body["results"][0]["index"] == 0
    assert result.completion.usage.search_units == 3  # the provider's own count, not the estimate
    assert result.cost_usd == pytest.approx(3 * 2.0 / 1000)


async def test_an_endpoint_fails_over_and_is_never_hedged() -> None:
    transport = RecordingTransport({"rr": [ErrorKind.SERVER]}, delay_s=0.02)
    req, features = rerank()
    result = await make(transport).call_endpoint(req, features)
    assert result.deployment.name == "rr2"
    assert [host for host, _ in transport.calls] == ["rr", "rr2"]
    assert not any(r.hedge for r in result.records)


async def test_an_endpoint_the_adapter_does_not_serve_is_a_400_before_any_call() -> None:
    """The loader refuses a deployment whose kind its adapter does not serve (tests/unit/config); the executor
    still guards the call, e.g. against an outside adapter's `endpoints` that do not match its kind."""
    transport = RecordingTransport()
    units = Usage(images=1)
    req = EndpointRequest(endpoint="images/generations", model="unserved", fields={"prompt": "a cat"}, units=units)
    with pytest.raises(ProviderError) as info:
        await make(transport).call_endpoint(req, RequestFeatures(kind="rerank", units=units))
    assert info.value.kind is ErrorKind.BAD_REQUEST and "does not serve /v1/images/generations" in info.value.message
    assert transport.calls == []
