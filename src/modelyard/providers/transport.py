"""HTTP to providers: connection pools, timeouts, and socket failures mapped to ProviderError.

Two implementations of one small interface (`send` a whole request, `open_stream` for SSE):
- `FastTransport` (the default): `providers/http1.py`, asyncio protocols + httptools. Chosen by
  measurement: a sequential call costs ~32 µs of CPU against ~175 µs through aiohttp's ClientSession, which
  is most of a gateway's per-request budget (docs/benchmarks.md).
- `AiohttpTransport`: aiohttp's ClientSession, for what the lean client does not do: HTTP(S) proxies from
  the environment (chosen automatically when HTTP_PROXY/HTTPS_PROXY is set) or `server.http_client: aiohttp`.
Both pass one test suite (tests/unit/providers/test_transport.py). Everything provider-specific lives in
the adapters.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from modelyard.config.model import Timeouts
from modelyard.providers.base import Adapter, HttpCall, SSEEvent, StreamDecoder
from modelyard.providers.deadlines import Deadline, Deadlines
from modelyard.providers.http1 import AnswerTooLarge, Http1Client, HttpError
from modelyard.providers.sse import SSEParser
from modelyard.schema.errors import ErrorKind, ProviderError

_CONNECTION_ERRORS = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    HttpError,
    ConnectionError,
    OSError,
)


class Transport(Protocol):
    async def send(self, call: HttpCall, timeouts: Timeouts, adapter: Adapter) -> tuple[bytes, Mapping[str, str]]:
        """A whole request/response within `min(response, total)`; a non-2xx status becomes the adapter's
        ProviderError."""
        ...

    async def open_stream(
        self, call: HttpCall, timeouts: Timeouts, adapter: Adapter, decoder: StreamDecoder | None = None
    ) -> EventStream:
        """Send a streaming request and wait for its headers (bounded by the first-token timeout); `decoder`
        frames the body into events (the adapter's `StreamFraming`; None: server-sent events)."""
        ...

    async def close(self) -> None: ...


#: The default bound of a whole answer (config `server.max_answer_bytes`), and of an error body.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_ERROR_BYTES = 1024 * 1024


def make_transport(kind: str = "auto", *, pool_size: int = 1000, max_answer_bytes: int = MAX_ANSWER_BYTES) -> Transport:
    """`fast` (default), `aiohttp`, or `auto` (aiohttp when a proxy is set in the environment)."""
    if kind == "auto":
        proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
        kind = "aiohttp" if proxied else "fast"
    if kind == "aiohttp":
        return AiohttpTransport(pool_size=pool_size, max_answer_bytes=max_answer_bytes)
    if kind == "fast":
        return FastTransport(pool_size=pool_size, max_answer_bytes=max_answer_bytes)
    raise ValueError(f"unknown http client {kind!r} (fast, aiohttp or auto)")


def response_timeout(timeouts: Timeouts) -> float:
    """The bound of a whole non-streaming call: `response`, never more than `total`."""
    return min(timeouts.response, timeouts.total)


def _timeout_error(exc: BaseException, what: str) -> ProviderError:
    return ProviderError(ErrorKind.TIMEOUT, f"{what} ({_what(exc)})")


def _too_large(limit: int) -> ProviderError:
    """An answer past the bound: the provider's failure (fail over), never a gateway out of memory."""
    return ProviderError(
        ErrorKind.SERVER, f"the provider's answer is larger than {limit} bytes (server.max_answer_bytes)"
    )


class _OpenedResponse(Protocol):
    """What both transports' responses offer once their headers are in."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def release(self) -> Any: ...


async def _raise_for_error_status(
    resp: _OpenedResponse, adapter: Adapter, read: Callable[[int], Awaitable[bytes]]
) -> None:
    """A stream opened with an error status: read its short body (at most MAX_ERROR_BYTES), free the connection,
    raise the provider's error."""
    if resp.status < 400:
        return
    try:
        body = await read(MAX_ERROR_BYTES)
    except _CONNECTION_ERRORS:
        body = b""  # an error body too large or cut: the status alone classifies it
    finally:
        resp.release()
    raise adapter.error(resp.status, resp.headers, body)


class FastTransport:
    """The default transport, on `Http1Client`."""

    def __init__(self, *, pool_size: int = 1000, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._client = Http1Client(limit_per_origin=pool_size)
        self._max_answer = max_answer_bytes
        self._deadlines = Deadlines()

    async def close(self) -> None:
        self._client.close()

    async def send(self, call: HttpCall, timeouts: Timeouts, adapter: Adapter) -> tuple[bytes, Mapping[str, str]]:
        try:
            with self._deadlines.timeout(response_timeout(timeouts)):
                resp = await self._client.request(
                    call.method, call.url, call.headers, call.body, connect_timeout=timeouts.connect
                )
                try:
                    body = await resp.read(self._max_answer if resp.status < 400 else MAX_ERROR_BYTES)
                finally:
                    resp.release()
        except TimeoutError as exc:
            raise _timeout_error(exc, "no answer within the timeout") from None
        except AnswerTooLarge as exc:
            raise _too_large(exc.limit) from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None
        if resp.status >= 400:
            raise adapter.error(resp.status, resp.headers, body)
        return body, resp.headers

    async def open_stream(
        self, call: HttpCall, timeouts: Timeouts, adapter: Adapter, decoder: StreamDecoder | None = None
    ) -> EventStream:
        deadline = self._deadlines.loop().time() + timeouts.total
        try:
            with self._deadlines.timeout(min(timeouts.first_token, timeouts.total)):
                resp = await self._client.request(
                    call.method, call.url, call.headers, call.body, connect_timeout=timeouts.connect
                )
                await _raise_for_error_status(resp, adapter, resp.read)
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise _timeout_error(exc, "no response headers within the timeout") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None
        return EventStream(
            resp.next_chunk,
            resp.close,
            resp.release,
            resp.headers,
            deadline,
            timeouts.first_token,
            decoder,
            deadlines=self._deadlines,
        )


class AiohttpTransport:
    """aiohttp's ClientSession (honours HTTP(S)_PROXY)."""

    def __init__(self, *, pool_size: int = 1000, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._max_answer = max_answer_bytes
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, ttl_dns_cache=300),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            trust_env=True,
        )
        self._timeouts: dict[tuple[float, float | None], aiohttp.ClientTimeout] = {}
        self._deadlines = Deadlines()

    async def close(self) -> None:
        await self._session.close()

    def _client_timeout(self, connect: float, total: float | None) -> aiohttp.ClientTimeout:
        """aiohttp's timeout object for these bounds, made once (requests share a handful of them)."""
        key = (connect, total)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=total, connect=connect, sock_connect=connect)
        return timeout

    async def send(self, call: HttpCall, timeouts: Timeouts, adapter: Adapter) -> tuple[bytes, Mapping[str, str]]:
        try:
            async with self._session.request(
                call.method,
                call.url,
                data=call.body,
                headers=call.headers,
                timeout=self._client_timeout(timeouts.connect, response_timeout(timeouts)),
            ) as resp:
                body = await _read_bounded(resp, self._max_answer if resp.status < 400 else MAX_ERROR_BYTES)
                if resp.status >= 400:
                    raise adapter.error(resp.status, resp.headers, body)
                return body, resp.headers
        except ProviderError:
            raise
        except AnswerTooLarge as exc:
            raise _too_large(exc.limit) from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise _timeout_error(exc, "no answer within the timeout") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None

    async def open_stream(
        self, call: HttpCall, timeouts: Timeouts, adapter: Adapter, decoder: StreamDecoder | None = None
    ) -> EventStream:
        deadline = self._deadlines.loop().time() + timeouts.total
        try:
            with self._deadlines.timeout(min(timeouts.first_token, timeouts.total)):
                resp = await self._session.request(
                    call.method,
                    call.url,
                    data=call.body,
                    headers=call.headers,
                    timeout=self._client_timeout(timeouts.connect, None),
                )
                await _raise_for_error_status(resp, adapter, lambda limit: _read_bounded(resp, limit))
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise _timeout_error(exc, "no response headers within the timeout") from None
        except _CONNECTION_ERRORS as exc:
            raise ProviderError(ErrorKind.CONNECTION, f"connection failed: {_what(exc)}") from None
        return EventStream(
            resp.content.readany,
            resp.close,
            resp.release,
            resp.headers,
            deadline,
            timeouts.first_token,
            decoder,
            deadlines=self._deadlines,
        )


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """aiohttp's body, read piece by piece up to `limit` bytes (AnswerTooLarge past it)."""
    parts: list[bytes] = []
    size = 0
    async for piece in resp.content.iter_chunked(65_536):
        size += len(piece)
        if size > limit:
            resp.close()
            raise AnswerTooLarge(limit)
        parts.append(piece)
    return b"".join(parts)


