"""Exceptions never leak state: an arbitrary exception at any stage of an attempt gives back the deployment's
in-flight slot and its RPM/TPM window record (issue #10, item 3).

Before the fix, anything but a ProviderError or a cancellation left `in_flight` incremented for good: four
such requests took a `max_concurrency: 4` deployment offline until restart.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.providers.base import SSEEvent
from modelyard.routing.attempts import RetryPolicy
from modelyard.routing.executor import Executor
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, UserMessage
from tests.unit.routing.test_executor import FakeStream

CONFIG = """
deployments:
  - {name: a, provider: openai, model: m-a, api_base: "http://a/v1", price: {input: 1, output: 2},
     limits: {rpm: 1000, tpm: 10000000, max_concurrency: 4}}
  - {name: b, provider: openai, model: m-b, api_base: "http://b/v1", price: {input: 1, output: 2},
     limits: {rpm: 1000, tpm: 10000000, max_concurrency: 4}}
  - {name: e, provider: openai, kind: embedding, model: m-e, api_base: "http://e/v1", price: {input: 1, output: 0}}
models:
  m: {candidates: [a]}
  hedged: {candidates: [a, b], hedge_after_ms: 20}
  emb: {candidates: [e]}
"""


class Boom(RuntimeError):
    """Not a ProviderError, not a cancellation: a bug anywhere below the executor."""


def chunk(content: str, finish: str | None = None) -> bytes:
    return msgspec.json.encode(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
        }
    )


class Transport:
    """Answers well unless `fail[host]` names the stage that raises Boom, or `slow[host]` delays it."""

    def __init__(self, fail: dict[str, str], slow: dict[str, float] | None = None) -> None:
        self.fail = fail
        self.slow = slow or {}
        self.streams: list[FakeStream] = []

    async def _stage(self, url: str, stage: str) -> None:
        host = url.split("//")[1].split("/")[0]
        await asyncio.sleep(self.slow.get(host, 0))
        if self.fail.get(host) == stage:
            raise Boom(stage)

    async def send(self, call: Any, timeouts: Any, adapter: Any) -> tuple[bytes, dict[str, str]]:
        await self._stage(call.url, "send")
        if "/embeddings" in call.url:
            return msgspec.json.encode(
                {
                    "data": [{"embedding": [0.1], "index": 0}],
                    "model": "m-e",
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                }
            ), {}
        return msgspec.json.encode(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ), {}

    async def open_stream(self, call: Any, timeouts: Any, adapter: Any) -> FakeStream:
        await self._stage(call.url, "open_stream")
        stream = FakeStream([chunk("hel"), chunk("lo", "stop"), b"[DONE]"])
        self.streams.append(stream)
        return stream


class Adapter:
    """The real OpenAI adapter, with Boom injected at one named stage."""

    name = "openai"

    def __init__(self, inner: Any, stage: str | None) -> None:
        self.inner = inner
        self.stage = stage

    def _maybe(self, stage: str) -> None:
        if self.stage == stage:
            raise Boom(stage)

    def chat_call(self, *args: Any) -> Any:
        self._maybe("chat_call")
        return self.inner.chat_call(*args)

    def parse_chat(self, *args: Any) -> Any:
        self._maybe("parse")
        return self.inner.parse_chat(*args)

    def stream_translator(self, *args: Any) -> Any:
        self._maybe("stream_translator")
        translator = self.inner.stream_translator(*args)
        adapter = self

        class Translator:
            usage = property(lambda _: translator.usage)
            model = property(lambda _: translator.model)
            done = property(lambda _: translator.done)
            fed = 0

            def feed(self, event: SSEEvent) -> Any:
                self.fed += 1
                adapter._maybe("feed")
                if self.fed == 2:
                    adapter._maybe("feed_later")  # after the first chunk: the client has the stream
                return translator.feed(event)

            def finish(self) -> Any:
                adapter._maybe("finish")
                return translator.finish()

        return Translator()

    def error(self, *args: Any) -> Any:
        return self.inner.error(*args)

    def embeddings_call(self, *args: Any) -> Any:
        self._maybe("embeddings_call")
        return self.inner.embeddings_call(*args)

    def parse_embeddings(self, *args: Any) -> Any:
        self._maybe("parse_embeddings")
        return self.inner.parse_embeddings(*args)


def make(
    stage: str | None = None, fail: dict[str, str] | None = None, slow: dict[str, float] | None = None
) -> tuple[Router, Transport]:
    router = Router(parse_config(CONFIG), seed=1)
    transport = Transport(fail or {}, slow)
    router.adapters = {"openai": Adapter(router.adapters["openai"], stage)}  # type: ignore[dict-item]
    router._executor = Executor(
        transport=transport,
        adapters=router.adapters,
        health=router.health,  # type: ignore[arg-type]
        limits=router.limits,
        prices=router.table.prices,
        policy=RetryPolicy(base_s=0.001, max_backoff_s=0.002),
        rng=random.Random(0),
    )
    return router, transport


def request(model: str = "m", stream: bool = False) -> tuple[ChatRequest, dict[str, Any], RequestFeatures]:
    req = ChatRequest(model=model, messages=[UserMessage(content="hello")], stream=stream or None)
    return req, msgspec.to_builtins(req), RequestFeatures(prompt_tokens=10, max_output_tokens=20, stream=stream)


def assert_released(router: Router, *names: str, windows: bool = True) -> None:
    now = time.monotonic()
    for name in names:
        assert router.health.get(name).in_flight == 0, f"{name}: in-flight slot leaked"
        if windows:
            assert router.limits.held(name, now) == (0.0, 0.0), f"{name}: bucket share leaked"


@pytest.mark.parametrize(
    ("stage", "stream"),
    [
        ("chat_call", False),
        ("send", False),
        ("parse", False),
        ("chat_call", True),
        ("open_stream", True),
        ("stream_translator", True),
        ("feed", True),
    ],
)
async def test_an_exception_in_an_attempt_releases_slot_and_window(stage: str, stream: bool) -> None:
    adapter_stages = {"chat_call", "parse", "stream_translator", "feed"}
    router, transport = make(
        stage if stage in adapter_stages else None, fail={} if stage in adapter_stages else {"a": stage}
    )
    for _ in range(5):  # more than max_concurrency: a leak would show as a full deployment
        with pytest.raises(Boom):
            if stream:
                await router.stream(*request(stream=True))
            else:
                await router.complete(*request())
    assert_released(router, "a")
    assert all(s.closed for s in transport.streams)


async def test_an_exception_at_the_end_of_a_short_stream_releases_the_slot() -> None:
    """`finish` runs while the stream is being opened when it ends before anything of substance."""
    router, transport = make("finish")
    transport.streams.clear()

    async def one_read(call: Any, timeouts: Any, adapter: Any) -> FakeStream:
        role = msgspec.json.encode(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
            }
        )
        stream = FakeStream([role])  # nothing of substance and no [DONE]: `finish` is called
        transport.streams.append(stream)
        return stream

    transport.open_stream = one_read  # type: ignore[method-assign]
    with pytest.raises(Boom):
        await router.stream(*request(stream=True))
    assert_released(router, "a")
    assert transport.streams[0].closed


async def test_an_exception_after_the_first_chunk_releases_the_slot() -> None:
    router, transport = make("feed_later")
    result = await router.stream(*request(stream=True))
    with pytest.raises(Boom):
        async for _ in result.batches():
            pass
    assert_released(router, "a", windows=False)  # the provider served it: its request stays counted
    assert transport.streams[0].closed


@pytest.mark.parametrize("stream", [False, True])
async def test_an_exception_in_a_hedged_leg_cancels_and_releases_both_legs(stream: bool) -> None:
    router, _ = make(fail={"b": "open_stream" if stream else "send"}, slow={"a": 0.5})
    started = time.monotonic()
    with pytest.raises(Boom):
        if stream:
            await router.stream(*request("hedged", stream=True))
        else:
            await router.complete(*request("hedged"))
    assert time.monotonic() - started < 0.4  # the slow first leg was cancelled, not waited for
    assert_released(router, "b")
    assert_released(router, "a", windows=False)  # cancelled after it was sent: its request stays counted


async def test_a_cancelled_request_releases_the_leg_waiting_for_its_hedge() -> None:
    router, _ = make(slow={"a": 5})
    task = asyncio.ensure_future(router.complete(*request("hedged")))
    await asyncio.sleep(0.005)  # inside the first wait, before the hedge is due
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert_released(router, "a", windows=False)  # cancelled after it was sent: its request stays counted
    assert router.health.get("b").in_flight == 0


@pytest.mark.parametrize("stage", ["embeddings_call", "send", "parse_embeddings"])
async def test_an_exception_in_embeddings_releases_the_slot(stage: str) -> None:
    router, _ = make(stage if stage != "send" else None, fail={"e": "send"} if stage == "send" else {})
    req = EmbeddingRequest(model="emb", input="hi")
    for _ in range(3):
        with pytest.raises(Boom):
            await router.embed(req, msgspec.to_builtins(req), RequestFeatures(prompt_tokens=1, kind="embedding"))
    assert_released(router, "e", windows=False)
