"""The compose topology as processes on loopback: N gateways behind HAProxy, Redis, PostgreSQL, a simulator.

Containers cannot be built on the machines this project is developed and tested on, so multi-replica
behaviour (shared health and cache, reload --all, drain behind a load balancer) is tested on this instead:
`modelyard serve` per replica on its own free port, HAProxy (the distribution's package) round-robin with
health checks on /health/ready, the Redis and PostgreSQL on 127.0.0.1 (a unique key prefix and a fresh schema
per cluster, removed at the end) and the simulator as the provider.

    with Cluster(replicas=3) as cluster:          # the default config, or Cluster(config_text_or_path)
        httpx.post(cluster.url + "/v1/chat/completions", headers=cluster.headers, json=...)
        cluster.kill(1); cluster.wait_lb("r1", "DOWN")

A config given as text or a path may use `${MODELYARD_SIM_URL}`, `${MODELYARD_REDIS_URL}`,
`${MODELYARD_STATE_PREFIX}`, `${MODELYARD_SPEND_STORE}` and `${MODELYARD_SPOOL_DIR}`: each replica gets them in
its environment (its own spool directory). `scripts/cluster up --replicas 3` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import csv
import os
import secrets
import shutil
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

from modelyard.schema.errors import ModelyardError
from modelyard.sim.server import SimServer
from modelyard.testing.process import CLI, free_port

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: The response header HAProxy adds: the replica (`r0`, `r1`, ...) that served the request.
REPLICA_HEADER = "x-modelyard-replica"
#: How much of each log a failure shows.
LOG_TAIL_CHARS = 4000


class ClusterError(ModelyardError, RuntimeError):
    """The cluster could not start or did not become ready (the message carries the logs' tails)."""


def find_haproxy() -> str:
    """The HAProxy binary, or a ClusterError that says how to get it (scripts/test installs it as root)."""
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if found is None:
        raise ClusterError(
            "HAProxy is not installed: `apt-get install haproxy` (scripts/test does it when run as root); "
            "the cluster harness needs it as the load balancer"
        )
    return found


def default_config(*, redis: bool = True, postgres: bool = True) -> str:
    """Two deployments of the simulator's sim-small (two wires) under one model `chat`, shared state in Redis,
    the spend log in PostgreSQL, a short drain so a stop takes a second, not the production five."""
    lines = [
        "deployments:",
        '  - {name: small@openai, provider: openai, model: sim-small, api_base: "${MODELYARD_SIM_URL}/v1",',
        "     api_key: sk-sim, price: {input: 0.1, output: 0.4}, timeouts: {connect: 2, first_token: 5, total: 10}}",
        '  - {name: small@anthropic, provider: anthropic, model: sim-small, api_base: "${MODELYARD_SIM_URL}",',
        "     api_key: sk-sim, price: {input: 0.1, output: 0.4}, timeouts: {connect: 2, first_token: 5, total: 10}}",
        "models:",
        "  chat: {candidates: [small@openai, small@anthropic]}",
        "  chat-openai: {candidates: [small@openai]}",
        "drain: {grace_s: 0.5, deadline_s: 5}",
    ]
    if redis:
        lines.append('state: {redis_url: "${MODELYARD_REDIS_URL}", prefix: "${MODELYARD_STATE_PREFIX}"}')
    store = '"${MODELYARD_SPEND_STORE}"' if postgres else '":memory:"'
    lines.append(f'spend: {{store: {store}, spool_dir: "${{MODELYARD_SPOOL_DIR}}", flush_interval_s: 0.2}}')
    return "\n".join(lines) + "\n"


def haproxy_config(
    lb_port: int,
    replica_ports: Sequence[int],
    *,
    socket_path: Path,
    stats_port: int | None = None,
    check_interval_ms: int = 200,
) -> str:
    """Round-robin over the replicas, each request balanced on its own; a replica is out after two failed
    /health/ready checks (a kill -9 is seen in ~0.4 s, and a refused connection is redispatched at once) and
    back after two good ones. Streams may last: client and server timeouts are long."""
    servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(replica_ports))
    every = f"{check_interval_ms}ms"
    stats = (
        f"\nfrontend stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /\n    stats refresh 2s\n"
        if stats_port is not None
        else ""
    )
    return f"""global
    log stdout format raw local0 info
    stats socket {socket_path} mode 600 level admin
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    timeout http-request 30s
    timeout check 1s
    retries 2
    option redispatch 1

frontend gateway
    bind 127.0.0.1:{lb_port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter {every} fastinter {every} downinter {every} fall 2 rise 2
    http-response set-header {REPLICA_HEADER} %s
{servers}
{stats}"""


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` on a fresh loop in a worker thread: the harness is sync and may be used from async tests."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


async def _pg_execute(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as log:
        log.seek(max(0, path.stat().st_size - LOG_TAIL_CHARS))
        return log.read().decode(errors="replace")


class Replica:
    """One `modelyard serve` process on a fixed port (a restart comes back on the same one: HAProxy's list is
    static), its output appended to `log`."""

    def __init__(self, index: int, port: int, config: Path, workdir: Path, env: dict[str, str]) -> None:
        self.index = index
        self.name = f"r{index}"
        self.port = port
        self.config = config
        self.log = workdir / "gateway.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        command = [*CLI, "serve", "--config", str(self.config), "--port", str(self.port), "--log-level", "warning"]
        with open(self.log, "ab") as log:
            # A session of its own: a signal meant for this replica reaches no other process.
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, env=self.env, start_new_session=True)

    def ready(self) -> bool:
        try:
            with urlopen(self.url + "/health/ready", timeout=1) as answer:
                return int(answer.status) == 200
        except OSError:  # refused, or 503 while starting or draining
            return False

    def stop(self, timeout_s: float) -> None:
        """SIGTERM (the drain), then SIGKILL if it is not gone within `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signals.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Cluster:
    """`with Cluster(config, replicas=3) as c:` N gateways behind HAProxy on 127.0.0.1, ready when entered.

    `config`: YAML text, a path, or None for `default_config()`. `sim`: a running SimServer or a simulator's
    URL to use, or None to start one here (instant unless `sim_instant=False`). `redis_url` / `postgres_dsn`:
    None leaves that service out (the default config then keeps state per replica / spend in memory).
    """

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        replicas: int = 3,
        sim: SimServer | str | None = None,
        sim_instant: bool = True,
        redis_url: str | None = DEFAULT_REDIS,
        postgres_dsn: str | None = DEFAULT_POSTGRES,
        master_key: str | None = None,
        workdir: Path | None = None,
        lb_port: int | None = None,
        stats_port: int | None = None,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 40.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("a cluster needs at least one replica")
        self.haproxy = find_haproxy()
        self.replica_count = replicas
        self.redis_url = redis_url
        self.postgres_dsn = postgres_dsn
        self.master_key = master_key or "sk-cluster-" + secrets.token_urlsafe(18)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.tag = secrets.token_hex(5)
        #: The Redis key prefix and the PostgreSQL schema of this cluster alone (removed at exit).
        self.prefix = f"modelyard-cluster-{self.tag}"
        self.schema = f"cluster_{self.tag}"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="modelyard-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self._config_file(config)
        self._sim_arg = sim
        self.sim_instant = sim_instant
        self.sim: SimServer | None = sim if isinstance(sim, SimServer) else None
        self._own_sim = False
        self.lb_port = lb_port or free_port()
        self.stats_port = stats_port
        self.socket_path = self.workdir / "haproxy.sock"
        self.haproxy_log = self.workdir / "haproxy.log"
        self.haproxy_proc: subprocess.Popen[bytes] | None = None
        self.extra_env = dict(env or {})
        self.replicas: list[Replica] = []
        self._schema_made = False

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The load balancer: what a client of the cluster calls."""
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def replica_urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def processes(self) -> list[subprocess.Popen[bytes] | None]:
        return [r.proc for r in self.replicas]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    @property
    def sim_url(self) -> str:
        if isinstance(self._sim_arg, str):
            return self._sim_arg.rstrip("/")
        assert self.sim is not None, "the cluster is not started"
        return self.sim.url

    @property
    def spend_store(self) -> str:
        return f"{self.postgres_dsn}?schema={self.schema}" if self.postgres_dsn else ":memory:"

    def log(self, i: int) -> str:
        """Replica `i`'s output so far."""
        return self.replicas[i].log.read_text(errors="replace") if self.replicas[i].log.exists() else ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        try:
            self._check_services()
            if self.sim is None and self._sim_arg is None:
                self.sim = SimServer(instant=self.sim_instant).start()
                self._own_sim = True
            if self.postgres_dsn:
                # Made here, once: three replicas racing on CREATE SCHEMA IF NOT EXISTS can fail one of them.
                _run_async(_pg_execute(self.postgres_dsn, f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                self._schema_made = True
            ports = [free_port() for _ in range(self.replica_count)]
            for i, port in enumerate(ports):
                home = self.workdir / f"replica-{i}"
                (home / "spool").mkdir(parents=True, exist_ok=True)
                replica = Replica(i, port, self.config_path, home, self._replica_env(i, home))
                self.replicas.append(replica)
                replica.start()
            self._start_haproxy(ports)
            self.wait_ready()
        except BaseException:
            self.stop(failed=True)
            raise
        return self

    def _check_services(self) -> None:
        if self.redis_url and not _reachable(self.redis_url, 6379):
            raise ClusterError(f"Redis is not reachable at {self.redis_url} (pass redis_url=None to leave it out)")
        if self.postgres_dsn and not _reachable(self.postgres_dsn, 5432):
            raise ClusterError(f"PostgreSQL is not reachable at {self.postgres_dsn} (postgres_dsn=None: no store)")

    def _config_file(self, config: str | Path | None) -> Path:
        if isinstance(config, Path):
            return config.resolve()
        path = self.workdir / "modelyard.yaml"
        path.write_text(
            config
            if config is not None
            else default_config(redis=self.redis_url is not None, postgres=self.postgres_dsn is not None)
        )
        return path

    def _replica_env(self, i: int, home: Path) -> dict[str, str]:
        env = {
            **os.environ,
            "MODELYARD_SIM_URL": self.sim_url,
            "MODELYARD_STATE_PREFIX": self.prefix,
            "MODELYARD_SPEND_STORE": self.spend_store,
            "MODELYARD_SPOOL_DIR": str(home / "spool"),
            "MODELYARD_MASTER_KEY": self.master_key,
            "MODELYARD_REPLICA": str(i),
            # Anything that defaults under $XDG_STATE_HOME stays this replica's own.
            "XDG_STATE_HOME": str(home / "state"),
            **self.extra_env,
        }
        if self.redis_url:
            env["MODELYARD_REDIS_URL"] = self.redis_url
        return env

    def _start_haproxy(self, ports: Sequence[int]) -> None:
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(self.lb_port, ports, socket_path=self.socket_path, stats_port=self.stats_port))
        check = subprocess.run([self.haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=30)
        if check.returncode != 0:
            raise ClusterError(f"HAProxy refused {cfg}: {check.stderr.decode(errors='replace')[-LOG_TAIL_CHARS:]}")
        with open(self.haproxy_log, "ab") as log:
            self.haproxy_proc = subprocess.Popen(
                [self.haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log, start_new_session=True
            )

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every live replica says ready and HAProxy has every one of them UP."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.ready_timeout_s)
        while True:
            live = [r for r in self.replicas if r.proc is not None]
            dead = [r.name for r in live if not r.alive]
            if dead:
                raise ClusterError(f"replica(s) {', '.join(dead)} exited while starting\n{self.logs_tail()}")
            if self.haproxy_proc is not None and self.haproxy_proc.poll() is not None:
                raise ClusterError(f"HAProxy exited with {self.haproxy_proc.returncode}\n{self.logs_tail()}")
            if all(r.ready() for r in live):
                status = self.lb_status()
                if all(status.get(r.name, "").startswith("UP") for r in live):
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"the cluster was not ready within its timeout\n{self.logs_tail()}")
            time.sleep(0.1)

    def stop(self, *, failed: bool = False) -> None:
        """Everything down and removed (the Redis keys under the prefix, the schema); on failure the logs'
        tails go to stderr and the work directory is kept."""
        if failed:
            sys.stderr.write(self.logs_tail() + f"\n(cluster files kept in {self.workdir})\n")
        try:
            if self.haproxy_proc is not None and self.haproxy_proc.poll() is None:
                self.haproxy_proc.terminate()
                try:
                    self.haproxy_proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.haproxy_proc.kill()
                    self.haproxy_proc.wait(timeout=5)
            for replica in self.replicas:  # all draining at once: a stop takes one drain, not N
                if replica.alive:
                    assert replica.proc is not None
                    replica.proc.send_signal(signals.SIGTERM)
            for replica in self.replicas:
                replica.stop(self.stop_timeout_s)
        finally:
            try:
                self._cleanup_services()
            finally:
                if self._own_sim and self.sim is not None:
                    self.sim.stop()
                    self.sim = None
                if self._own_workdir and not failed:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def _cleanup_services(self) -> None:
        if self.redis_url and _reachable(self.redis_url, 6379):
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            try:
                batch = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
                for start in range(0, len(batch), 500):
                    client.delete(*batch[start : start + 500])
            finally:
                client.close()
        if self._schema_made and self.postgres_dsn:
            _run_async(_pg_execute(self.postgres_dsn, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            self._schema_made = False

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(failed=exc_type is not None)

    # ------------------------------------------------------------------ faults

    def signal(self, i: int, sig: int) -> None:
        """Send `sig` to replica `i` (SIGTERM: drain; SIGHUP: reload; SIGSTOP: a hung process)."""
        proc = self.replicas[i].proc
        if proc is None or proc.poll() is not None:
            raise ClusterError(f"replica r{i} is not running")
        proc.send_signal(sig)

    def kill(self, i: int) -> None:
        """kill -9 replica `i`: no drain, no flush."""
        proc = self.replicas[i].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, i: int, *, timeout_s: float | None = None) -> None:
        """Stop replica `i` if it runs (SIGTERM), start it again on its port, wait until HAProxy has it UP."""
        replica = self.replicas[i]
        replica.stop(self.stop_timeout_s)
        replica.start()
        self.wait_ready(timeout_s)

    # ------------------------------------------------------------------ the load balancer's view

    def lb_status(self) -> dict[str, str]:
        """HAProxy's status of each replica (`UP`, `DOWN`, `UP 1/2`, ...), from its stats socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                sock.sendall(b"show stat\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return {}
        rows = csv.reader(b"".join(chunks).decode(errors="replace").lstrip("# ").splitlines())
        header = next(rows, [])
        if "svname" not in header or "status" not in header:
            return {}
        name_at, status_at, proxy_at = header.index("svname"), header.index("status"), header.index("pxname")
        return {
            row[name_at]: row[status_at]
            for row in rows
            if len(row) > status_at and row[proxy_at] == "replicas" and row[name_at] not in ("BACKEND", "FRONTEND")
        }

    def wait_lb(self, name: str, status: str, timeout_s: float = 10.0) -> float:
        """Until HAProxy reports replica `name` (e.g. "r1") as `status` ("UP"/"DOWN"); the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.lb_status().get(name, "").startswith(status):
                return time.monotonic() - started
            time.sleep(0.05)
        raise ClusterError(f"HAProxy did not see {name} {status} within {timeout_s}s: {self.lb_status()}")

    def logs_tail(self) -> str:
        parts = [f"--- {r.name} ({r.url}) {r.log}\n{_tail(r.log)}" for r in self.replicas]
        parts.append(f"--- haproxy {self.haproxy_log}\n{_tail(self.haproxy_log)}")
        return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """`scripts/cluster up [--replicas N] [--config FILE] ...`: a cluster in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start N gateways behind HAProxy and wait for Ctrl-C")
    up.add_argument("--replicas", type=int, default=3)
    up.add_argument("--config", type=Path, help="gateway config (default: sim deployments, Redis, PostgreSQL)")
    up.add_argument("--port", type=int, default=None, help="the load balancer's port (default: a free one)")
    up.add_argument("--stats-port", type=int, default=None, help="HAProxy's stats page (default: a free one)")
    up.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL, or 'none'")
    up.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL DSN, or 'none'")
    up.add_argument("--sim-latency", action="store_true", help="the simulator's realistic latencies")
    up.add_argument("--workdir", type=Path, default=None, help="logs and configs (default: a temporary folder)")
    args = parser.parse_args(argv)
    cluster = Cluster(
        args.config,
        replicas=args.replicas,
        sim_instant=not args.sim_latency,
        redis_url=None if args.redis == "none" else args.redis,
        postgres_dsn=None if args.postgres == "none" else args.postgres,
        lb_port=args.port,
        stats_port=args.stats_port or free_port(),
        workdir=args.workdir,
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signals.signal(signals.SIGTERM, on_signal)
    with cluster:
        print(f"load balancer  {cluster.url}")
        for replica in cluster.replicas:
            print(f"replica {replica.name}     {replica.url}   log: {replica.log}")
        print(f"HAProxy stats  http://127.0.0.1:{cluster.stats_port}/")
        print(f"simulator      {cluster.sim_url}")
        print(f"master key     {cluster.master_key}")
        print(f"config         {cluster.config_path}")
        print("Ctrl-C stops the cluster.", flush=True)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
