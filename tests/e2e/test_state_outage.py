"""State that survives its store (issue #10, item 5), against the real gateway process (`modelyard serve`).

Redis is a private `redis-server` on a free port (tests/redis_server.py), killed and restarted empty mid-load;
PostgreSQL is reached through a TCP proxy the test can freeze (a store that hangs, the worst kind of outage).
Before: an empty Redis restarted every budget at zero (a spent key got 1.92x its budget), limited keys got a
500 with a traceback per request while Redis was down, a hung store hung `/admin/spend`, and admin values
like `budget_usd: 1e300` were written before validation and then stopped the gateway from starting.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess, free_port
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.unit.state.conftest import _reachable

MASTER = "sk-master-outage-test"
PROMPT = [{"role": "user", "content": "Say something short."}]
ADMIN = {"Authorization": f"Bearer {MASTER}"}

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(Fleet(models=[SimModel(name="sim-dear", output_tokens=10)]), instant=True) as server:
        yield server


def write_config(sim: SimServer, path: Path, *, store: str | None = None, state: str = "") -> Path:
    path.write_text(f"""
deployments:
  - {{name: dear-a, provider: openai, model: sim-dear, api_base: "{sim.openai_base}", price: {{input: 30, output: 60}}}}
models:
  dear: {{candidates: [dear-a]}}
access:
  master_key: {MASTER}
  refresh_s: 0
spend:
  store: "{store or path.parent / "spend.db"}"
  spool_dir: "{path.parent / "spool"}"
  flush_interval_s: 0.05
{state}
""")
    return path


def redis_state(redis: RedisServer, policy: str) -> str:
    return f'state: {{redis_url: "{redis.url}", on_unavailable: {policy}, redis_timeout_s: 0.3, store_timeout_s: 1}}'


def new_key(url: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        url + "/admin/keys", json={"name": f"k-{uuid.uuid4().hex[:8]}", **body}, headers=ADMIN, timeout=10
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


class Load:
    """Closed-loop clients on one key; every answer's status, time, cost and error code, as the client saw it."""

    def __init__(self, url: str, key: str, body: dict[str, Any], mark_usd: float = 0.0) -> None:
        self.url = url
        self.key = key
        self.body = body
        self.answers: list[tuple[float, int, float, str | None, str | None]] = []
        self.mark_usd = mark_usd
        #: Set once the answers have cost `mark_usd`.
        self.marked = asyncio.Event()

    async def run(self, clients: int, seconds: float) -> None:
        stop = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as client:
            await asyncio.gather(*(self._client(client, stop) for _ in range(clients)))

    async def _client(self, client: httpx.AsyncClient, stop: float) -> None:
        while time.monotonic() < stop:
            response = await client.post(self.url + "/v1/chat/completions", json=self.body)
            cost = float(response.headers.get("x-modelyard-cost-usd", 0.0)) if response.status_code == 200 else 0.0
            code = None if response.status_code == 200 else response.json()["error"]["code"]
            self.answers.append(
                (time.monotonic(), response.status_code, cost, code, response.headers.get("retry-after"))
            )
            if self.cost >= self.mark_usd:
                self.marked.set()
            if response.status_code != 200:
                await asyncio.sleep(0.02)

    @property
    def cost(self) -> float:
        return sum(a[2] for a in self.answers)


def spent_in_store(url: str, key_id: str) -> float:
    rows = httpx.get(url + "/admin/spend?by=key&since=all", headers=ADMIN, timeout=10).json()["data"]
    return float(sum(r["cost_usd"] for r in rows if r["group"] == key_id))


# --------------------------------------------------------------------------- Redis goes away


