"""Raw ASGI plumbing for the simulator: bodies in, responses and paced streams out, hangs and resets.

Raw ASGI rather than a framework because the simulator is the upstream of the gateway's overhead
benchmarks: at zero latency it must cost as little as possible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

from modelyard.schema.errors import ModelyardError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream; charset=utf-8"


class Abort(ModelyardError):
    """Raised to drop the connection mid-response; the server closes the socket (its log stays quiet)."""


class QuietAborts(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" records for deliberate `Abort`s, and only those."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, Abort)


def quiet_server_aborts() -> None:
    """Install `QuietAborts` on uvicorn's error logger once (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietAborts) for f in logger.filters):
        logger.addFilter(QuietAborts())


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return bytes(body)
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = JSON_TYPE,
) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def abort_midway(send: Send, body: bytes, content_type: bytes = JSON_TYPE) -> NoReturn:
    """Announce the whole body, send half of it, and drop the connection."""
    length = str(len(body) + 64).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", length)],
        }
    )
    if body:
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise Abort


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def wait_for_disconnect(receive: Receive, limit: float, release: asyncio.Event) -> bool:
    """Wait until the client goes away (True), or `limit` seconds pass / `release` is set (False)."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    stopper = asyncio.ensure_future(release.wait())
    try:
        done, _ = await asyncio.wait({watcher, stopper}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        stopper.cancel()
    return watcher in done and not watcher.cancelled()


async def send_stream(
    send: Send,
    frames: list[bytes],
    offsets: list[float],
    release: asyncio.Event,
    *,
    content_type: bytes = SSE_TYPE,
    abort: bool = False,
) -> None:
    """Send `frames`, frame *i* at `offsets[i]` seconds after the start (the last offset for extra frames).

    Headers go out at once; frames due at the same moment share one write. With `abort` the connection
    is dropped after the last frame instead of ending the body cleanly.
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
        }
    )
    count = len(frames)
    if not offsets or (offsets[-1] <= 0 and count):
        if abort:
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
            raise Abort
        await send({"type": "http.response.body", "body": b"".join(frames)})
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    last = len(offsets) - 1
    i = 0
    while i < count:
        due = offsets[min(i, last)]
        j = i + 1
        while j < count and offsets[min(j, last)] <= due:
            j += 1
        wait = start + due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if release.is_set():
            raise Abort
        await send({"type": "http.response.body", "body": b"".join(frames[i:j]), "more_body": True})
        i = j
    if abort:
        raise Abort
    await send({"type": "http.response.body", "body": b""})
