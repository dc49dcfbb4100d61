"""The server protocol under drawn byte streams: valid, pipelined, truncated and broken requests, cut into
reads at drawn places. Whatever arrives, nothing escapes `data_received` (uvloop would log a fatal error and
drop the connection unanswered), every answer on the wire is a well-formed HTTP/1.1 response, answers come
in request order and never outnumber the requests, and every valid request before the first broken one is
answered."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.server.protocol import GatewayHttpProtocol

_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


class FakeTransport:
    """Collects what the protocol writes; closing is recorded, reading pauses are ignored."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed or not data, "written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers each request with its path and the length of its body, after a few loop turns that depend on
    the path (so that answers computed side by side would finish out of order)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    for _ in range(len(scope["path"]) % 4):
        await asyncio.sleep(0)
    body = b"%s %d" % (scope["path"].encode("utf-8", "replace"), size)
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": body})


def protocol(loop: asyncio.AbstractEventLoop) -> tuple[GatewayHttpProtocol, FakeTransport]:
    config = SimpleNamespace(
        loaded=True, loaded_app=echo_app, timeout_keep_alive=5, limit_concurrency=None, root_path=""
    )
    state = SimpleNamespace(connections=set(), tasks=set(), default_headers=[(b"server", b"test")], total_requests=0)
    proto = GatewayHttpProtocol(config, state, {}, loop)
    transport = FakeTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


def valid_request(path: str, body: bytes, chunked: bool) -> bytes:
    if chunked:
        framed = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return b"POST /%s HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n%s" % (path.encode(), framed)
    return b"POST /%s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


requests = st.builds(
    valid_request,
    st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=12),
    st.binary(max_size=300),
    st.booleans(),
)
garbage = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.sampled_from(
        [
            b"GET http://[::1 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid=st.lists(requests, min_size=0, max_size=6),
    tail=st.one_of(st.none(), garbage),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
)
def test_drawn_byte_streams_never_break_the_protocol(valid: list[bytes], tail: bytes | None, cuts: list[int]) -> None:
    stream = b"".join(valid) + (tail or b"")
    answers = asyncio.run(_feed(stream, sorted(set(cuts))))
    statuses = [int(m.group(1)) for m in _STATUS.finditer(answers)]
    assert len(statuses) <= len(valid) + 1
    oks = [s for s in statuses if s == 200]
    assert len(oks) <= len(valid)
    if tail is None:
        assert statuses == [200] * len(valid), answers[:500]
    # answers are in request order: the n-th 200 names the n-th request's path
    paths = re.findall(rb"\r\n\r\n/([\w-]+) \d+", answers)
    expected = [re.match(rb"POST /([\w-]+) ", request).group(1) for request in valid]  # type: ignore[union-attr]
    assert paths == expected[: len(paths)]


async def _feed(stream: bytes, cuts: list[int]) -> bytes:
    loop = asyncio.get_running_loop()
    proto, transport = protocol(loop)
    start = 0
    for cut in [*cuts, len(stream)]:
        if transport.closed:
            break
        piece = stream[start:cut]
        start = max(start, cut)
        if piece:
            proto.data_received(piece)  # must not raise, whatever the bytes
            await asyncio.sleep(0)
    for _ in range(50):  # let the request tasks answer
        await asyncio.sleep(0)
        if not proto.server_state.tasks and not proto.waiting:
            break
    proto.connection_lost(None)
    await asyncio.sleep(0)
    return bytes(transport.written)
