"""Both transports (our HTTP/1.1 client and aiohttp) pass one suite: answers, pooling, errors, timeouts,
streams, TLS. Against the simulator on loopback and a few hand-rolled misbehaving servers."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from modelyard.config.model import Deployment, Timeouts
from modelyard.providers.base import HttpCall
from modelyard.providers.deadlines import Deadlines
from modelyard.providers.http1 import Http1Client
from modelyard.providers.openai import OpenAIAdapter
from modelyard.providers.transport import AiohttpTransport, EventStream, FastTransport, Transport, make_transport
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.sim.server import SimServer

ADAPTER = OpenAIAdapter()
FAST = Timeouts(connect=2, first_token=2, total=3)


@pytest.fixture(scope="module")
def sim():
    with SimServer(seed=3, instant=True) as server:
        yield server


@pytest.fixture(params=["fast", "aiohttp"])
async def transport(request) -> AsyncIterator[Transport]:
    made = FastTransport() if request.param == "fast" else AiohttpTransport()
    yield made
    await made.close()


def chat_call(base: str, *, stream: bool = False, fault: str | None = None, prompt: str = "Repeat: hi") -> HttpCall:
    dep = Deployment(
        name="d",
        provider="openai",
        model="sim-small",
        api_base=base + "/v1",
        headers={"x-sim-fault": fault} if fault else {},
    )
    raw = {"model": "x", "messages": [{"role": "user", "content": prompt}]}
    return ADAPTER.chat_call(dep, msgspec.convert(raw, ChatRequest), raw, stream)


async def test_send_and_keep_alive(sim, transport):
    for _ in range(5):
        body, headers = await transport.send(chat_call(sim.url), FAST, ADAPTER)
        assert msgspec.json.decode(body)["choices"][0]["message"]["content"] == "hi"
        assert headers["content-type"].startswith("application/json")
    if isinstance(transport, FastTransport):
        pools = list(transport._client._pools.values())
        assert len(pools) == 1 and pools[0].open == 1 and len(pools[0].idle) == 1  # one connection, reused


async def test_concurrent_requests_respect_the_pool_limit(sim):
    client = FastTransport(pool_size=4)
    try:
        results = await asyncio.gather(
            *(client.send(chat_call(sim.url, prompt=f"Repeat: n{i}"), FAST, ADAPTER) for i in range(40))
        )
        texts = sorted(msgspec.json.decode(b)["choices"][0]["message"]["content"] for b, _ in results)
        assert texts == sorted(f"n{i}" for i in range(40))
        pool = next(iter(client._client._pools.values()))
        assert pool.open <= 4 and len(pool.idle) == pool.open
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("rate_limit", ErrorKind.RATE_LIMITED),
        ("server_error", ErrorKind.SERVER),
        ("unavailable", ErrorKind.OVERLOADED),
        ("reset", ErrorKind.CONNECTION),
    ],
)
async def test_errors_are_typed(sim, transport, fault, kind):
    with pytest.raises(ProviderError) as info:
        await transport.send(chat_call(sim.url, fault=fault), FAST, ADAPTER)
    assert info.value.kind is kind
    # the pool survives a failed request
    body, _ = await transport.send(chat_call(sim.url), FAST, ADAPTER)
    assert b"hi" in body


async def test_hang_times_out(sim, transport):
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as info:
        await transport.send(chat_call(sim.url, fault="hang"), Timeouts(connect=1, first_token=0.3, total=0.3), ADAPTER)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert asyncio.get_running_loop().time() - started < 2


async def test_a_hung_non_streaming_call_times_out_after_response_not_total(sim, transport):
    """`response` bounds a whole non-streaming call (before: only `total`, 600 s by default)."""
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderError) as info:
        await transport.send(
            chat_call(sim.url, fault="hang"), Timeouts(connect=1, first_token=30, response=0.3, total=30), ADAPTER
        )
    assert info.value.kind is ErrorKind.TIMEOUT
    assert asyncio.get_running_loop().time() - started < 2


async def test_connection_refused(transport):
    with pytest.raises(ProviderError) as info:
        await transport.send(chat_call("http://127.0.0.1:9"), FAST, ADAPTER)
    assert info.value.kind is ErrorKind.CONNECTION


async def test_stream_batches_and_reuse(sim, transport):
    for _ in range(3):
        stream = await transport.open_stream(chat_call(sim.url, stream=True, prompt="Repeat: a b c"), FAST, ADAPTER)
        events = [e async for batch in stream.batches() for e in batch]
        stream.close()
        assert events[-1].data == b"[DONE]"
        text = "".join(
            (msgspec.json.decode(e.data)["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
            for e in events[:-1]
        )
        assert text == "a b c"
    if isinstance(transport, FastTransport):
        pool = next(iter(transport._client._pools.values()))
        assert pool.open == 1  # streams read to their end give their connection back


async def test_stream_error_status_and_first_event_timeout(sim, transport):
    with pytest.raises(ProviderError) as info:
        await transport.open_stream(chat_call(sim.url, stream=True, fault="rate_limit"), FAST, ADAPTER)
    assert info.value.kind is ErrorKind.RATE_LIMITED
    with pytest.raises(ProviderError) as info:
        await transport.open_stream(
            chat_call(sim.url, stream=True, fault="hang"), Timeouts(connect=1, first_token=0.3, total=5), ADAPTER
        )
    assert info.value.kind is ErrorKind.TIMEOUT


async def _serve(handler) -> tuple[asyncio.base_events.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_stale_keep_alive_connection_is_retried_once():
    """A server that closes every connection after answering, without saying so: the next request on the
    pooled (now dead) connection is retried on a fresh one instead of failing."""
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        answered += 1
        body = b'{"ok": true}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    client = Http1Client()
    try:
        for _ in range(3):
            response = await client.request("GET", f"http://127.0.0.1:{port}/x", {}, b"", connect_timeout=1)
            assert await response.read() == b'{"ok": true}'
            response.release()
            await asyncio.sleep(0.05)  # let the close arrive
        assert answered == 3
    finally:
        client.close()
        server.close()


async def test_chunked_response_and_truncated_body():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: requests one after another on this connection
            try:
                request = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if b"/cut" in request:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                await writer.drain()
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()

    server, port = await _serve(handler)
    client = Http1Client()
    try:
        response = await client.request("GET", f"http://127.0.0.1:{port}/ok", {}, b"", connect_timeout=1)
        assert await response.read() == b"hello world"
        response.release()
        response = await client.request("GET", f"http://127.0.0.1:{port}/cut", {}, b"", connect_timeout=1)
        with pytest.raises(Exception) as info:
            await response.read()
        assert "closed" in str(info.value)
    finally:
        client.close()
        server.close()


def _self_signed(tmp: Path) -> tuple[Path, Path] | None:
    if shutil.which("openssl") is None:
        return None
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    done = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        capture_output=True,
    )
    return (cert, key) if done.returncode == 0 else None


async def test_tls(tmp_path):
    pair = _self_signed(tmp_path)
    if pair is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS test")
    cert, key = pair
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
        await writer.drain()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client = Http1Client(ssl_context=client_ctx)
    try:
        response = await client.request("GET", f"https://localhost:{port}/", {}, b"", connect_timeout=2)
        assert await response.read() == b"secure"
        response.release()
        untrusted = Http1Client()  # the system trust store does not know our certificate
        with pytest.raises(ssl.SSLError):
            await untrusted.request("GET", f"https://localhost:{port}/", {}, b"", connect_timeout=2)
        untrusted.close()
    finally:
        client.close()
        server.close()


def test_make_transport_picks_aiohttp_behind_a_proxy(monkeypatch):
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)

    async def kinds() -> tuple[type, type, type]:
        plain = make_transport("auto")
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        proxied = make_transport("auto")
        forced = make_transport("fast")
        for t in (plain, proxied, forced):
            await t.close()
        return type(plain), type(proxied), type(forced)

    assert asyncio.run(kinds()) == (FastTransport, AiohttpTransport, FastTransport)


async def test_a_stream_left_mid_iteration_and_closed_never_cancels_its_task_later() -> None:
    """The stream's one timer spans the generator's yields; a consumer that stops early and closes the stream
    must not be cancelled when the (now irrelevant) deadline passes."""
    chunks = [b'data: {"a": 1}\n\n', b'data: {"a": 2}\n\n']

    async def read() -> bytes:
        return chunks.pop(0) if chunks else b""

    loop = asyncio.get_running_loop()
    stream = EventStream(read, lambda: None, lambda: None, {}, loop.time() + 0.05, 0.05, deadlines=Deadlines())
    batches = stream.batches()  # kept alive, as the executor keeps it: no garbage collection closes it
    async for _ in batches:
        break  # the answer is complete as far as the consumer is concerned
    stream.close()
    await asyncio.sleep(0.15)  # past the deadline: a live timer would cancel this task here


@pytest.mark.parametrize("kind", ["fast", "aiohttp"])
async def test_an_answer_past_the_bound_fails_the_attempt_without_reading_the_rest(kind: str) -> None:
    """A provider sending more than `server.max_answer_bytes` (here 100 kB of an announced 64 MB) is a server
    error of that attempt, found as soon as the bound is passed; an error body is read up to 1 MiB only."""
    sent: dict[str, int] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        status = b"500 Internal Server Error" if b"/error" in request else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: 67108864\r\n\r\n")
        sent["bytes"] = 0
        try:
            for _ in range(1024):
                writer.write(b"x" * 65536)
                await writer.drain()
                sent["bytes"] += 65536
        except (ConnectionError, OSError):
            pass
        writer.close()

    server, port = await _serve(handler)
    transport = make_transport(kind, max_answer_bytes=100_000)
    try:
        call = HttpCall("POST", f"http://127.0.0.1:{port}/answer", {}, b"{}")
        with pytest.raises(ProviderError) as info:
            await transport.send(call, FAST, ADAPTER)
        assert info.value.kind is ErrorKind.SERVER and "larger than 100000 bytes" in info.value.message
        assert sent["bytes"] < 32 * 1024 * 1024  # the gateway stopped reading long before the 64 MB
        call = HttpCall("POST", f"http://127.0.0.1:{port}/error", {}, b"{}")
        with pytest.raises(ProviderError) as info:
            await transport.send(call, FAST, ADAPTER)
        assert info.value.kind is ErrorKind.SERVER
    finally:
        await transport.close()
        server.close()


async def test_a_reader_that_stops_reading_stops_the_upstream_not_our_memory() -> None:
    """An upstream that streams 32 MB to a reader that takes one chunk and waits (a stream pump behind a client
    that reads nothing): the connection holds at most HIGH_WATER unread bytes and one socket read, the upstream's writes
    block in TCP flow control, and everything arrives once the reader reads again."""
    from modelyard.providers import http1

    total = 32 * 1024 * 1024
    piece = b"x" * 65536
    written = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        while written < total:
            writer.write(piece)
            written += len(piece)
            await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    client = Http1Client()
    try:
        response = await client.request("GET", f"http://127.0.0.1:{port}/big", {}, b"", connect_timeout=1)
        first = await response.next_chunk()
        await asyncio.sleep(0.5)  # the reader stalls
        conn = response._conn
        assert conn._buffered <= http1.HIGH_WATER + 256 * 1024, conn._buffered  # + at most one socket read
        assert written < total // 2, written  # the upstream is held back, not drained into our memory
        received = len(first)
        while chunk := await response.next_chunk():
            received += len(chunk)
        assert received == total and conn._buffered == 0
    finally:
        client.close()
        server.close()
