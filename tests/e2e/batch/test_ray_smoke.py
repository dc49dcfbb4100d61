"""`--engine ray` on a real local Ray (2 CPUs, loopback): 200 rows of a one-step workflow against the simulator,
every row reported exactly once, and a worker killed with SIGKILL mid-run costs at most its in-flight calls.

The store is PostgreSQL (a unique schema) when it runs on 127.0.0.1:5432, else SQLite (one node may share a
file). CI's smoke test for the multi-node script `scripts/ray_batch_cluster.py`; about 25 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch.model import BackendRef, BatchHeader, RowResult, RowTask
from modelyard.batch.store import open_batch_store
from modelyard.sim.server import SimServer

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from modelyard.batch import ray_engine  # noqa: E402  (after the skip: the module is fine without Ray)
from modelyard.batch.ray_engine import RayEngine, open_ray_engine  # noqa: E402

PG = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ROWS = 200
WORKFLOW = """
schema: modelyard.workflow/v1
name: label
inputs: {ticket: string}
steps:
  classify: {model: via-openai, prompt: "Classify this support ticket: {{ inputs.ticket }}"}
outputs: {label: "{{ classify }}"}
"""


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """Realistic latency (sim-small: ~60 ms to the first token, 250 tokens/s) so rows are in flight at a kill."""
    with SimServer(seed=5) as server:
        yield server


@pytest.fixture(scope="module")
def config(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ray") / "gateway.yaml"
    path.write_text(
        "deployments:\n"
        f'  - {{name: small@openai, provider: openai, model: sim-small, api_base: "{sim.openai_base}", '
        "api_key: sk-test, price: {input: 0.1, output: 0.4}, timeouts: {connect: 2, first_token: 10, total: 30}}\n"
        "models:\n  via-openai: {candidates: [small@openai]}\n",
        encoding="utf-8",
    )
    return str(path)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray of 2 CPUs started the way the engine starts one (its `_connect`), shared by the tests."""
    assert ray_engine._connect(ray, None, 2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def store_location(tmp_path: Path) -> Iterator[str]:
    if not _pg_up():
        yield str(tmp_path / "runs.db")
        return
    location = f"{PG}?schema=ray_{uuid.uuid4().hex[:12]}"
    yield location
    dropper: Any = open_batch_store(location)
    dropper.drop()
    dropper.close()


def header(store_location: str) -> BatchHeader:
    batch_id = f"b-ray-{uuid.uuid4().hex[:8]}"
    made = BatchHeader(batch_id, "label", "label.yaml", WORKFLOW, "rows.jsonl", "jsonl", "x", ROWS, {}, {})
    store = open_batch_store(store_location)
    try:
        store.create_batch(made)
    finally:
        store.close()
    return made


async def feed(rows: int) -> AsyncIterator[RowTask]:
    for row in range(rows):
        yield RowTask(row, {"ticket": f"ticket {row}: I was charged twice for order {row * 7}"})


def requests(sim: SimServer) -> int:
    return int(sim.stats()["models"]["sim-small"]["requests"])


def assert_every_row_once(results: list[RowResult], store_location: str, batch_id: str) -> None:
    assert sorted(r.row for r in results) == list(range(ROWS))  # each row reported exactly once
    assert {r.status for r in results} == {"succeeded"}, {r.error for r in results}
    assert all(r.outputs["label"] for r in results)
    store = open_batch_store(store_location)
    try:
        done = store.done_rows(batch_id)
    finally:
        store.close()
    assert sorted(done) == list(range(ROWS)) and set(done.values()) == {"succeeded"}


async def test_rows_run_once_each_on_ray_workers_that_stay_on_loopback(
    local_ray: Any, sim: SimServer, config: str, store_location: str
) -> None:
    made = header(store_location)
    before = requests(sim)
    async with open_ray_engine(made, store_location, BackendRef(config=config), chunk=4) as engine:
        assert isinstance(engine, RayEngine) and len(engine.workers) == 2
        results = [r async for r in engine.run(feed(ROWS), concurrency=16)]
        assert len({r.worker for r in results}) == 2  # both workers ran rows
        probe = local_ray.remote(num_cpus=0)(lambda: os.environ.get("RAY_USAGE_STATS_ENABLED"))  # the 2 CPUs are taken
        env = await probe.remote()
        assert env == "0" and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
        assert_loopback_only()
    assert requests(sim) - before == ROWS  # one call a row: nothing was called twice
    assert_every_row_once(results, store_location, made.batch_id)


def assert_loopback_only() -> None:
    """No dashboard UI, and every socket the Ray processes listen on is on loopback."""
    processes = psutil.Process().children(recursive=True)
    commands = [" ".join(p.cmdline()) for p in processes if p.is_running()]
    assert any("raylet" in c for c in commands) and any("gcs_server" in c for c in commands)
    head = [c for c in commands if "dashboard/dashboard.py" in c]  # include_dashboard=False: no web UI
    assert all("--minimal" in c and "--disable-frontend" in c for c in head), head
    pids = {p.pid for p in processes}
    listening = [
        c.laddr for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    assert listening, "found no Ray listening socket to check"
    outside = [addr for addr in listening if addr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not outside, f"Ray listens beyond loopback: {outside}"


async def test_a_killed_worker_costs_at_most_its_in_flight_calls_and_no_row_twice(
    local_ray: Any, sim: SimServer, config: str, store_location: str
) -> None:
    made = header(store_location)
    before = requests(sim)
    killed: dict[str, Any] = {}
    results: list[RowResult] = []
    async with open_ray_engine(made, store_location, BackendRef(config=config), chunk=4) as engine:
        assert isinstance(engine, RayEngine)
        async for result in engine.run(feed(ROWS), concurrency=16):
            results.append(result)
            if len(results) == ROWS // 3:
                victim = max(engine.workers, key=lambda w: len(w.rows))
                killed.update(pid=victim.pid, in_flight=len(victim.rows))
                os.kill(victim.pid, signal.SIGKILL)
        deaths = list(engine.deaths)
        await asyncio.sleep(0)
    assert killed["in_flight"] > 0
    assert [d.pid for d in deaths] == [killed["pid"]]
    death = deaths[0]
    # rows sent to it before its death was known never started there: only the rows it held cost calls
    assert death.rows and death.recovered + death.resent == len(death.rows)
    extra = requests(sim) - before - ROWS
    assert 0 <= extra <= killed["in_flight"], (extra, killed, death)
    assert_every_row_once(results, store_location, made.batch_id)
