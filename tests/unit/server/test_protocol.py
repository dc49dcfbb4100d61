"""The gateway's HTTP/1.1 server protocol (server/protocol.py) over real sockets: framing, keep-alive,
pipelining, 100-continue, HEAD, failures of the app, header injection, backpressure, disconnects, and the
deadlines for slow and idle clients."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from modelyard.server.background import BackgroundServer
from modelyard.server.protocol import MAX_PIPELINED, GatewayHttpProtocol

PIECE = b"x" * 65536
#: Response headers an app must not be able to send: each would split the header block or carry a control
#: character (the first three would add a `set-cookie` header of the client's or upstream's choosing).
INJECTIONS = [
    (b"x-note", b"fine\r\nset-cookie: stolen=1"),
    (b"x-note", b"fine\rset-cookie: stolen=1"),
    (b"x-note\nset-cookie", b"stolen=1"),
    (b"x-note", b"nul\x00byte"),
    (b"x-note", b"escape\x1b[0m"),
]


class App:
    """A small ASGI app whose paths each exercise one part of the protocol; records what it saw."""

    def __init__(self) -> None:
        self.sent_bytes = 0
        self.requests = 0
        self.disconnected = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        handler = getattr(self, scope["path"].strip("/").replace("-", "_"))
        await handler(scope, receive, send)

    async def echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answers with what it read; its headers are a generator (any iterable will do, as ASGI allows)."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        fields = {"method": scope["method"], "path": scope["path"], "query": scope["query_string"].decode()}
        answer = json.dumps({**fields, "body": body.decode()}).encode()
        headers = (
            (name, value)
            for name, value in ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer)))
        )
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def stream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = iter([(b"content-type", b"text/plain")])  # any iterable will do (ASGI)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def big(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Streams `query` pieces of 64 KiB, as fast as the protocol lets it."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(int(scope["query_string"])):
            await send({"type": "http.response.body", "body": PIECE, "more_body": True})
            self.sent_bytes += len(PIECE)
        await send({"type": "http.response.body", "body": b""})

    async def slow(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(float(scope["query_string"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def late_echo(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Works for `query` seconds before it reads the body (the protocol must not blame the client)."""
        await asyncio.sleep(float(scope["query_string"]))
        await self.echo(scope, receive, send)

    async def unframed(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """An answer of unknown length (no Content-Length): chunked in HTTP/1.1, until close in HTTP/1.0."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    async def boom(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("the app failed before answering")

    async def boom_late(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        raise ValueError("the app failed mid-answer")

    async def nothing(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    async def inject(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [INJECTIONS[int(scope["query_string"])], (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def inject_byte(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A header value with the byte the query names between two letters."""
        value = b"a" + bytes([int(scope["query_string"])]) + b"b"
        headers = [(b"x-note", value), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_disconnect(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def server(app: App, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackgroundServer]:
    monkeypatch.setattr(GatewayHttpProtocol, "header_timeout_s", 0.6)
    monkeypatch.setattr(GatewayHttpProtocol, "body_timeout_s", 0.6)
    monkeypatch.setattr(GatewayHttpProtocol, "max_header_bytes", 8192)
    with BackgroundServer(app, keep_alive_s=1) as running:
        yield running


def connect(server: BackgroundServer) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response (status line, headers, body by Content-Length or chunked) from a kept-alive connection."""
    while b"\r\n\r\n" not in buffered:
        buffered += _recv(sock)
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    buffered[:] = rest
    status, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    if b"content-length" in headers:
        size = int(headers[b"content-length"])
        while len(buffered) < size:
            buffered += _recv(sock)
        body = bytes(buffered[:size])
        del buffered[:size]
        return status, headers, body
    if headers.get(b"transfer-encoding") != b"chunked":
        return status, headers, b""  # a 204 or 304
    body = b""
    while True:
        while b"\r\n" not in buffered:
            buffered += _recv(sock)
        size_line, _, _ = bytes(buffered).partition(b"\r\n")
        size = int(size_line, 16)
        while len(buffered) < len(size_line) + 2 + size + 2:
            buffered += _recv(sock)
        body += bytes(buffered[len(size_line) + 2 : len(size_line) + 2 + size])
        del buffered[: len(size_line) + 2 + size + 2]
        if size == 0:
            return status, headers, body


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed by the server")
    return chunk


def request(path: str, body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


# framing, keep-alive, pipelining


def test_requests_on_one_kept_alive_connection_are_answered_in_order(server: BackgroundServer) -> None:
    with connect(server) as sock:
        buffered = bytearray()
        for n in range(3):
            sock.sendall(request(f"/echo?n={n}", b"hello %d" % n))
            status, headers, body = read_response(sock, buffered)
            assert status == b"HTTP/1.1 200 OK"
            assert json.loads(body) == {"method": "POST", "path": "/echo", "query": f"n={n}", "body": f"hello {n}"}
            assert b"connection" not in headers


def test_pipelined_requests_are_answered_in_order(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/echo?first", b"a") + request("/echo?second", b"bb"))
        buffered = bytearray()
        first = json.loads(read_response(sock, buffered)[2])
        second = json.loads(read_response(sock, buffered)[2])
    assert (first["query"], first["body"]) == ("first", "a")
    assert (second["query"], second["body"]) == ("second", "bb")


def test_a_pipelined_request_waits_behind_a_slow_answer_past_its_header_deadline(server: BackgroundServer) -> None:
    """The second request is complete but unanswered for 1.2 s (twice the header deadline): not the client's
    delay, so no 408."""
    with connect(server) as sock:
        sock.sendall(
            b"GET /slow?1.2 HTTP/1.1\r\nhost: test\r\n\r\n" + b"GET /echo?after HTTP/1.1\r\nhost: test\r\n\r\n"
        )
        buffered = bytearray()
        assert read_response(sock, buffered)[0] == b"HTTP/1.1 204 No Content"
        status, _, body = read_response(sock, buffered)
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["query"] == "after"


def test_a_pipelined_request_in_pieces_is_not_timed_out_while_the_answer_before_it_is_slow(
    server: BackgroundServer,
) -> None:
    """Half of the second request's headers wait 1.5 s (over twice the header deadline) behind a slow answer,
    the rest is sent once that answer is in: served, not a 408."""
    with connect(server) as sock:
        sock.sendall(b"GET /slow?1.5 HTTP/1.1\r\nhost: test\r\n\r\n" + b"GET /echo?after HTTP/1.1\r\nho")
        buffered = bytearray()
        assert read_response(sock, buffered)[0] == b"HTTP/1.1 204 No Content"
        sock.sendall(b"st: test\r\n\r\n")
        status, _, body = read_response(sock, buffered)
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["query"] == "after"


def test_past_the_pipelining_limit_the_read_requests_are_answered_in_order_then_the_connection_closes(
    server: BackgroundServer,
) -> None:
    """One answered, 32 queued, the 33rd past the limit: 33 answers in order, then the connection closes
    (no refusal ahead of earlier answers; the client retries what was not answered)."""
    echoes = b"".join(request(f"/echo?{n}", b"x") for n in range(MAX_PIPELINED + 1))
    with connect(server) as sock:
        sock.sendall(b"GET /slow?0.3 HTTP/1.1\r\nhost: test\r\n\r\n" + echoes)
        buffered = bytearray()
        assert read_response(sock, buffered)[0] == b"HTTP/1.1 204 No Content"
        queries = [json.loads(read_response(sock, buffered)[2])["query"] for _ in range(MAX_PIPELINED)]
        assert queries == [str(n) for n in range(MAX_PIPELINED)]
        assert read_all(sock) == bytes(buffered) == b""


def test_a_broken_request_after_a_valid_one_leaves_the_valid_ones_answer_first(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /slow?0.2 HTTP/1.1\r\nhost: test\r\n\r\n" + b"NOT HTTP\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 204 No Content")
    assert b"400" not in answer  # the answer first; what could not be read is dropped with the connection


@pytest.mark.parametrize("start", [b"POST /echo?outer", b"CONNECT /echo?outer"])
def test_an_upgrade_request_with_a_body_is_refused_and_nothing_in_it_is_served(
    server: BackgroundServer, app: App, start: bytes
) -> None:
    """httptools stops at an Upgrade (or CONNECT) request's head: its body would otherwise be parsed as a
    request of its own (a smuggled request)."""
    smuggled = request("/echo?smuggled", b"s")
    head = b" HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: h2c\r\ncontent-length: %d\r\n\r\n" % len(smuggled)
    with connect(server) as sock:
        sock.sendall(start + head)
        time.sleep(0.2)
        sock.sendall(smuggled)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "upgrade_unsupported"
    assert b"smuggled" not in answer and app.requests == 0


def test_an_upgrade_request_without_a_body_is_served_as_http_1_1_and_is_the_last(server: BackgroundServer) -> None:
    upgrade = b"GET /echo?upgrade HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(upgrade + request("/echo?after", b"a"))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in answer and b'"query": "upgrade"' in answer
    assert b"after" not in answer


def test_a_chunked_request_body_arrives_whole(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        body = read_response(sock, bytearray())[2]
    assert json.loads(body)["body"] == "hello world"


def test_a_large_body_in_many_reads_arrives_whole(server: BackgroundServer) -> None:
    payload = b"y" * (5 * 1024 * 1024)
    with connect(server) as sock:
        sock.sendall(request("/echo", payload))
        body = read_response(sock, bytearray())[2]
    assert json.loads(body)["body"] == payload.decode()


def test_a_pipelined_body_is_not_timed_out_while_the_server_holds_it_unread(server: BackgroundServer) -> None:
    """The second request's body arrives after 0.2 s, while the first answer takes 1.5 s (over twice the body
    deadline) and reading is paused behind it: the server's delay, not the client's."""
    with connect(server) as sock:
        sock.sendall(b"GET /slow?1.5 HTTP/1.1\r\nhost: t\r\n\r\n" + request("/echo?second", b"12345")[:-5])
        time.sleep(0.2)
        sock.sendall(b"12345")
        buffered = bytearray()
        assert read_response(sock, buffered)[0] == b"HTTP/1.1 204 No Content"
        status, _, body = read_response(sock, buffered)
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == "12345"


def test_a_large_body_read_late_by_a_busy_handler_is_not_timed_out(server: BackgroundServer) -> None:
    """300 KB (over the 64 KiB read-ahead, so reading pauses) to a handler that reads it after 1.2 s."""
    payload = b"z" * 300_000
    with connect(server) as sock:
        sock.sendall(request("/late-echo?1.2", payload))
        status, _, body = read_response(sock, bytearray())
    assert status == b"HTTP/1.1 200 OK" and len(json.loads(body)["body"]) == len(payload)


def test_expect_100_continue_to_a_busy_handler_is_not_timed_out(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client waits for the 100 Continue, which the handler asks for only after 2 s, longer than the body
    deadline (1.5 s here: after the 100 Continue the client has that long to send, which a loaded CI machine
    can take more than the other tests' 0.6 s to do)."""
    monkeypatch.setattr(GatewayHttpProtocol, "body_timeout_s", 1.5)
    with connect(server) as sock:
        sock.sendall(request("/late-echo?2.0", extra="expect: 100-continue\r\n").replace(b"length: 0", b"length: 4"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        status, _, body = read_response(sock, bytearray())
    assert status == b"HTTP/1.1 200 OK" and json.loads(body)["body"] == "body"


def test_expect_100_continue_gets_the_interim_answer_before_the_body_is_sent(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            request("/echo", extra="expect: 100-continue\r\n").replace(b"content-length: 0", b"content-length: 4")
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        body = read_response(sock, bytearray())[2]
    assert json.loads(body)["body"] == "body"


def test_head_gets_the_headers_and_no_body(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nhost: test\r\n\r\n" + request("/echo?next", b"z"))
        answer = b""
        while answer.count(b"HTTP/1.1 200 OK") < 2 or not answer.endswith(b"}"):
            answer += _recv(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert b"content-length: " in head
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body bytes between the HEAD's headers and the next answer


def test_a_streamed_answer_without_a_length_is_chunked_and_terminated(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/stream", method="GET"))
        _, headers, body = read_response(sock, bytearray())
    assert headers[b"transfer-encoding"] == b"chunked"
    assert body == b"one two three"


def test_an_http_1_0_answer_of_unknown_length_ends_with_the_connection_not_chunks(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /unframed HTTP/1.0\r\n\r\n")
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert body == b"ab"


def test_http_1_0_gets_its_answer_and_a_closed_connection(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in answer
    assert answer.endswith(b'"body": "hi"}')


# the app failing


def test_an_app_that_fails_before_answering_is_a_500_and_a_closed_connection(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/boom"))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert answer.endswith(b"\r\n\r\nInternal Server Error")
    assert b"Traceback" not in answer and b"ValueError" not in answer


def test_an_app_that_fails_mid_answer_closes_the_connection(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/boom-late"))
        answer = read_all(sock)  # returns: the connection is closed, not left hanging
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"half" in answer and not answer.endswith(b"0\r\n\r\n")  # never the terminating chunk


def test_an_app_that_returns_without_answering_is_a_500(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/nothing"))
        assert read_all(sock).startswith(b"HTTP/1.1 500 ")


@pytest.mark.parametrize("case", range(len(INJECTIONS)))
def test_a_header_that_would_split_the_block_or_carries_a_control_character_is_refused(
    server: BackgroundServer, case: int
) -> None:
    with connect(server) as sock:
        sock.sendall(request(f"/inject?{case}"))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"set-cookie" not in answer.lower() and b"x-note" not in answer


#: What RFC 9110 refuses in a field value: every control byte but horizontal tab, and DEL. CR and LF are
#: refused too, as lines of their own (INJECTIONS above).
REFUSED_BYTES = frozenset([*range(0x09), *range(0x0A, 0x20), 0x7F])


def test_a_header_value_is_refused_exactly_for_a_control_byte(server: BackgroundServer) -> None:
    for byte in range(256):
        with connect(server) as sock:
            sock.sendall(request(f"/inject-byte?{byte}", extra="connection: close\r\n"))
            answer = read_all(sock)
        if byte in REFUSED_BYTES:
            assert answer.startswith(b"HTTP/1.1 500 ") and b"x-note" not in answer, byte
        else:
            assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nx-note: a" + bytes([byte]) + b"b\r\n" in answer, byte


@pytest.mark.parametrize(
    "malformed",
    [b"NOT HTTP AT ALL\r\n\r\n", b"GET http://[::1 HTTP/1.1\r\nhost: x\r\n\r\n", b"GET /\xff\xfe HTTP/1.1\r\n\r\n"],
    ids=["not-http", "unparsable-absolute-url", "non-ascii-path"],
)
def test_a_malformed_request_is_a_400_in_the_api_error_shape(server: BackgroundServer, malformed: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(malformed)
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert json.loads(body)["error"]["code"] == "invalid_request"


# slow, idle, gone and greedy clients


def test_a_silent_connection_gets_a_408_after_the_header_deadline(server: BackgroundServer) -> None:
    started = time.monotonic()
    with connect(server) as sock:
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert 0.5 <= time.monotonic() - started < 3


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: BackgroundServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        answer = b""
        for byte in b"GET /echo HTTP/1.1\r\nhost: test\r\nx-slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.02)
            if time.monotonic() - started > 1.5:
                break
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request headers not received within 0.6 s" in answer


def test_a_body_that_stops_arriving_is_cut_off(server: BackgroundServer, app: App) -> None:
    with connect(server) as sock:
        sock.sendall(request("/echo", b"12345")[:-3])  # two of five body bytes, then nothing
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 0.6 s" in answer


def test_an_oversized_header_block_in_one_read_is_a_431(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_an_oversized_header_block_is_a_431(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: test\r\n" + b"x-big: " + b"a" * 9000 + b"\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(request("/echo", b"a"))
        read_response(sock, bytearray())
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed, without an answer
    assert 0.8 <= time.monotonic() - started < 2.5


def test_an_answer_that_takes_longer_than_every_deadline_is_not_cut_off(server: BackgroundServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /slow?1.5 HTTP/1.1\r\nhost: test\r\n\r\n")
        assert read_response(sock, bytearray())[0] == b"HTTP/1.1 204 No Content"


def test_a_client_that_goes_away_is_seen_as_a_disconnect(server: BackgroundServer, app: App) -> None:
    with connect(server) as sock:
        sock.sendall(request("/wait-disconnect"))
        time.sleep(0.2)
    assert app.disconnected.wait(5)


def test_a_client_that_does_not_read_holds_back_the_app_not_memory(server: BackgroundServer, app: App) -> None:
    """25 MB offered by an app that never yields on its own, the client reads nothing for a second: the app
    is held at the transport's write buffer, then everything arrives once the client reads."""
    pieces = 400
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big?%d HTTP/1.1\r\nhost: test\r\n\r\n" % pieces)
        time.sleep(1.0)
        held_at = app.sent_bytes
        received = 0
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            chunk = _recv(sock)
            received += len(chunk)
            tail = (tail + chunk)[-16:]
    assert held_at < 4 * 1024 * 1024, held_at
    assert app.sent_bytes == pieces * len(PIECE)
    assert received > pieces * len(PIECE)  # every piece, with its framing


def test_over_the_concurrency_limit_is_a_503(app: App) -> None:
    with BackgroundServer(app, limit_concurrency=2) as server, connect(server) as first:
        first.sendall(b"GET /slow?0.5 HTTP/1.1\r\nhost: test\r\n\r\n")
        time.sleep(0.1)
        with connect(server) as second:  # two connections and a request in flight: over the limit of two
            second.sendall(b"GET /echo HTTP/1.1\r\nhost: test\r\n\r\n")
            assert read_all(second).startswith(b"HTTP/1.1 503 ")
        assert read_response(first, bytearray())[0] == b"HTTP/1.1 204 No Content"


# the per-request cost: no timer per request on a busy connection


def test_a_busy_kept_alive_connection_arms_no_timer_per_request(
    server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = server.loop
    assert loop is not None
    armed = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None).__class__ is GatewayHttpProtocol:
            armed.append(when)
        return real_call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    with connect(server) as sock:
        buffered = bytearray()
        for n in range(200):
            sock.sendall(request("/echo", b"%d" % n))
            read_response(sock, buffered)
    assert 1 <= len(armed) <= 2, armed  # the connection's first deadline, and at most one re-arm
