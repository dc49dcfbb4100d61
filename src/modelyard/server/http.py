"""Minimal ASGI plumbing for the hot path: read a bounded body, send JSON and SSE, map errors.

The gateway answers a handful of routes; a framework router and middleware stack would cost more per
request than everything here together (measured: docs/benchmarks.md), so this module is the framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import msgspec

from modelyard.schema.errors import GatewayError, ModelyardError

T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

_encode = msgspec.json.Encoder().encode


class Request:
    """One HTTP request: scope accessors, a size-limited body, and whether the response has started."""

    __slots__ = ("_headers", "_start", "receive", "scope", "send", "started")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = False
        self._headers: dict[bytes, bytes] | None = None
        #: A streamed response's status and headers, sent with its first body bytes (`send_body`).
        self._start: Message | None = None

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased header names → values (the last one wins for repeats)."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]}

    def header(self, name: bytes | str) -> str | None:
        """One header's value; `name` lower-case (bytes avoid an encode per call on the hot path)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = dict(self.scope["headers"])
        value = headers.get(name if isinstance(name, bytes) else name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    async def respond(self, status: int, body: bytes, headers: Headers) -> None:
        """A whole response in two ASGI messages, with its Content-Length (no chunked framing)."""
        self.started = True
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def start_stream(self, headers: Headers) -> None:
        """Commit to a 200 response in pieces; its headers leave with the first piece (`send_body`), so an
        answer that is ready at once is one write, not headers first and the body a loop turn later."""
        self.started = True
        self._start = {"type": "http.response.start", "status": 200, "headers": headers}

    async def send_body(self, body: bytes, more_body: bool = False) -> None:
        """One piece of a streamed response (after `start_stream`); the last one has `more_body` False."""
        start = self._start
        if start is not None:
            self._start = None
            await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def flush_start(self) -> None:
        """Send a started stream's headers if no piece has been sent (a stream that ends without a byte)."""
        start = self._start
        if start is not None:
            self._start = None
            await self.send(start)

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        raw = self.scope.get("query_string", b"").decode("latin-1")
        return dict(parse_qsl(raw))

    async def body(self, limit: int) -> bytes:
        """The whole body, or a 413 as soon as it exceeds `limit` bytes (announced or actual).

        A body that arrives too slowly is cut off by the server's protocol (server/protocol.py: a 408 and a
        closed connection, seen here as a disconnect), not by a timer here: that costs no timer per request."""
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        raise too_large(limit)
                except ValueError:
                    raise GatewayError(400, "Invalid Content-Length header") from None
        first = await self.receive()
        if first["type"] == "http.disconnect":  # gone, or cut off by the server's body deadline
            raise ClientGone
        body = first.get("body", b"")
        if not first.get("more_body"):
            if len(body) > limit:
                raise too_large(limit)
            return bytes(body)
        chunks = [body]
        size = len(body)
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise too_large(limit)
            chunks.append(part)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def gone(self) -> None:
        """Raises `ClientGone` once the client has disconnected (the admission queue watches this while a
        request waits)."""
        await self.wait_disconnect()
        raise ClientGone

    async def wait_disconnect(self) -> None:
        """Returns when the client has gone (or the response is complete)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


class ClientGone(ModelyardError):
    """The client disconnected before we could answer."""


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body too large (limit {limit} bytes)", code="request_too_large")


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, extra: Headers | None = None) -> None:
    headers = JSON_HEADERS + extra if extra else JSON_HEADERS
    await send_bytes(send, status, _encode(obj), headers)


async def send_error(send: Send, error: GatewayError, extra: Headers | None = None) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if extra:
        headers.extend(extra)
    await send_json(send, error.status, error.to_body(), headers)


async def always(work: Awaitable[T], cleanup: Callable[[], Awaitable[object]]) -> T:
    """`try: return await work` / `finally: await cleanup()`, written for the compiled build: mypyc keeps a
    coroutine's handled exception in the thread's state, not the coroutine's, so an await inside an `except` or
    `finally` block that lets another task run leaks that exception or raises a stale one later
    (tests/e2e/test_exception_state.py). Here the cleanup is awaited after the block."""
    try:
        value = await work
    except BaseException as exc:
        failure = exc
    else:
        await cleanup()
        return value
    await cleanup()
    try:
        raise failure
    finally:
        del failure  # no cycle through its traceback to this frame


async def cancel_quietly(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` and wait until it has finished, its outcome consumed (nothing logged as never retrieved).

    It waits with `asyncio.wait` rather than `await task`: a cancellation of the caller itself still propagates
    (awaiting the task would swallow it with the task's own), and the compiled build runs it the same way in a
    `finally` block (issue #20: awaiting a cancelled task there let its `CancelledError` escape).
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()
