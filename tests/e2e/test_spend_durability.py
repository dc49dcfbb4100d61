"""kill -9 under load loses no completed request's spend row, and no row stops the spend log (issue #10, item 4).

The real gateway process (`modelyard serve`) over the simulator (its own process), driven as fast as this
machine allows by keep-alive clients (non-streaming and streaming chat); about a second and a half into
the load it is killed with SIGKILL, restarted on the same store and spool, and every request whose client
got a 200 (for streams: received `[DONE]`) must have exactly one spend row: the one the spool replayed,
or the one the store already had. Before the spool, ~20% of them (one flush interval) were lost.

A NUL byte in a request's `model` used to make every later PostgreSQL batch fail forever; now the row is
stored escaped and the requests after it are logged.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from modelyard.providers.http1 import Http1Client, HttpError
from modelyard.testing.process import GatewayProcess
from tests.e2e.conftest import gateway_yaml
from tests.unit.state.conftest import PG_DSN, _reachable

LOAD_S = 2.5
KILL_AT_S = 1.5
CLIENTS = 48
_SIM = (
    "import sys, time; from modelyard.sim.server import SimServer; "
    "s = SimServer(seed=3, instant=True).__enter__(); print(s.url, flush=True); time.sleep(600)"
)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SIM], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait(timeout=10)


class Load:
    """Closed-loop clients; ids of the requests that completed, as the client saw them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok: list[str] = []
        self.failed = 0
        self.stop_at = 0.0

    async def run(self, gateway: GatewayProcess) -> None:
        client = Http1Client()
        start = time.monotonic()
        self.stop_at = start + LOAD_S
        assert gateway.proc is not None
        killer = asyncio.get_running_loop().call_later(KILL_AT_S, gateway.proc.send_signal, signal.SIGKILL)
        try:
            await asyncio.gather(*(self._client(client, i) for i in range(CLIENTS)))
        finally:
            killer.cancel()
            client.close()

    async def _client(self, client: Http1Client, n: int) -> None:
        i = 0
        while time.monotonic() < self.stop_at:
            i += 1
            stream = (n + i) % 4 == 0
            body = msgspec.json.encode(
                {
                    "model": "via-openai",
                    "stream": stream,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"hello {n} {i}"}],
                }
            )
            try:
                done = await self._one(client, body, stream)
            except (TimeoutError, HttpError, OSError):
                self.failed += 1
                await asyncio.sleep(0.01)
                continue
            if done is not None:
                self.ok.append(done)

    async def _one(self, client: Http1Client, body: bytes, stream: bool) -> str | None:
        response = await client.request(
            "POST", f"{self.url}/v1/chat/completions", {"content-type": "application/json"}, body, connect_timeout=1.0
        )
        request_id = response.headers.get("x-request-id")
        seen = b""
        try:
            while chunk := await asyncio.wait_for(response.next_chunk(), 5):
                seen = seen[-64:] + chunk
                if stream and b"data: [DONE]" in seen:
                    break  # the client has [DONE]: this request completed, whatever happens next
        finally:
            if stream:
                response.close()  # stopped reading at [DONE]
            else:
                response.release()
        if response.status != 200 or request_id is None:
            return None
        if stream and b"data: [DONE]" not in seen:
            return None
        return request_id


def _crash_and_recover(tmp_path: Path, sim_url: str, store: str, extra: str, rows: Any) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(gateway_yaml(sim_url, f'spend: {{store: "{store}", flush_interval_s: 1.0{extra}}}\n'))
    first = GatewayProcess(config, log=tmp_path / "first.log").start()
    load = Load(first.url)
    try:
        asyncio.run(load.run(first))
    finally:
        first.kill()
    rate = len(load.ok) / KILL_AT_S
    assert len(load.ok) > 300, f"only {len(load.ok)} requests completed ({load.failed} failed)"
    with GatewayProcess(config, log=tmp_path / "second.log"):  # replays the spool at start
        deadline = time.monotonic() + 10
        while True:
            counts = rows()
            missing = [i for i in load.ok if counts.get(i, 0) == 0]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    doubled = [i for i in load.ok if counts.get(i, 0) > 1]
    print(
        f"\n{store.split('?')[0]}: {len(load.ok)} completed ({rate:.0f}/s before the kill), "
        f"{len(counts)} rows, {len(missing)} missing, {len(doubled)} doubled"
    )
    assert missing == [] and doubled == []


