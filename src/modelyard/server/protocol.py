"""The gateway's HTTP/1.1 server protocol: httptools parsing, one ASGI task per request, slow-client deadlines.

uvicorn still runs the server (sockets, `--workers`, signals, graceful shutdown, lifespan); this protocol
replaces its `HttpToolsProtocol`, which spent ~30 µs of CPU a request where a bare httptools protocol spends
~7 (docs/benchmarks.md, issue 20): a timer armed and cancelled per request for keep-alive, two regular
expressions per response header, an `asyncio.Event` and a twenty-field cycle object per request, the body
copied twice. Here a request costs one small object, one scope dict and one task; the response's header
block is checked with two searches; and one timer per connection serves every deadline, re-armed only when
it fires (at most once per deadline period, never per request).

The deadlines (each a 408, or a 431 for a header block over `max_header_bytes`, then the connection closes):
- headers: from the connection's first byte (or the next request's first byte on a kept-alive connection,
  or the connection's opening: a client that never sends a byte is cut off too) to the end of the header
  block, at most `header_timeout_s`;
- body: from the end of the headers to the end of the body, at most `body_timeout_s`;
- an idle kept-alive connection is closed (no answer) after `timeout_keep_alive` (uvicorn's setting).

A pipelined request waits, unread, for the answer before it (reading pauses), and its header deadline does
not run out while it waits. What it does not cover: a client that reads the response slowly (bounded by the
transport's write buffer: a send waits while writing is paused), HTTP/2, TLS and WebSocket upgrades (put a
proxy in front for those; an `Upgrade` header is ignored and the request served as HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import urllib.parse
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl, service_unavailable
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from modelyard.schema.errors import ModelyardError
from modelyard.server.coalesce import CoalescingTransport

#: uvicorn's logger and message, so a failure reads the same as under uvicorn's own protocol (and the
#: simulator's filter of deliberate aborts, sim/asgi.py, still applies).
log = logging.getLogger("uvicorn.error")

#: Bytes that may not appear in a header name (anything but an RFC 9110 token character) or a value.
_CONTROL = re.compile(b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: The response headers the protocol acts on (framing, and whether the connection stays open).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))

_STATUS_LINES: dict[int, bytes] = {
    int(status): b"HTTP/1.1 %d %s\r\n" % (status, status.phrase.encode()) for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Requests one connection may pipeline behind the one being answered (each is parsed and held until its
#: turn); past that the connection gets a 429 and is closed (a client cannot queue unbounded work).
MAX_PIPELINED = 32


class TooManyPipelined(ModelyardError):
    """Raised from a parser callback to stop parsing a connection that pipelines past `MAX_PIPELINED`."""


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class Exchange:
    """One request and its response: the ASGI `receive` and `send` of one request's task."""

    __slots__ = (
        "_body",
        "_delivered",
        "_waiter",
        "chunked",
        "disconnected",
        "expect_continue",
        "keep_alive",
        "more_body",
        "protocol",
        "remaining",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(self, protocol: GatewayHttpProtocol, scope: dict[str, Any], keep_alive: bool, expect: bool) -> None:
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.disconnected = False
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.remaining = 0
        #: Body bytes received and not yet handed to the app: bytes, or a bytearray once more than one piece.
        self._body: bytes | bytearray = b""
        #: The last body message (`more_body` False) has been handed to the app.
        self._delivered = False
        self._waiter: asyncio.Future[None] | None = None

    # called by the protocol

    def add_body(self, data: bytes) -> int:
        """Keeps a piece of the body for the app; returns how many bytes are waiting."""
        body = self._body
        if not body:
            self._body = data
        elif isinstance(body, bytearray):
            body += data
        else:
            self._body = bytearray(body) + data
        self.wake()
        return len(self._body)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ASGI

    async def receive(self) -> dict[str, Any]:
        protocol = self.protocol
        if self.expect_continue:
            self.expect_continue = False
            if not protocol.transport.is_closing():
                protocol.transport.write(_CONTINUE)
        while not (self.disconnected or self.response_complete) and (
            self._delivered or (not self._body and self.more_body)
        ):
            if not protocol.waiting:  # requests pipelined behind this one stay unread until its answer
                protocol.flow.resume_reading()
            self._waiter = protocol.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = self._body
        self._body = b""
        if not self.more_body:
            self._delivered = True
        return {
            "type": "http.request",
            "body": body if type(body) is bytes else bytes(body),
            "more_body": self.more_body,
        }

    async def send(self, message: dict[str, Any]) -> None:
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {message['type']!r}.")
            head = self._head(message["status"], message.get("headers") or ())  # may refuse: then a 500
            self.response_started = True
            self.expect_continue = False
            protocol.transport.write(head)
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r} sent after the response completed.")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {message['type']!r}.")
        more_body = message.get("more_body", False)
        self._write_body(message.get("body", b""), more_body)
        if not more_body:
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                protocol.transport.close()
            protocol.response_complete(self)

    def _write_body(self, body: bytes, more_body: bool) -> None:
        """One piece of the body, framed as the head said (chunked, or counted against Content-Length)."""
        if self.scope["method"] == "HEAD":
            return
        write = self.protocol.transport.write
        if self.chunked:
            if body:
                frame = b"%x\r\n%b\r\n" % (len(body), body)
                write(frame if more_body else frame + b"0\r\n\r\n")
            elif not more_body:
                write(b"0\r\n\r\n")
            return
        remaining = self.remaining - len(body)
        if remaining < 0:
            raise RuntimeError("Response content longer than Content-Length")
        if remaining and not more_body:
            raise RuntimeError("Response content shorter than Content-Length")
        self.remaining = remaining
        if body:
            write(body)

    def _head(self, status: int, headers: Any) -> bytes:
        """The status line and header block; decides the framing (Content-Length or chunked) and whether the
        connection stays open. A block in which a name or value would start a line of its own (CR or LF) or
        carries another control character is refused: a 500, never a header injected from a value that an
        upstream or a client shaped. Names are written as given (ASGI's are lower-case)."""
        if not isinstance(headers, (list, tuple)):
            headers = list(headers)  # any iterable, as ASGI allows: it is read twice below
        lines = [b"%b: %b\r\n" % pair for pair in headers]
        block = b"".join(lines)
        if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines) or _CONTROL.search(block):
            raise RuntimeError("Invalid HTTP header name or value.")
        framed = close = False
        for name, value in headers:
            if name not in _FRAMING and (name.islower() or name.lower() not in _FRAMING):
                continue
            name = name.lower()
            if name == b"content-length" and not framed:
                self.remaining = int(value)
                framed = True
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.remaining = 0
                self.chunked = framed = True
            elif name == b"connection" and b"close" in [token.strip() for token in value.lower().split(b",")]:
                self.keep_alive = False
                close = True
        if not self.keep_alive and not close:
            block += b"connection: close\r\n"
        if not framed and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked = True
            block += b"transfer-encoding: chunked\r\n"
        return _status_line(status) + self.protocol.default_head() + block + b"\r\n"


class GatewayHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (uvicorn's `http=` protocol class: same constructor, `shutdown()` and server
    state). Deadline settings come from the environment (set by `modelyard serve`) so every worker process
    reads the same."""

    header_timeout_s = _env_float("MODELYARD_HEADER_TIMEOUT_S", 10.0)
    body_timeout_s = _env_float("MODELYARD_BODY_TIMEOUT_S", 30.0)
    max_header_bytes = int(_env_float("MODELYARD_MAX_HEADER_BYTES", 64 * 1024))

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.keep_alive_s = float(config.timeout_keep_alive)
        self.limit_concurrency: int | None = config.limit_concurrency
        self.root_path: str = config.root_path
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # answer the first of a pipelined pair
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        #: The request whose headers or body are being parsed (the newest), and the one being answered.
        self.incoming: Exchange | None = None
        self.current: Exchange | None = None
        #: Pipelined requests waiting for the answer before them, oldest first.
        self.waiting: deque[tuple[Exchange, Callable[..., Any]]] = deque()
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._head_bytes = 0
        # deadlines: what the connection is waiting for, since when, and the one timer that checks it
        self._phase: str | None = None
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._defaults: object = None
        self._default_head = b""

    def default_head(self) -> bytes:
        """uvicorn's default headers (`server`, `date`: its list is replaced once a second), formatted once
        per list."""
        defaults = self.server_state.default_headers
        if defaults is not self._defaults:
            self._defaults = defaults
            self._default_head = b"".join(b"%b: %b\r\n" % (name.lower(), value) for name, value in defaults)
        return self._default_head

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.server_state.connections.add(self)
        # A response's writes within one loop turn leave in one send() (server/coalesce.py).
        self.transport = CoalescingTransport(transport, self.loop)
        self.flow = FlowControl(self.transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._wait_for("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._wait_for(None)
        if self._timer is not None:
            self._timer.cancel()  # a closed connection is not kept alive by its timer
            self._timer = None
        for exchange in (self.current, self.incoming):
            if exchange is not None:
                if not exchange.response_complete:
                    exchange.disconnected = True
                exchange.wake()
        self.waiting.clear()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        in_head = self._phase != "body"
        if in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here: the request is served as HTTP/1.1 (its handler runs already)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, TooManyPipelined):
                self._refuse(429, f"more than {MAX_PIPELINED} pipelined requests", "too_many_pipelined_requests")
            else:  # a request line our callbacks cannot read (an absolute URL httptools will not parse)
                self._refuse(400, "Invalid HTTP request received.", "invalid_request")
            return
        except httptools.HttpParserError:
            self._refuse(400, "Invalid HTTP request received.", "invalid_request")
            return
        if self.transport.is_closing():
            self._wait_for(None)
        elif self._phase == "head" and self._head_bytes > self.max_header_bytes:
            self._refuse(431, "request headers too large", "request_headers_too_large")

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close an idle connection now, a busy one after its answer."""
        current = self.current
        if current is None or current.response_complete:
            self.transport.close()
        else:
            current.keep_alive = False

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect = False
        if self._phase != "head":
            self._wait_for("head")

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, which RFC 9110 excludes from a value
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        url = self._url
        if url[:1] == b"/" and b"#" not in url:
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form, asterisk-form or with a fragment
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"", parsed.query or b""
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self._headers,
            "state": self.app_state.copy(),
            "method": parser.get_method().decode("ascii"),
            "path": self.root_path + path if self.root_path else path,
            "raw_path": self.root_path.encode("ascii") + raw_path if self.root_path else raw_path,
            "query_string": query,
        }
        exchange = Exchange(self, scope, version != "1.0" and parser.should_keep_alive(), self._expect)
        self.incoming = exchange
        self._head_bytes = 0
        self._wait_for("body")
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.server_state.connections) >= limit or len(self.server_state.tasks) >= limit):
            log.warning("Exceeded concurrency limit.")
            app = service_unavailable
        current = self.current
        if current is None or current.response_complete:
            self._start(exchange, app)
        elif len(self.waiting) >= MAX_PIPELINED:
            raise TooManyPipelined  # stops the parser: data_received answers it
        else:  # pipelined: answered after the request before it; reading stays paused until then
            self.flow.pause_reading()
            self.waiting.append((exchange, app))

    def on_body(self, body: bytes) -> None:
        exchange = self.incoming
        if exchange is None or exchange.response_complete:
            return
        if exchange.add_body(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()

    def on_message_complete(self) -> None:
        exchange = self.incoming
        self._wait_for(None if self.current is not None and not self.current.response_complete else "idle")
        if exchange is None or exchange.response_complete:
            return
        exchange.more_body = False
        exchange.wake()

    # requests and answers

    def _start(self, exchange: Exchange, app: Callable[..., Any]) -> None:
        self.current = exchange
        if self._phase == "idle":
            self._wait_for(None)
        task = self.loop.create_task(self._run(exchange, app))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, exchange: Exchange, app: Callable[..., Any]) -> None:
        """The app on one request; whatever it does wrong ends as a 500 or a closed connection, never a
        request left hanging."""
        try:
            await app(exchange.scope, exchange.receive, exchange.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not exchange.response_started:
                await self._send_500(exchange)
            else:
                self.transport.close()
        else:
            if not exchange.response_started and not exchange.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500(exchange)
            elif not exchange.response_complete and not exchange.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.transport.close()

    @staticmethod
    async def _send_500(exchange: Exchange) -> None:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"21"),
            (b"connection", b"close"),
        ]
        try:
            await exchange.send({"type": "http.response.start", "status": 500, "headers": headers})
            await exchange.send({"type": "http.response.body", "body": b"Internal Server Error"})
        except RuntimeError:
            exchange.protocol.transport.close()

    def response_complete(self, exchange: Exchange) -> None:
        """An answer is out: start the next pipelined request, or wait (idle) for the next one."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.waiting:
            self._start(*self.waiting.popleft())
        elif self._phase is None:
            self._wait_for("idle")

    # deadlines

    def _wait_for(self, phase: str | None) -> None:
        """The connection now waits for `phase` ("head", "body", "idle") or for nothing (None: a request
        is being answered). One timer per connection checks it: armed only if none is, or if the new
        deadline comes before it (so a busy connection costs no timer per request)."""
        self._phase = phase
        if phase is None:
            return
        now = self._since = self.loop.time()
        deadline = now + self._limit(phase)
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check)

    def _limit(self, phase: str) -> float:
        if phase == "head":
            return self.header_timeout_s
        return self.body_timeout_s if phase == "body" else self.keep_alive_s

    def _check(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        deadline = self._since + self._limit(phase)
        if phase == "head" and self.current is not None and not self.current.response_complete:
            deadline = now + self.header_timeout_s  # pipelined behind an answer: not the client's delay
            self._since = now
        if now < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check)
        elif phase == "idle":
            self.transport.close()
        elif phase == "head":
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s", "request_timeout")
        else:
            self._refuse(408, f"request body not received within {self.body_timeout_s:g} s", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer in the API's error shape (unless an answer already on the wire has begun) and close the
        connection; a request's task reads a disconnect, and whatever it sends is dropped."""
        parsing = self.incoming if self._phase == "body" else None  # the request whose body was awaited
        self._wait_for(None)
        current = self.current
        wire_busy = current is not None and not current.response_complete and current.response_started
        if not wire_busy and (parsing is None or not parsing.response_started):
            body = json.dumps(
                {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
            ).encode()
            self.transport.write(
                _status_line(status)
                + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        for exchange in (current, self.incoming):
            if exchange is not None and not exchange.response_complete:
                exchange.disconnected = True
                exchange.wake()
        self.transport.close()
