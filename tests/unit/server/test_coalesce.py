"""The coalescing transport: one write per loop turn, order kept, close sends, abort drops."""

from __future__ import annotations

import asyncio
from typing import Any

from modelyard.server.coalesce import CoalescingTransport
from modelyard.server.http import Request


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_the_writes_of_one_turn_leave_in_one_write_in_order() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.writelines([b"hello ", bytearray(b"world")])
    assert real.writes == []
    assert transport.get_write_buffer_size() == 19 + 11
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello world"]
    transport.write(b"next turn")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next turn"]


async def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last bytes")
    transport.close()
    assert real.writes == [b"last bytes"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last bytes"]  # the scheduled flush finds nothing more

    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"dropped")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.aborted


async def test_nothing_is_written_to_a_transport_the_peer_closed() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"late")
    real.closed = True
    await asyncio.sleep(0)
    assert real.writes == []


def recording_request() -> tuple[Request, list[dict[str, Any]]]:
    """A Request whose ASGI messages are kept, in order."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    return Request({"type": "http", "headers": []}, receive, send), sent


async def test_a_stream_sends_its_headers_with_its_first_piece() -> None:
    request, sent = recording_request()
    await request.start_stream([(b"content-type", b"text/event-stream")])
    assert request.started and sent == []
    await request.send_body(b"data: 1\n\n", True)
    await request.send_body(b"data: [DONE]\n\n")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True}
    assert sent[2]["more_body"] is False
    await request.flush_start()
    assert len(sent) == 3  # already sent: nothing more


async def test_a_stream_that_ends_before_its_first_piece_still_sends_its_headers() -> None:
    request, sent = recording_request()
    await request.start_stream([])
    await request.flush_start()
    assert [m["type"] for m in sent] == ["http.response.start"]
