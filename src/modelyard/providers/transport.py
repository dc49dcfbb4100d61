"""HTTP to providers: one pooled aiohttp session, timeouts, and socket failures mapped to ProviderError.

aiohttp's client was chosen by measurement: a pass-through on it does ~4x the requests/s of one on httpx
on the reference machine (see docs/benchmarks.md). Everything provider-specific lives in the adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import aiohttp

from modelyard.config.model import Timeouts
from modelyard.providers.base import Adapter, HttpCall, SSEEvent
from modelyard.providers.sse import SSEParser
from modelyard.schema.errors import ErrorKind, ProviderError

_CONNECTION_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    ConnectionError,
    OSError,
)


class Transport:
    """Owns the connection pool. Create inside a running event loop; `close()` on shutdown."""

    def __init__(self, *, pool_size: int = 1000) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, ttl_dns_cache=300),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

        self._timeouts: dict[tuple[float, float | None], aiohttp.ClientTimeout] = {}

    async def close(self) -> None:
        await self._session.close()

    def _client_timeout(self, connect: float, total: float | None) -> aiohttp.ClientTimeout:
        """aiohttp's timeout object for these bounds, made once (requests share a handful of them)."""
        key = (connect, total)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=total, connect=connect,
                                                                  sock_connect=connect)
        return timeout

    async def send(self, call: HttpCall, timeouts: Timeouts, adapter: Adapter) -> tuple[bytes, Mapping[str, str]]:
        """A whole request/response; a non-2xx status becomes the adapter's ProviderError."""
        try:
            async with self._session.request(
                call.method, call.url, data=call.body, headers=call.headers,
                timeout=self._client_timeout(timeouts.connect, timeouts.total),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise adapter.error(resp.status, resp.headers, body)
                return body, resp.headers
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderError(ErrorKind.TIMEOUT, f"no answer within the timeout ({_what(exc)})") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None

    async def open_stream(self, call: HttpCall, timeouts: Timeouts, adapter: Adapter) -> EventStream:
        """Send a streaming request and wait for its headers (bounded by the first-token timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        try:
            async with asyncio.timeout(min(timeouts.first_token, timeouts.total)):
                resp = await self._session.request(
                    call.method, call.url, data=call.body, headers=call.headers,
                    timeout=self._client_timeout(timeouts.connect, None),
                )
                if resp.status >= 400:
                    try:
                        body = await resp.read()
                    finally:
                        resp.release()
                    raise adapter.error(resp.status, resp.headers, body)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderError(ErrorKind.TIMEOUT, f"no response headers within the timeout ({_what(exc)})") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None
        return EventStream(resp, deadline, timeouts.first_token)


class EventStream:
    """The SSE events of one streaming response; always `close()` it (or use `async with`)."""

    def __init__(self, resp: aiohttp.ClientResponse, deadline: float, first_event_timeout: float) -> None:
        self._resp = resp
        self._deadline = deadline
        self._first_event_timeout = first_event_timeout
        self.headers: Mapping[str, str] = resp.headers
        self.received_any = False

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._resp.close() if not self._resp.closed else None

    def release(self) -> None:
        """Return a fully read connection to the pool."""
        self._resp.release()

    async def batches(self) -> AsyncIterator[list[SSEEvent]]:
        """The events of each network read, as they arrive; raises ProviderError(timeout|connection) on
        stalls and broken sockets.

        Events come in batches, one per read, so that whatever arrived together is translated and sent
        to the client together (one write instead of one per event). A clean end of the byte stream just
        ends the iteration: whether that end was premature is the adapter's call (`finish`).
        """
        parser = SSEParser()
        loop = asyncio.get_running_loop()
        content = self._resp.content
        try:
            while True:
                remaining = self._deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                wait = remaining if self.received_any else min(remaining, self._first_event_timeout)
                async with asyncio.timeout(wait):
                    data = await content.readany()
                if not data:
                    break
                events = parser.feed(data)
                if events:
                    self.received_any = True
                    yield events
            tail = parser.flush()
            if tail:
                yield tail
        except (TimeoutError, aiohttp.ServerTimeoutError):
            what = "between stream events" if self.received_any else "before the first stream event"
            raise ProviderError(ErrorKind.TIMEOUT, f"stream timed out {what}") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"stream broken: {_what(exc)}") from None


def _what(exc: BaseException) -> str:
    """A short description of a socket error that cannot leak credentials (no URL with query strings)."""
    text = type(exc).__name__
    detail = str(exc)
    if detail and "key=" not in detail and "@" not in detail:
        text = f"{text}: {detail[:200]}"
    return text
