"""A lean HTTP/1.1 client for provider calls: asyncio protocols, httptools' parser, keep-alive pools.

Why not aiohttp's ClientSession for every call: measured on the reference machine, a sequential
request/response costs ~175 µs of CPU through ClientSession and ~32 µs through an asyncio Protocol with
httptools (bench/README.md has the numbers); at a gateway's request rates that difference is most of the
overhead budget. This module does only what a gateway's provider calls need: POST/GET of a body already
in memory, responses read whole or streamed, keep-alive connection reuse per origin, TLS, bounded
concurrency per origin, and clean failure (a broken connection is closed, never reused). No redirects, no
cookies, no proxies (with HTTP(S)_PROXY set, `Transport` uses aiohttp instead), no compression (it does not
ask for any).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from modelyard.schema.errors import ModelyardError

#: Unread body bytes at which a connection stops reading its socket, and at which it reads again: a client
#: that reads a stream slowly holds at most this much of the upstream's answer here, the rest waits in the
#: kernel's buffers and then the upstream's (TCP flow control), as with any proxy.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class HttpError(ModelyardError):
    """A transport-level failure (the connection broke, the response was not valid HTTP)."""


class ConnectionBroken(HttpError):
    pass


class MalformedResponse(HttpError):
    pass


class AnswerTooLarge(HttpError):
    """A whole body passed the bound it was read with (the connection is closed: the rest is not read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    authority: bytes  # the Host header, computed once (the IDNA codec is slow)

    @classmethod
    def of(cls, scheme: str, host: str, port: int) -> Origin:
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        authority = (shown if port == default else f"{shown}:{port}").encode("idna")
        return cls(scheme, host, port, authority)


@lru_cache(maxsize=1024)
def split_url(url: str) -> tuple[Origin, bytes]:
    """`https://api.x.com/v1/chat?a=1` → (Origin(https, api.x.com, 443), b"/v1/chat?a=1"); cached."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"unsupported URL scheme or host: {parts.scheme}://{parts.hostname}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin.of(parts.scheme, parts.hostname, port), target.encode("latin-1")


class Response:
    """Status and headers, then the body: whole (`read`) or as it arrives (`chunks`)."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; AnswerTooLarge (the connection closed) as soon as it passes `limit` bytes."""
        return await self._conn.read_body(limit)

    async def next_chunk(self) -> bytes:
        """The next piece of the body, b"" at its end; raises ConnectionBroken if it cannot complete."""
        return await self._conn.next_chunk()

    def release(self) -> None:
        """Give the connection back to its pool (if the body was read to the end) or close it."""
        self._conn.release()

    def close(self) -> None:
        self._conn.close()


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        #: Made in its loop (by `create_connection`), used there: asked once, not per request (each
        #: `asyncio.get_running_loop()` is a getpid system call).
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._head: asyncio.Future[Response] | None = None
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None
        self._in_use = False
        self._keep_alive = False
        #: Body bytes received and not yet read; past HIGH_WATER the socket is not read until the reader
        #: (a stream pump waiting on a slow client) has taken them down to LOW_WATER.
        self._buffered = 0
        self._paused = False

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask to upgrade
            self._fail(MalformedResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete and self._in_use:
            self._fail(ConnectionBroken(f"connection closed by the server{f': {exc}' if exc else ''}"))
        self.pool.forget(self)

    def on_message_begin(self) -> None:
        self._headers = {}
        self._complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # Read here: httptools only answers should_keep_alive() reliably before the message completes.
        self._keep_alive = self.parser.should_keep_alive()
        head = self._head
        if head is not None and not head.done():
            head.set_result(Response(self, self.parser.get_status_code(), self._headers))

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._wake()

    # ------------------------------------------------------------------ request side

    async def request(self, head: bytes, body: bytes) -> Response:
        self._in_use = True
        self._complete = False
        self._error = None
        self._chunks.clear()
        self._buffered = 0
        if self._paused:  # never left paused by an answer read to its end, but a reused connection must read
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        self._head = self._loop.create_future()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        try:
            return await self._head
        except BaseException:
            self.close()  # cancelled or failed mid-request: this connection's state is unknown
            raise

    async def read_body(self, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.next_chunk()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise AnswerTooLarge(limit)
            parts.append(chunk)

    async def next_chunk(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= LOW_WATER:
                    self._paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except BaseException:
                self.close()
                raise
            finally:
                self._waiter = None

    def release(self) -> None:
        if self._in_use and self._complete and not self._chunks and not self.closed and self._keep_alive:
            self._in_use = False
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._in_use = False
        self.pool.forget(self)

    # ------------------------------------------------------------------ helpers

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        self._wake()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class OriginPool:
    """Idle keep-alive connections to one origin, and a cap on connections open at once."""

    def __init__(self, origin: Origin, limit: int, ssl_context: ssl.SSLContext | None) -> None:
        self.origin = origin
        self.limit = limit
        self.ssl_context = ssl_context
        self.idle: deque[Connection] = deque()
        self.open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._members: set[Connection] = set()

    async def acquire(self, connect_timeout: float) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn._in_use = True
                return conn
        while self.open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
            if self.idle:
                return await self.acquire(connect_timeout)
        self.open += 1
        try:
            return await self._connect(connect_timeout)
        except BaseException:
            self.open -= 1
            self._notify()
            raise

    async def _connect(self, connect_timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: Connection(self),
                origin.host,
                origin.port,
                ssl=self.ssl_context,
                server_hostname=origin.host if self.ssl_context is not None else None,
            )
        self._members.add(conn)
        conn._in_use = True
        return conn

    def put_back(self, conn: Connection) -> None:
        self.idle.append(conn)
        self._notify()

    def forget(self, conn: Connection) -> None:
        if conn in self._members:
            self._members.discard(conn)
            self.open -= 1
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self._notify()

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self._members):
            conn.close()


class Http1Client:
    """Pools per origin. Create and use inside one event loop; `close()` on shutdown."""

    def __init__(self, *, limit_per_origin: int = 1000, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit_per_origin
        self._ssl = ssl_context
        self._pools: dict[Origin, OriginPool] = {}

    def _pool(self, origin: Origin) -> OriginPool:
        pool = self._pools.get(origin)
        if pool is None:
            context = None
            if origin.scheme == "https":
                context = self._ssl or ssl.create_default_context()
                self._ssl = context
            pool = self._pools[origin] = OriginPool(origin, self.limit, context)
        return pool

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, *, connect_timeout: float
    ) -> Response:
        """Send a request; returns once the response headers are in. Release or close the Response."""
        origin, target = split_url(url)
        head = _head(method.encode(), target, origin.authority, headers, len(body))
        pool = self._pool(origin)
        for attempt in (0, 1):
            fresh = not pool.idle
            conn = await pool.acquire(connect_timeout)
            try:
                return await conn.request(head, body)
            except ConnectionBroken:
                # A reused keep-alive connection the server had already closed: retry once on a new one.
                if attempt or fresh:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _head(method: bytes, target: bytes, authority: bytes, headers: dict[str, str], length: int) -> bytes:
    lines = [
        method,
        b" ",
        target,
        b" HTTP/1.1\r\nhost: ",
        authority,
        b"\r\ncontent-length: ",
        str(length).encode(),
        b"\r\n",
    ]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise HttpError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


Factory = Callable[[], Http1Client]