class EventStream:
    """The events of one streaming response (SSE, or the adapter's own framing); always `close()` it (or use
    `async with`)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[bytes]],
        close: Callable[[], None],
        release: Callable[[], None],
        headers: Mapping[str, str],
        deadline: float,
        first_event_timeout: float,
        decoder: StreamDecoder | None = None,
        *,
        deadlines: Deadlines,
    ) -> None:
        self._read = read
        self._deadlines = deadlines
        self._decoder = decoder
        self._close = close
        self._release = release
        self._deadline = deadline
        self._first_event_timeout = first_event_timeout
        self.headers = headers
        self.received_any = False
        self.finished = False
        #: The stream's one timer while `batches()` runs (it cancels the task iterating when it fires).
        self._timer: Deadline | None = None

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Done with the stream: the connection goes back to the pool if its response was read to the end
        (both clients check), else it is closed.

        The timer is disarmed here too: a consumer that stops iterating `batches()` early leaves the generator
        suspended inside the timer's scope, and an armed timer would later cancel whatever that task is doing
        by then (found by the fuzzer: a request cancelled while committing its spend record)."""
        timer, self._timer = self._timer, None
        if timer is not None:  # set only while the generator is inside the timer's scope
            timer.reschedule(None)
        self._release()

    async def batches(self) -> AsyncIterator[list[SSEEvent]]:
        """The events of each network read, as they arrive; raises ProviderError(timeout|connection) on
        stalls and broken sockets.

        Events come in batches, one per read, so that whatever arrived together is translated and sent
        to the client together (one write instead of one per event). A clean end of the byte stream just
        ends the iteration: whether that end was premature is the adapter's call (`finish`).
        """
        parser = self._decoder or SSEParser()
        loop = self._deadlines.loop()
        read = self._read
        # One timer for the whole stream (not one per read): first the first-event bound, then, once an
        # event has arrived, the overall deadline.
        first_deadline = min(self._deadline, loop.time() + self._first_event_timeout)
        try:
            with self._deadlines.timeout_at(self._deadline if self.received_any else first_deadline) as timer:
                self._timer = timer
                try:
                    while True:
                        data = await read()
                        if not data:
                            self.finished = True
                            break
                        events = parser.feed(data)
                        if events:
                            if not self.received_any:
                                self.received_any = True
                                timer.reschedule(self._deadline)
                            yield events
                            if self._timer is None:  # closed while suspended: stop, the timer is off
                                return
                finally:
                    self._timer = None
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
