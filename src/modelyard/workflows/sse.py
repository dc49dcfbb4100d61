"""Reading a gateway's streamed chat answer (OpenAI SSE) into a `ModelAnswer`, deltas passed on as they come.

Bounded: a line over `MAX_LINE` bytes, an answer over `MAX_TEXT` characters, a malformed chunk, an error event
or a stream that ends without `[DONE]` each fail the call as a `ProviderError` (retryable, like any broken
upstream answer); the call's total timeout bounds the time.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from modelyard.providers.base import SSEEvent
from modelyard.providers.sse import SSEParser
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.workflows.backend import ModelAnswer, delta_texts

_DONE = b"[DONE]"
#: Far above any chunk or answer a gateway sends; a stream past them is broken or hostile.
MAX_LINE = 1 << 20
MAX_TEXT = 16 << 20


async def read_stream(response: aiohttp.ClientResponse, on_text: Callable[[str], None], started: float) -> ModelAnswer:
    """The answer of an open SSE response; the price is the `usage.cost` of the gateway's last chunk."""
    headers = {k.lower(): v for k, v in response.headers.items()}
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    model = ""
    done = False
    size = 0
    async for event in _events(response.content):
        data = event.data.strip()
        if data == _DONE:
            done = True
            break
        if not data:
            continue
        chunk = _chunk(data)
        model = str(chunk.get("model") or model)
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for text in delta_texts(chunk):
            size += len(text)
            if size > MAX_TEXT:
                raise ProviderError(ErrorKind.SERVER, "the gateway's stream sent an over-long answer")
            parts.append(text)
            on_text(text)
    if not done:
        raise ProviderError(ErrorKind.CONNECTION, "the gateway's stream ended before [DONE]")
    cost = (usage or {}).get("cost")
    return ModelAnswer(
        text="".join(parts),
        model=model,
        deployment=headers.get("x-modelyard-model") or model,
        usage=Usage.from_openai(usage),
        cost_usd=_cost(cost),
        latency_ms=(time.perf_counter() - started) * 1000,
        attempts=_attempts(headers.get("x-modelyard-attempts")),
    )


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[SSEEvent]:
    """The stream's events as they arrive (the providers' SSE framing), no line or event longer than MAX_LINE
    (the reader's own limit varies by aiohttp version)."""
    parser = SSEParser()
    async for data in content.iter_any():
        for event in parser.feed(data):
            yield event
        if len(parser.pending) > MAX_LINE:
            raise ProviderError(ErrorKind.SERVER, "the gateway's stream sent an over-long line")
    for event in parser.flush():
        yield event


def _chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ProviderError(ErrorKind.SERVER, "the gateway's stream sent a malformed chunk") from None
    if not isinstance(chunk, dict):
        raise ProviderError(ErrorKind.SERVER, "the gateway's stream sent a malformed chunk")
    error = chunk.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else None
        raise ProviderError(ErrorKind.SERVER, f"the stream broke: {message or error}")
    return chunk


def _cost(value: Any) -> float:
    """The gateway's price, if it is a finite non-negative number (anything else counts as unknown: 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return 0.0


def _attempts(value: str | None) -> int:
    try:
        return max(1, int((value or "1").split(";")[0]))
    except ValueError:
        return 1
