"""The gateway's HTTP/1.1 server protocol: httptools parsing, one ASGI task per request, slow-client deadlines.

uvicorn still runs the server (sockets, `--workers`, signals, graceful shutdown, lifespan); this protocol
replaces its `HttpToolsProtocol`, which spent, per request, a timer armed and cancelled for keep-alive, two
regular expression searches per response header, an `asyncio.Event`, a twenty-field cycle object and two
copies of the body (measured: 24.5 µs of CPU a request against 20.1 here, docs/benchmarks.md, issue 20).
Here a request costs one small object, one scope dict and one task; the response's header block is checked
by counting its line ends plus one search; and one timer per connection serves every deadline, re-armed only
when it fires (at most once per deadline period, never per request).

The deadlines (each a 408, or a 431 for a header block over `max_header_bytes`, then the connection closes):
- headers: from the connection's opening (a client that never sends a byte is cut off too) or the next
  request's first byte on a kept-alive connection, to the end of the header block, at most `header_timeout_s`;
- body: from the end of the headers to the end of the body, at most `body_timeout_s`;
- an idle kept-alive connection is closed (no answer) after `timeout_keep_alive` (uvicorn's setting).
A deadline does not run while the server, not the client, holds the request back: a head or body pipelined
behind an answer, a body not read because the handler has not asked for it (reading paused at 64 KiB), a
100 Continue not yet sent; its clock restarts when the hold ends.

Requests are answered in the order they came (pipelining): at most `MAX_PIPELINED` wait behind the one being
answered, unread further. When a connection must stop being read (a broken or oversized request, one past
that limit, an `Upgrade`/CONNECT request), the requests read before it keep their answers and the connection
closes after the last of them; the refusal (a 400, 431, ...) is sent only when nothing is owed before it, as
RFC 9112 section 9.3.2 wants the client to retry what a closed connection left unanswered. An `Upgrade` or
CONNECT request is served as plain HTTP/1.1 and is the last on its connection (httptools stops parsing at
its head, so a body would be read as a request of its own: such a request with a body is a 400). An answer of
unknown length to an HTTP/1.0 request ends with the connection, not in chunks. A client's end of stream is
its disconnect (so an abandoned request stops paying upstream): a client that only half-closes gets no answer.
Not covered: a client that reads the response slowly (bounded by the transport's write buffer: a send waits
while writing is paused), HTTP/2 and TLS (put a proxy in front for those).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl, service_unavailable
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from modelyard.schema.errors import GatewayError
from modelyard.server.coalesce import CoalescingTransport

#: uvicorn's logger and message, so a failure reads the same as under uvicorn's own protocol (and the
#: simulator's filter of deliberate aborts, sim/asgi.py, still applies).
log = logging.getLogger("uvicorn.error")

#: Control bytes that may not appear in a header name or value (CR and LF are counted separately). A header
#: block holds one if deleting them shortens it: bytes.translate's table loop takes ~0.3 µs for a response's
#: ~350 bytes, where a regular expression's character class took ~1.1.
_CONTROL = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
#: The response headers the protocol acts on (framing, and whether the connection stays open).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))

_STATUS_LINES: dict[int, bytes] = {
    int(status): b"HTTP/1.1 %d %s\r\n" % (status, status.phrase.encode()) for status in HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Requests one connection may pipeline behind the one being answered (each is parsed and held until its
#: turn); past that nothing more is read: those get their answers and the connection closes (a client cannot
#: queue unbounded work, and retries what a closed connection left unanswered, RFC 9112 section 9.3.2).
MAX_PIPELINED = 32


def _unreadable() -> GatewayError:
    return GatewayError(400, "Invalid HTTP request received.", code="invalid_request")


def _headers_too_large() -> GatewayError:
    return GatewayError(431, "request headers too large", code="request_headers_too_large")


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
        "until_close",
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
        #: An HTTP/1.0 answer of unknown length: its end is the connection's close (no chunked framing there).
        self.until_close = False
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
        if self.until_close:
            if body:
                write(body)
            return
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
        if (
            block.count(b"\n") != len(lines)
            or block.count(b"\r") != len(lines)
            or len(block.translate(None, _CONTROL)) != len(block)
        ):
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
        if not framed and self.scope["method"] != "HEAD" and status not in (204, 304):
            if self.scope["http_version"] == "1.0":  # no chunked framing in HTTP/1.0 (RFC 9112 section 6.1)
                self.until_close = True
                self.keep_alive = False
            else:
                self.chunked = True
                block += b"transfer-encoding: chunked\r\n"
        if not self.keep_alive and not close:
            block += b"connection: close\r\n"
        return _status_line(status) + self.protocol.default_head() + block + b"\r\n"


class GatewayHttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (uvicorn's `http=` protocol class: same constructor, `shutdown()` and server
    state). Deadline settings come from the environment (set by `modelyard serve`) so every worker process
    reads the same. Class variables (ClassVar): `modelyard serve` and tests set them on the class, which a
    compiled build (hot_path.py) only honours for declared class variables."""

    header_timeout_s: ClassVar[float] = _env_float("MODELYARD_HEADER_TIMEOUT_S", 10.0)
    body_timeout_s: ClassVar[float] = _env_float("MODELYARD_BODY_TIMEOUT_S", 30.0)
    max_header_bytes: ClassVar[int] = int(_env_float("MODELYARD_MAX_HEADER_BYTES", 64 * 1024))

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
        #: Bytes of the current request's head: received while in it (between reads), and parsed (callbacks).
        self._head_bytes = 0
        self._head_size = 0
        #: Nothing more is read on this connection (a refusal, an upgrade, or too many pipelined requests).
        self._stopped = False
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
        """The client's end of the stream closes the connection (asyncio's default), so a request whose
        client is gone is seen as a disconnect and stops paying upstream; a client that only half-closes after
        its request gets no answer either (as under uvicorn's protocol)."""
        return None

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # what follows a refusal, an upgrade or the pipelining limit is not read
        if self._phase != "body":
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request (served as HTTP/1.1, without a body: see on_headers_complete) is the last one read
            # on this connection: httptools would parse what follows as a new request.
            self._stopped = True
        except httptools.HttpParserError as exc:
            # A callback's own refusal (a GatewayError), else unreadable bytes, or a request line our callbacks
            # cannot read (an absolute URL httptools will not parse).
            refused = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            self._refuse(refused if isinstance(refused, GatewayError) else _unreadable())
            return
        if self.transport.is_closing():
            self._wait_for(None)
        elif self._phase == "head" and self._head_bytes > self.max_header_bytes:
            self._refuse(_headers_too_large())

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
        self._head_size = 0
        if self._phase != "head":
            self._wait_for("head")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # A head that arrives whole in one read is measured here (the check between reads cannot see it).
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.max_header_bytes:
            raise _headers_too_large()
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
        http_1_0 = version == "1.0"
        exchange = Exchange(self, scope, not http_1_0 and parser.should_keep_alive(), self._expect and not http_1_0)
        if parser.should_upgrade():  # Upgrade or CONNECT: not served here, and its body is never parsed
            if self._declares_body():
                raise GatewayError(
                    400, "a request with Upgrade (or CONNECT) cannot carry a body here", code="upgrade_unsupported"
                )
            exchange.keep_alive = False
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
            raise GatewayError(429, f"more than {MAX_PIPELINED} pipelined requests", code="too_many_pipelined_requests")
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
        failed = False
        try:
            await app(exchange.scope, exchange.receive, exchange.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            failed = True  # answered after the block: no await inside one (hot_path: the compiled build)
        if failed:
            if not exchange.response_started:
                await self._send_500(exchange)
            else:
                self.transport.close()
        elif not exchange.response_started and not exchange.disconnected:
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
        if self._held_back(phase):
            deadline = now + self._limit(phase)  # held back by this server, not by the client: its clock restarts
            self._since = now
        if now < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check)
        elif phase == "idle":
            self.transport.close()
        elif phase == "head":
            self._refuse(
                GatewayError(
                    408, f"request headers not received within {self.header_timeout_s:g} s", code="request_timeout"
                )
            )
        else:
            self._refuse(
                GatewayError(408, f"request body not received within {self.body_timeout_s:g} s", code="request_timeout")
            )

    def _held_back(self, phase: str) -> bool:
        """Whether the request being read waits on this server rather than on its client: its head is
        pipelined behind an answer, or its body is not being read (reading paused behind an answer or a full
        buffer, or the 100 Continue it asked for not yet sent)."""
        if phase == "head":
            return self.current is not None and not self.current.response_complete
        incoming = self.incoming
        return phase == "body" and (self.flow.read_paused or (incoming is not None and incoming.expect_continue))

    def _last_unanswered(self) -> Exchange | None:
        """The newest request read whose answer is not complete (queued or being answered), if any."""
        if self.waiting:
            return self.waiting[-1][0]
        current = self.current
        return current if current is not None and not current.response_complete else None

    def _declares_body(self) -> bool:
        return any(
            (name == b"content-length" and value.strip(b" 0")) or name == b"transfer-encoding"
            for name, value in self._headers
        )

    def _refuse(self, error: GatewayError) -> None:
        """Stop reading this connection. Requests read before the refused one keep their answers, in order
        (RFC 9112 section 9.3.2): the connection closes after the last of them, and the refusal is not sent
        (a client retries what a closed connection left unanswered). With none, the refusal is sent in the
        API's error shape (unless the refused request's own answer has begun) and the connection closed; the
        refused request's task reads a disconnect, and whatever it sends is dropped."""
        refused = self.incoming if self._phase == "body" else None  # a request whose body could not be read
        self._wait_for(None)
        self._stopped = True
        if refused is not None and refused is not self.current:  # queued, never started: it goes
            self.waiting = deque(item for item in self.waiting if item[0] is not refused)
        last = self._last_unanswered()
        if last is not None and last is not refused:
            last.keep_alive = False
            return
        if refused is None or not refused.response_started:
            body = json.dumps(error.to_body()).encode()
            self.transport.write(
                _status_line(error.status)
                + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        if refused is not None and not refused.response_complete:
            refused.disconnected = True
            refused.wake()
        self.transport.close()
