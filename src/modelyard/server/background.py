"""Run an ASGI app under uvicorn in a background thread on a free loopback port.

Used by `modelyard demo` (simulator + gateway in one process) and by the end-to-end tests, which drive the
real server with the official SDKs over real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class BackgroundServer:
    """`with BackgroundServer(app) as server: server.url` — uvicorn with uvloop/httptools, in a thread."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        startup_timeout: float = 20.0,
        keep_alive_s: int = 5,
        limit_concurrency: int | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.keep_alive_s = keep_alive_s
        self.limit_concurrency = limit_concurrency
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def start(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.listen(2048)
        self._socket = sock
        self._port = sock.getsockname()[1]
        from modelyard.server.protocol import GatewayHttpProtocol  # the server protocol `serve` runs

        config = uvicorn.Config(
            self.app,
            loop="uvloop",
            http=GatewayHttpProtocol,
            lifespan="on",
            log_level=self.log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=self.keep_alive_s,
            limit_concurrency=self.limit_concurrency,
            proxy_headers=False,  # as `serve` runs it (server/serving.py)
        )
        self._server = uvicorn.Server(config)
        # uvicorn installs signal handlers only on the main thread, so this thread leaves them alone.
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread died during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within {self.startup_timeout}s")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        import uvloop

        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        finally:
            loop.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
