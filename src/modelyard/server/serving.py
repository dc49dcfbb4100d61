"""The gateway process's own controls: SIGTERM drains, SIGHUP reloads, `--watch` reloads on file changes,
`modelyard reload --all` reaches it over Redis; and `run`, which serves it under uvicorn.

Drain (docs/operations.md): at SIGTERM `/health/ready` turns 503 at once (a load balancer stops sending new
requests), connections are still accepted for `drain.grace_s` (requests already routed here by a balancer that
has not noticed yet are served), then uvicorn closes the listening socket, lets requests and streams in flight
finish for up to `drain.deadline_s`, and runs the lifespan shutdown, which flushes the spend log to the store.
A second SIGTERM (or SIGINT) skips the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelyard.server.reload import watched_files
from modelyard.state.redis_link import replica_id

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.state.redis_reload import ReloadChannel

log = logging.getLogger("modelyard.server")

WATCH_ENV = "MODELYARD_WATCH"


class ProcessControl:
    """Signals and background reload triggers of the root gateway (started and stopped by its lifespan)."""

    def __init__(self, root: Gateway, *, signals: bool, watch: bool) -> None:
        self.root = root
        self.signals = signals
        self.watch = watch
        self.replica = replica_id()
        self.channel: ReloadChannel | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit: Callable[[int, Any], Any] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.signals:
            previous = signal.getsignal(signal.SIGTERM)
            self._exit = previous if callable(previous) else None
            loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))
        if self.watch:
            from modelyard.server.watch import watch

            self._spawn(watch(lambda: watched_files(self.root.current.config), self.reload))
        state = self.root.config.state
        if state.redis_url:
            from modelyard.state.redis_reload import ReloadChannel

            self.channel = ReloadChannel(
                state.redis_url,
                prefix=state.prefix,
                replica=self.replica,
                on_reload=self.reload_answer,
                timeout_s=state.redis_timeout_s,
            )
            await self.channel.start()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, reason: str) -> None:
        reloader = self.root.reloader
        if reloader is not None:
            await reloader.reload(reason)

    async def reload_answer(self, reason: str) -> dict[str, Any]:
        reloader = self.root.reloader
        assert reloader is not None
        return (await reloader.reload(reason)).as_dict()

    def on_sigterm(self) -> None:
        root = self.root
        grace = root.current.config.drain.grace_s
        if root.draining or grace <= 0:
            self._stop()
            return
        root.draining = True
        log.warning("SIGTERM: draining (not ready; new connections accepted for %.1fs, then refused)", grace)
        asyncio.get_running_loop().call_later(grace, self._stop)

    def _stop(self) -> None:
        """Hand over to uvicorn's own exit: stop listening, wait for requests in flight, lifespan shutdown."""
        self.root.draining = True
        if self._exit is not None:
            self._exit(signal.SIGTERM, None)
        else:  # not under uvicorn's handler: the default action
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


def run(app: str, *, workers: int, deadline_s: float, **options: Any) -> None:
    """uvicorn.run, but with `--workers N` a SIGHUP to the supervisor is passed to every worker (each reloads
    in place, keeping its state) instead of uvicorn's restart of them all; SIGTERM reaches each worker, which
    drains."""
    import uvicorn
    from uvicorn.supervisors.multiprocess import Multiprocess

    class ForwardingSupervisor(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

    # proxy_headers off: uvicorn would otherwise take the client's address and scheme from X-Forwarded-* of any
    # peer on 127.0.0.1 (a local client could pick its address and dodge the dashboard's login throttle). Whom
    # to believe is the config's choice (`ui.trusted_proxies`, server/ui/security.py), not the server's.
    options.setdefault("proxy_headers", False)
    config = uvicorn.Config(app, workers=workers, timeout_graceful_shutdown=math.ceil(deadline_s), **options)
    if workers > 1:
        ForwardingSupervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: the app or the socket is broken
