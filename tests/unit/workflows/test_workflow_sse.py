"""The HTTP backend's streamed calls against a local fake gateway: deltas in order, the priced usage chunk,
and every broken stream (an error event, no `[DONE]`, a malformed chunk, an over-long line, a bad price)
failing the call as a retryable ProviderError or reading as an unknown price, never a traceback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from modelyard.schema.errors import ProviderError
from modelyard.workflows import sse
from modelyard.workflows.backend import HttpBackend, ModelCall
from tests.unit.workflows.helpers import served

HEADERS = {"x-modelyard-model": "small@openai", "x-modelyard-attempts": "2"}


def _chunk(text: str) -> bytes:
    body = {"model": "sim-small", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage(cost: Any) -> bytes:
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "cost": cost}
    return b"data: " + json.dumps({"model": "sim-small", "choices": [], "usage": usage}).encode() + b"\n\n"


STREAMS: dict[str, list[bytes]] = {
    "good": [_chunk("one"), _chunk(" two"), _chunk(" three"), _usage(0.00042), b"data: [DONE]\n\n"],
    "broken": [_chunk("one"), b'data: {"error": {"message": "upstream reset", "type": "api_error"}}\n\n'],
    "cut": [_chunk("one"), _chunk(" two")],
    "garbled": [_chunk("one"), b"data: {not json\n\n"],
    "long": [_chunk("x" * 600_000)[:-2], _chunk("y" * 600_000), b"data: [DONE]\n\n"],
    "endless": [_chunk("x" * 1000) for _ in range(300)],
    "nan": [_chunk("one"), b'data: {"choices": [], "usage": {"cost": NaN}}\n\n', b"data: [DONE]\n\n"],
}


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        response = web.StreamResponse(headers={"content-type": "text/event-stream", **HEADERS})
        await response.prepare(request)
        for part in STREAMS[body["model"]]:
            await response.write(part)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async with served(app) as url:
        yield url, seen


def _call(model: str) -> ModelCall:
    return ModelCall(model=model, messages=[{"role": "user", "content": "hi"}])


async def _stream(url: str, model: str, sink: Callable[[str], None]) -> Any:
    async with HttpBackend(url) as backend:
        return await backend.call_streaming(_call(model), sink)


async def test_a_streamed_call_hands_on_each_delta_and_reads_the_priced_usage(gateway: Any) -> None:
    url, seen = gateway
    pieces: list[str] = []
    answer = await _stream(url, "good", pieces.append)
    assert pieces == ["one", " two", " three"] and answer.text == "one two three"
    assert answer.usage.prompt == 9 and answer.usage.completion == 3
    assert answer.cost_usd == 0.00042 and answer.deployment == "small@openai" and answer.attempts == 2
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("model", "expect"),
    [
        ("broken", "the stream broke: upstream reset"),
        ("cut", r"ended before \[DONE\]"),
        ("garbled", "malformed chunk"),
        ("long", "over-long line"),
        ("endless", "over-long answer"),
    ],
)
async def test_a_broken_stream_fails_the_call_as_a_retryable_provider_error(
    gateway: Any, model: str, expect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_TEXT", 200_000)
    url, _ = gateway
    with pytest.raises(ProviderError, match=expect) as caught:
        await _stream(url, model, lambda _: None)
    assert caught.value.retryable


async def test_a_price_that_is_not_a_finite_number_counts_as_unknown(gateway: Any) -> None:
    url, _ = gateway
    answer = await _stream(url, "nan", lambda _: None)
    assert answer.text == "one" and answer.cost_usd == 0.0
