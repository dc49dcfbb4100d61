"""One send() per event-loop turn and connection: the response's writes are joined before they leave.

The server writes a response's status line and headers as soon as `http.response.start` is sent and the body
when `http.response.body` is; a streamed answer writes its headers, then its batches. On loopback and on a
busy machine each write is a system call that also wakes the client for a partial response: measured, the
header write alone was 12% of a streamed answer's CPU (docs/benchmarks.md, issue 20). This transport keeps
what is written during one turn of the event loop and sends it at the end of that turn in one write, so a
whole answer (headers and body, or headers, every batch that arrived at once and `[DONE]`) is one send().

Nothing waits longer than the turn it was written in (the flush is a `call_soon` callback, which runs before
the loop polls for I/O again) nor once more than `FLUSH_AT` bytes wait, the order of writes is kept, `close()`
sends what is pending first and `abort()` drops it, as an abort drops the kernel's buffer. Flow control is
unchanged: the real transport calls the protocol's `pause_writing` when the flushed bytes exceed its
high-water mark, and the server protocol (server/protocol.py) waits for `resume_writing` before its next send.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Bytes held for the end of the turn at most: past this they are written at once, so the real transport
#: sees them, and calls `pause_writing` when its buffer is full, even while the writer never yields.
FLUSH_AT = 65536


class CoalescingTransport(asyncio.Transport):
    """A transport that joins the writes of one event-loop turn into one write to `transport`."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._pending_bytes = len(data)
            self._loop.call_soon(self._flush)
            return
        pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes > FLUSH_AT:
            self._flush()  # a writer that does not yield still meets the real transport's flow control

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        pending = self._pending
        self._pending = None
        if not pending or self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        pending = self._pending
        return self._transport.get_write_buffer_size() + (sum(map(len, pending)) if pending else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()
