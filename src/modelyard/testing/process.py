"""The gateway as a real process, for tests and benchmarks that must see what a deployment sees.

An in-process server shares the test's interpreter, memory and event loop; abuse, memory and crash tests
need the real thing: `modelyard serve` in its own process, on a free loopback port, killed or stopped at
the end (`kill()` is a kill -9, for crash tests).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.request import urlopen

CLI = [sys.executable, "-m", "modelyard.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Until `url` answers 2xx (a gateway's /health/ready says 503 while it starts), or raise if `proc`
    exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urlopen(url, timeout=1):
                return
        except OSError:  # refused, or an HTTP error status
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def start_sim_process(fleet: Path, cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """`modelyard sim` with `fleet` in its own process on a free loopback port, once it answers; (process, port).
    Benchmarks run it apart so the simulator does not share the measured process's interpreter."""
    port = free_port()
    process = subprocess.Popen([*CLI, "sim", "--port", str(port), "--fleet", str(fleet)], cwd=cwd)
    try:
        wait_http(f"http://127.0.0.1:{port}/_sim/health", process)
    except RuntimeError:
        process.kill()
        raise
    return process, port


class GatewayProcess:
    """`with GatewayProcess(config_path) as gw: gw.url` — `modelyard serve` on loopback, ready when entered."""

    def __init__(
        self,
        config: Path,
        *,
        port: int | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        ready_timeout_s: float = 40.0,
    ) -> None:
        self.config = config
        self.port = port or free_port()
        self.log = log or config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> GatewayProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *CLI,
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    "--workers",
                    str(self.workers),
                ],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                with urlopen(self.url + "/health/live", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the gateway did not answer within {self.ready_timeout_s}s: {self.log_text()[-2000:]}")

    def rss_bytes(self) -> int:
        """Resident memory of the serving process (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no flush; what is not in the kernel is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
