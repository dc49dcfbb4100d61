"""uvicorn's httptools protocol with deadlines for slow clients: request headers, request bodies, header size.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that opens a connection
and sends nothing, or sends its headers or its body a byte at a time, holds a connection, a parser and (once
the headers are in) a request task for as long as it likes: a slowloris. This protocol cuts such a client
off with a 408 (and a header block over `max_header_bytes` with a 431), then closes the connection:

- headers: from the connection's first byte (or the next request's first byte on a kept-alive connection)
  to the end of the header block, at most `header_timeout_s`;
- body: from the end of the headers to the end of the body, at most `body_timeout_s` (a 10 MB body at a
  slow client's 1 MB/s fits in the 30 s default);
- the connection is closed after either, so the request's task sees a disconnect and ends.

It costs nothing on the common path: a timer is armed only when a read ends with a request's headers or
body incomplete, which a request that arrives in one read (most API calls) never does. What it does not
cover: a client that reads the response slowly (bounded by the transport's write buffer and flow control),
and HTTP/2 or TLS handshakes (uvicorn serves neither here; put a proxy in front for those).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard.server.coalesce import CoalescingTransport


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol + header/body read deadlines and a header size cap (settings from the environment,
    set by `modelyard serve`, so that every worker process reads the same)."""

    header_timeout_s = _env_float("MODELYARD_HEADER_TIMEOUT_S", 10.0)
    body_timeout_s = _env_float("MODELYARD_BODY_TIMEOUT_S", 30.0)
    max_header_bytes = int(_env_float("MODELYARD_MAX_HEADER_BYTES", 64 * 1024))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A response's writes within one loop turn leave in one send() (server/coalesce.py).
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._arm("head")  # a connection that never sends a request is cut off too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
        elif self._in_head:
            if self._head_bytes > self.max_header_bytes:
                self._refuse(
                    431, "Request Header Fields Too Large", "request headers too large", "request_headers_too_large"
                )
            elif self._waiting_for != "head":
                self._arm("head")
        elif self._in_body:
            if self._waiting_for != "body":
                self._arm("body")
        elif self._waiting_for is not None:
            self._disarm()

    # parser callbacks: track where the current request is

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        super().on_message_complete()

    # deadlines

    def _arm(self, what: str) -> None:
        self._disarm()
        timeout = self.header_timeout_s if what == "head" else self.body_timeout_s
        self._waiting_for = what
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = None

    def _expired(self) -> None:
        what = self._waiting_for
        self._deadline = None
        self._waiting_for = None
        if self.transport.is_closing():
            return
        if what == "head" and self.cycle is not None and not self.cycle.response_complete:
            self._arm("head")  # a pipelined request waits for the answer before it: not the client's delay
            return
        if what == "head":
            message = f"request headers not received within {self.header_timeout_s:g} s"
        else:
            message = f"request body not received within {self.body_timeout_s:g} s"
        self._refuse(408, "Request Timeout", message, "request_timeout")

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        """Answer (unless the request's own response has begun) and close the connection."""
        self._disarm()
        cycle = None if self._in_head else self.cycle  # a cycle exists once a request's headers are in
        if cycle is None or not cycle.response_started:
            body = json.dumps(
                {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
            ).encode()
            head = (
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the request's task reads a disconnect; whatever it sends is dropped
            cycle.message_event.set()
        self.transport.close()
