"""A logging proxy between a real client and the gateway: records exactly what the client sends.

Real clients (Claude Code, Codex CLI, the SDKs) change what they send from version to version; the only
honest way to know is to put a proxy in the middle and write every exchange down. `RecordingProxy` forwards
each request unchanged to `upstream` (streaming answers stream through, chunk by chunk) and keeps a bounded
list of `Exchange`s; `scripts/record_client.py` runs it from the command line and the client tests read it
to assert on the client's own traffic. Credentials are masked in what is kept, never in what is forwarded.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from modelyard.testing.loopback import LOOPBACK_HOST

#: Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones aiohttp recomputes: never copied across.
#: An answer keeps its content-encoding (its bytes are passed on still encoded); a request body arrives
#: decoded (aiohttp's server decodes it), so a request's content-encoding is dropped.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
_REQUEST_SKIP = _HOP | {"content-encoding"}
_SECRET = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})
#: A recorded body beyond this is cut (a streamed answer can be long; the request side never is here).
MAX_BODY = 4 * 1024 * 1024
MAX_EXCHANGES = 2000
_SESSION = web.AppKey("session", aiohttp.ClientSession)


def _masked(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if k.lower() in _SECRET else v) for k, v in headers.items()}


def _text(raw: bytes) -> str:
    """The body as text when it is UTF-8 (JSON, SSE), else `base64:` + its base64."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


@dataclass
class Exchange:
    """One request as the client sent it and the answer as the gateway gave it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: str
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""

    def json(self) -> Any:
        """The request body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        """A request header, case-insensitively."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class RecordingProxy:
    """`with RecordingProxy(upstream) as proxy: client(base_url=proxy.url)`, then `proxy.exchanges`.

    Runs its own event loop in a thread, so it serves synchronous tests and subprocess clients alike.
    """

    def __init__(self, upstream: str, *, port: int = 0, out: Path | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.out = out
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        #: Requests being forwarded: an exchange is kept after its last byte went out, a moment after the
        #: client may have read it, so `snapshot` waits for these to settle.
        self._in_flight = 0
        self._settled = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: Any = None  # the loop's asyncio.Event, created on the loop
        self._loop: Any = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.port}"

    def __enter__(self) -> RecordingProxy:
        self._thread = threading.Thread(target=self._run, name="recording-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("recording proxy did not start")
        if self._error is not None:
            raise RuntimeError("recording proxy failed to start") from self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def snapshot(self, settle_s: float = 5.0) -> list[Exchange]:
        """A copy of what was recorded, once no request is being forwarded (or after `settle_s`)."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=settle_s)
            return list(self.exchanges)

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _keep(self, exchange: Exchange) -> None:
        with self._settled:
            try:
                if len(self.exchanges) < MAX_EXCHANGES:
                    self.exchanges.append(exchange)
                if self.out is not None:
                    with self.out.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(asdict(exchange)) + "\n")
            finally:
                self._in_flight -= 1
                self._settled.notify_all()

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to __enter__ when it happens before ready
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app = web.Application(client_max_size=MAX_BODY)
            app[_SESSION] = session
            app.router.add_route("*", "/{tail:.*}", self._forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, LOOPBACK_HOST, self.port)
                await site.start()
                server = site._server
                if server is not None and self.port == 0:
                    sockets = getattr(server, "sockets", None) or []
                    self.port = int(sockets[0].getsockname()[1])
                self._ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = request.app[_SESSION]
        self._begin()
        try:
            body = await request.read()
        except BaseException:
            self._keep(Exchange(request.method, request.path_qs, _masked(dict(request.headers)), "", status=499))
            raise
        sent = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_SKIP}
        exchange = Exchange(request.method, request.path_qs, _masked(dict(request.headers)), _text(body))
        kept = bytearray()
        try:
            async with session.request(
                request.method, self.upstream + request.path_qs, headers=sent, data=body or None
            ) as upstream:
                exchange.status = upstream.status
                exchange.response_headers = dict(upstream.headers)
                answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP:
                        answer.headers.add(key, value)
                await answer.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if len(kept) < MAX_BODY:
                        kept.extend(chunk[: MAX_BODY - len(kept)])
                    await answer.write(chunk)
                await answer.write_eof()
                return answer
        except aiohttp.ClientError as exc:
            exchange.status = 502
            kept.extend(f"recording proxy: upstream failed: {exc}".encode())
            return web.Response(status=502, text=kept.decode())
        finally:
            exchange.response_body = _text(bytes(kept))
            self._keep(exchange)


def load_recording(path: Path) -> list[Exchange]:
    """The exchanges of a JSONL file written by `RecordingProxy(out=...)` / scripts/record_client.py."""
    exchanges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            exchanges.append(Exchange(**json.loads(line)))
    return exchanges