@needs_redis
def test_redis_restarted_empty_mid_load_never_overspends_and_serves_again_within_2s(
    sim: SimServer, tmp_path: Path
) -> None:
    """fail_closed: 503 `state_unavailable` with Retry-After during the outage, served again within 2 s of
    Redis's return, and the budget re-seeded from the spend log (not from zero) when Redis comes back empty."""
    with RedisServer() as redis:
        config = write_config(sim, tmp_path / "gateway.yaml", state=redis_state(redis, "fail_closed"))
        with GatewayProcess(config) as gateway:
            budget = 0.08  # about 75 answers at ~$0.001, with reservations of ~$0.0017 (max_tokens 20)
            made = new_key(gateway.url, budget_usd=budget, rpm=100_000)
            load = Load(
                gateway.url, made["key"], {"model": "dear", "messages": PROMPT, "max_tokens": 20}, mark_usd=budget * 0.6
            )

            async def scenario() -> float:
                async def outage() -> float:
                    await load.marked.wait()  # most of the budget spent before Redis goes
                    redis.kill()
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(redis.start)  # empty: no persistence
                    return time.monotonic()

                back_at, _ = await asyncio.gather(outage(), load.run(clients=8, seconds=6.0))
                return float(back_at)

            back_at = asyncio.run(scenario())
            time.sleep(0.3)  # the spend writer's last flush
            stored = spent_in_store(gateway.url, made["id"])
            ready = httpx.get(gateway.url + "/health/ready").json()
            log = gateway.log_text()
    statuses = {a[1] for a in load.answers}
    assert statuses <= {200, 429, 503}, statuses  # never a 500
    refused = [a for a in load.answers if a[1] == 503]
    assert refused and all(a[3] == "state_unavailable" and a[4] is not None for a in refused)
    served_again = [a[0] for a in load.answers if a[1] == 200 and a[0] > back_at]
    exhausted = [a for a in load.answers if a[1] == 429 and a[0] > back_at]
    assert served_again and served_again[0] - back_at < 2.0  # served again within 2 s of Redis's return
    assert exhausted and all(a[3] == "insufficient_quota" for a in exhausted)  # spending was not reset
    assert load.cost <= budget
    assert stored <= budget
    assert ready["state"] == "ok"
    # Once per outage for each part that keeps state there (key counters, the shared health view), never per request.
    outage_lines = [line.split("):", 1)[-1] for line in log.splitlines() if "Redis is unreachable" in line]
    assert 1 <= len(outage_lines) <= 2 and len(set(outage_lines)) == len(outage_lines), outage_lines
    assert "Traceback" not in log


@needs_redis
def test_fail_open_serves_limited_keys_from_local_limits_and_reports_degraded(sim: SimServer, tmp_path: Path) -> None:
    with RedisServer() as redis:
        config = write_config(sim, tmp_path / "gateway.yaml", state=redis_state(redis, "fail_open"))
        with GatewayProcess(config) as gateway:
            made = new_key(gateway.url, budget_usd=1.0, rpm=5)
            headers = {"Authorization": f"Bearer {made['key']}"}
            body = {"model": "dear", "messages": PROMPT, "max_tokens": 20}
            assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
            redis.kill()
            during = [
                httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=5)
                for _ in range(7)
            ]
            ready = httpx.get(gateway.url + "/health/ready").json()
            metrics = httpx.get(gateway.url + "/metrics").text
            redis.start()
            back = time.monotonic()
            while httpx.get(gateway.url + "/health/ready").json()["status"] != "ready":
                assert time.monotonic() - back < 2.0
                time.sleep(0.05)
            after = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)
    assert [r.status_code for r in during] == [200] * 5 + [429] * 2  # rpm 5, kept in memory by this replica
    assert ready["status"] == "degraded" and ready["state"] == "unavailable"
    assert "modelyard_state_unavailable 1.0" in metrics
    assert after.status_code == 200  # Redis back (empty): the budget re-seeded from the spend log


# --------------------------------------------------------------------------- the store goes away


