"""Running the simulator: `run_sim` for the CLI, `SimServer` for tests (uvicorn in a background thread).

    with SimServer(instant=True) as sim:            # or: async with SimServer(...) as sim:
        client = openai.OpenAI(base_url=sim.openai_base, api_key="any")
        ...
        sim.set_faults("sim-small", rate_limit=0.3)
        assert sim.stats()["models"]["sim-small"]["requests"] == 1

`SimServer` binds a free loopback port before it starts, waits until the port answers, and shuts down
promptly even with hanging requests in flight (they are released first, then uvicorn's graceful
shutdown is bounded).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from modelyard.sim.app import SimApp, create_app
from modelyard.sim.asgi import quiet_server_aborts
from modelyard.sim.fleet import Fleet, default_fleet, load_fleet

T = TypeVar("T")

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


class _Uvicorn(uvicorn.Server):
    """uvicorn, releasing the simulator's hanging requests before it waits for connections to close."""

    def __init__(self, config: uvicorn.Config, app: SimApp) -> None:
        super().__init__(config)
        self.sim_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.sim_app.release()
        await super().shutdown(sockets)


def _load(fleet: Fleet | str | os.PathLike[str] | None) -> Fleet:
    if fleet is None:
        return default_fleet()
    if isinstance(fleet, Fleet):
        return fleet
    return load_fleet(Path(fleet))


def run_sim(
    host: str = "127.0.0.1",
    port: int = 9000,
    fleet_path: str | os.PathLike[str] | None = None,
    seed: int | None = None,
) -> None:
    """Serve the simulator until interrupted (`modelyard sim --port 9000 [--fleet FILE] [--seed N]`)."""
    app = create_app(_load(fleet_path), seed)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    _Uvicorn(config, app).run()


class SimServer:
    """The simulator on a free loopback port, in a background thread; a sync and async context manager.

    `fleet` is a Fleet, a YAML path or None (the built-in fleet); `seed` defaults to the fleet's own.
    `instant=True` removes all latency (ttft 0, instant generation): what most tests want, since the
    built-in fleet is realistic (sim-large: 400 ms to the first token, 60 tokens/s).
    """

    def __init__(
        self,
        fleet: Fleet | str | os.PathLike[str] | None = None,
        seed: int | None = None,
        *,
        instant: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        loaded = _load(fleet)
        self.fleet = loaded.instant() if instant else loaded
        self.app: SimApp = create_app(self.fleet, seed)
        self.host = host
        self.port = 0
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url

    @property
    def gemini_base(self) -> str:
        return self.url + "/v1beta"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimServer:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="on",
            log_config=None,
            timeout_graceful_shutdown=2,
        )
        self._server = _Uvicorn(config, self.app)
        quiet_server_aborts()
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"sim-{self.port}", daemon=True)
        self._thread.start()
        self._wait_ready(sock)
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            assert self._server is not None
            loop.run_until_complete(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced by start() or stop()
            self._error = exc
        finally:
            sock.close()
            loop.close()

    def _wait_ready(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        assert self._server is not None and self._thread is not None
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the simulator did not start on {self.url}: {self._error!r}")
            time.sleep(0.005)
        with socket.create_connection((self.host, self.port), timeout=_START_TIMEOUT):
            pass

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        self._server = self._thread = self._loop = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ control (runs on the server's loop)

    def stats(self) -> dict[str, Any]:
        """Per-model counters: requests, successes, faults by kind, tokens in/out, requests by wire, what the
        rate limit accepted and refused, and the peak admitted rates (`max_per_second`, `max_per_minute`)."""
        return self._on_loop(lambda: self.app.stats.snapshot())

    def reset(self) -> None:
        """Zero the stats and the request counters (a seed then replays from its start)."""
        self._on_loop(self.app.reset)

    def set_faults(self, model: str, **rates: float) -> None:
        """Change fault rates of `model` at run time, e.g. `set_faults("sim-small", rate_limit=0.3)`."""
        self._on_loop(lambda: self.app.patch(model, {"faults": rates}))

    def add_answer_keys(self, path: str | os.PathLike[str]) -> int:
        """Answer the cases of this acceptance suite file (`SimApp.add_answer_keys`); the number of cases read."""
        return self._on_loop(lambda: self.app.add_answer_keys(path))

    def set_model(self, model: str, **changes: Any) -> None:
        """Change any field of `model` at run time, e.g. `set_model("sim-large", ttft_ms=50)`."""
        self._on_loop(lambda: self.app.patch(model, changes))

    def _on_loop(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=5)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