def test_kill9_sqlite_loses_no_completed_request(tmp_path: Path, sim_url: str) -> None:
    db = tmp_path / "spend.db"

    def rows() -> dict[str, int]:
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT id, COUNT(*) FROM modelyard_spend GROUP BY id").fetchall())

    _crash_and_recover(tmp_path, sim_url, str(db), "", rows)
    assert list(Path(f"{db}.spool").glob("*.spool")) == []  # a clean stop leaves an empty spool


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped after it."""
    if not _reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    schema = f"spend_{uuid.uuid4().hex[:10]}"
    try:
        yield schema
    finally:
        asyncio.run(_pg(schema, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', search=False))


async def _pg(schema: str, sql: str, *, search: bool = True) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema} if search else None)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.mark.postgres
def test_kill9_postgres_loses_no_completed_request(tmp_path: Path, sim_url: str, pg_schema: str) -> None:
    def rows() -> dict[str, int]:
        found = asyncio.run(_pg(pg_schema, "SELECT id, COUNT(*) FROM modelyard_spend GROUP BY id"))
        return {str(r[0]): int(r[1]) for r in found}

    _crash_and_recover(tmp_path, sim_url, f"{PG_DSN}?schema={pg_schema}", f', spool_dir: "{tmp_path / "spool"}"', rows)


@pytest.mark.postgres
def test_a_nul_byte_in_model_does_not_stop_the_postgres_spend_log(tmp_path: Path, sim_url: str, pg_schema: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        gateway_yaml(
            sim_url,
            f'spend: {{store: "{PG_DSN}?schema={pg_schema}", '
            f'flush_interval_s: 0.05, spool_dir: "{tmp_path / "spool"}"}}\n',
        )
    )
    with GatewayProcess(config, log=tmp_path / "gateway.log") as gateway:
        evil = _post(gateway.url, b'{"model": "evil\\u0000model", "messages": [{"role": "user", "content": "x"}]}')
        assert evil[0] == 404
        later = [
            _post(
                gateway.url,
                msgspec.json.encode({"model": "via-openai", "messages": [{"role": "user", "content": f"after {i}"}]}),
            )
            for i in range(5)
        ]
        assert [status for status, _ in later] == [200] * 5
        wanted = {rid for _, rid in later}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = dict(asyncio.run(_pg(pg_schema, "SELECT id, model FROM modelyard_spend")))
            if wanted <= set(stored) and len(stored) == 6:
                break
            time.sleep(0.1)
    assert wanted <= set(stored), "the spend log stopped after the NUL byte"
    assert "evil\\u0000model" in stored.values()  # the error's row, stored escaped


def _post(url: str, body: bytes) -> tuple[int, str]:
    """Status and x-request-id (empty for an error, which has none)."""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    request = Request(f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    try:
        with urlopen(request, timeout=10) as response:
            return response.status, response.headers["x-request-id"]
    except HTTPError as error:
        return error.code, error.headers.get("x-request-id", "")


class ResponsesLoad(Load):
    """Closed-loop clients on /v1/responses with `store: true`; the ids of the responses the clients received."""

    async def _one(self, client: Http1Client, body: bytes, stream: bool) -> str | None:
        del body, stream
        request = msgspec.json.encode({"model": "via-openai", "input": f"hello {uuid.uuid4().hex}", "store": True})
        response = await client.request(
            "POST", f"{self.url}/v1/responses", {"content-type": "application/json"}, request, connect_timeout=1.0
        )
        data = b""
        try:
            while chunk := await asyncio.wait_for(response.next_chunk(), 5):
                data += chunk
        finally:
            response.release()
        if response.status != 200:
            return None
        answer_id = msgspec.json.decode(data).get("id")
        return answer_id if isinstance(answer_id, str) else None


def test_kill9_loses_no_stored_response(tmp_path: Path, sim_url: str) -> None:
    """A stored response is in the store before its answer's last byte: after kill -9 mid-load and a restart,
    every response a client received is there for `GET /v1/responses/{id}` (and so for previous_response_id)."""
    config = tmp_path / "gateway.yaml"
    store = tmp_path / "spend.db"
    config.write_text(gateway_yaml(sim_url, f'spend: {{store: "{store}"}}\nserver: {{responses: {{store: true}}}}\n'))
    first = GatewayProcess(config, log=tmp_path / "first.log").start()
    load = ResponsesLoad(first.url)
    try:
        asyncio.run(load.run(first))
    finally:
        first.kill()
    assert len(load.ok) > 50, f"only {len(load.ok)} responses completed ({load.failed} failed)"

    async def missing(url: str) -> list[str]:
        client = Http1Client()
        lost = []
        try:
            for response_id in load.ok:
                answer = await client.request("GET", f"{url}/v1/responses/{response_id}", {}, b"", connect_timeout=2.0)
                await answer.read()
                answer.release()
                if answer.status != 200:
                    lost.append(response_id)
        finally:
            client.close()
        return lost

    with GatewayProcess(config, log=tmp_path / "second.log") as second:
        lost = asyncio.run(missing(second.url))
    print(f"\nresponses: {len(load.ok)} received before the kill, {len(lost)} missing after the restart")
    assert lost == []