class FreezableProxy:
    """A TCP proxy to PostgreSQL; `freeze()` stops relaying (connections hang, as with a dead network)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.flowing = threading.Event()
        self.flowing.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the end on, or the closing side waits for ever
        except OSError:
            pass

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self._stop = True
        self.flowing.set()
        for sock in [self._server, *self._sockets]:
            sock.close()


@pytest.mark.postgres
def test_a_hung_store_gives_admin_calls_and_unknown_keys_a_quick_503(sim: SimServer, tmp_path: Path) -> None:
    if not _reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    proxy = FreezableProxy(("127.0.0.1", 5432))
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?schema={schema}"
    config = write_config(sim, tmp_path / "gateway.yaml", store=dsn, state="state: {store_timeout_s: 1}")
    try:
        with GatewayProcess(config) as gateway:
            known = new_key(gateway.url, rpm=1000)
            chat = {"model": "dear", "messages": PROMPT, "max_tokens": 20}
            assert (
                httpx.post(
                    gateway.url + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {known['key']}"}
                ).status_code
                == 200
            )
            proxy.freeze()
            timed: list[tuple[float, httpx.Response]] = []
            calls = [
                ("GET", "/admin/keys", None, ADMIN),
                ("GET", "/admin/spend?by=key", None, ADMIN),
                ("POST", "/admin/keys", {"name": "during"}, ADMIN),
                ("DELETE", f"/admin/keys/{known['id']}", None, ADMIN),
                ("POST", "/v1/chat/completions", chat, {"Authorization": "Bearer sk-my-unknown-key-1234567"}),
            ]
            for method, path, body, headers in calls:
                start = time.monotonic()
                response = httpx.request(method, gateway.url + path, json=body, headers=headers, timeout=10)
                timed.append((time.monotonic() - start, response))
            cached = httpx.post(
                gateway.url + "/v1/chat/completions",
                json=chat,
                headers={"Authorization": f"Bearer {known['key']}"},
                timeout=10,
            )
            proxy.thaw()
            time.sleep(1.1)  # the store is trusted again after its fail-fast second
            after = httpx.get(gateway.url + "/admin/keys", headers=ADMIN, timeout=10)
            log = gateway.log_text()
    finally:
        proxy.close()
        asyncio.run(_drop_schema(schema))
    for elapsed, response in timed:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "store_unavailable" and response.headers["retry-after"]
        assert elapsed < 2.5  # the store timeout (1 s), never a hang
    assert cached.status_code == 200  # a known key keeps working from the cache
    assert after.status_code == 200 and [k["id"] for k in after.json()["data"]] == [known["id"]]
    assert "Traceback" not in log


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# --------------------------------------------------------------------------- admin input


BAD_KEYS: list[tuple[dict[str, Any], str]] = [
    ({"rpm": 1e30}, "rpm"),
    ({"rpm": 10**30}, "rpm"),
    ({"tpm": 10**13}, "tpm"),
    ({"rpm": 0}, "rpm"),
    ({"budget_usd": 1e300}, "budget_usd"),
    ({"budget_usd": -1}, "budget_usd"),
    ({"budget_usd": "x"}, "budget_usd"),
    ({"period": "99999999999999999999999d"}, "period"),
    ({"period": 1e300}, "period"),
    ({"period": "0.001s"}, "period"),
    ({"expires_in": "9" * 400 + "d"}, "expires_in"),
    ({"expires_at": 1e300}, "expires_at"),
    ({"name": "nul\u0000name"}, "name"),
    ({"name": "x" * 10_000}, "name"),
    ({"models": ["m"] * 10_000}, "models"),
    ({"models": ["bad\u0000model"]}, "models"),
    ({"metadata": {"team": "a\u0000b"}}, "metadata"),
]


@pytest.fixture(scope="module")
def plain_gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = write_config(sim, tmp_path_factory.mktemp("admin") / "gateway.yaml")
    with GatewayProcess(config) as process:
        yield process


def test_bad_admin_values_are_refused_before_anything_is_written(plain_gateway: GatewayProcess) -> None:
    url = plain_gateway.url
    before = httpx.get(url + "/admin/keys?all=true", headers=ADMIN).json()["data"]
    for body, param in BAD_KEYS:
        response = httpx.post(url + "/admin/keys", json={"name": "bad", **body}, headers=ADMIN, timeout=10)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    for since in ("99999999999999999999999d", "9" * 400 + "d", "1e400", "nan", "-5d"):
        response = httpx.get(url + f"/admin/spend?since={since}", headers=ADMIN, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] == "since", since
    assert httpx.delete(url + "/admin/keys/%00bad", headers=ADMIN).status_code == 404
    after = httpx.get(url + "/admin/keys?all=true", headers=ADMIN).json()["data"]
    assert after == before  # nothing written
    assert "Traceback" not in plain_gateway.log_text()


def test_the_gateway_starts_with_a_bad_key_row_in_the_store(sim: SimServer, tmp_path: Path) -> None:
    """A row written by an older version (budget_usd 1e300, rpm 0) is skipped with a warning, not fatal."""
    config = write_config(sim, tmp_path / "gateway.yaml")
    with GatewayProcess(config) as gateway:
        good = new_key(gateway.url, budget_usd=1.0)
        bad = new_key(gateway.url, budget_usd=1.0)
    db = sqlite3.connect(tmp_path / "spend.db")
    try:
        db.execute("UPDATE modelyard_keys SET budget_usd = 1e300, rpm = 0 WHERE id = ?", (bad["id"],))
        db.commit()
    finally:
        db.close()
    with GatewayProcess(config) as gateway:
        body = {"model": "dear", "messages": PROMPT, "max_tokens": 20}
        served = httpx.post(
            gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {good['key']}"}
        )
        refused = httpx.post(
            gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {bad['key']}"}
        )
        listed = httpx.get(gateway.url + "/admin/keys", headers=ADMIN)
        log = gateway.log_text()
    assert served.status_code == 200
    assert refused.status_code == 401
    assert listed.status_code == 200
    assert f"ignoring key {bad['id']}" in log and "Traceback" not in log
