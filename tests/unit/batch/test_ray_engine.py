"""The Ray engine's bookkeeping without Ray: a fake `ray` whose actors are coroutines in this process.

What a real cluster makes hard to hit on purpose: a worker that dies after saving a row but before reporting
it (the row comes from the store, not run again), a dead worker's unfinished rows re-sent with their
checkpointed steps, a worker that keeps failing without dying, every worker gone, and the refusals at start
(SQLite on several nodes, more workers than CPUs, Ray not installed).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelyard.batch import ray_engine
from modelyard.batch.model import BackendRef, BatchHeader, RowResult, RowTask
from modelyard.batch.ray_engine import BatchEngineError, RayEngine, Worker, open_ray_engine
from modelyard.batch.store import BatchStore
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.workflows.records import StepRecord, StepState

BATCH = "b-ray-unit"


class ActorDied(Exception):
    """Stands for ray.exceptions.RayActorError."""


class TaskFailed(Exception):
    """Stands for a RayTaskError: the worker raised, but it is alive."""


FAKE_RAY = SimpleNamespace(
    exceptions=SimpleNamespace(RayActorError=ActorDied),
    kill=lambda handle, no_restart=True: setattr(handle, "killed", True),
    available_resources=lambda: {"CPU": 0.0},
)


class FakeActor:
    """Runs rows at once and saves them; `die_after` rows into its life it saves `saved_unreported` more rows,
    then its stream raises ActorDied; `fail` makes every stream raise TaskFailed at once."""

    def __init__(self, store: BatchStore, die_after: int | None = None, saved_unreported: int = 0) -> None:
        self.store = store
        self.die_after = die_after
        self.saved_unreported = saved_unreported
        self.fail = False
        self.killed = False
        self.ran: list[RowTask] = []
        self.run_rows = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=self._stream))

    def _stream(self, chunk: list[RowTask]) -> AsyncIterator[Any]:
        return self._rows(chunk)

    async def _rows(self, chunk: list[RowTask]) -> AsyncIterator[Any]:
        if self.fail:
            raise TaskFailed("worker bug")
        for task in chunk:
            await asyncio.sleep(0)
            if self.killed:
                raise ActorDied("dead")
            if self.die_after is not None and len(self.ran) >= self.die_after:
                for _ in range(self.saved_unreported):  # finished and committed, never reported
                    self._save(task)
                    self.saved_unreported -= 1
                self.killed = True
                raise ActorDied("node lost")
            yield _ready(self._save(task))

    def _save(self, task: RowTask) -> RowResult:
        self.ran.append(task)
        result = RowResult(task.row, "succeeded", outputs={"row": task.row}, worker=f"fake:{id(self)}")
        self.store.save_row(BATCH, result)
        self.store.flush()
        return result


async def _ready(value: RowResult) -> RowResult:
    return value


def engine_over(store: BatchStore, *actors: FakeActor, chunk: int = 4) -> RayEngine:
    workers = [Worker(actor, f"fake:{i}", 1000 + i, "node") for i, actor in enumerate(actors)]
    return RayEngine(FAKE_RAY, workers, store, BATCH, chunk=chunk)


async def feed(rows: int) -> AsyncIterator[RowTask]:
    for row in range(rows):
        yield RowTask(row, {"n": row})


@pytest.fixture
def store(tmp_path: Path) -> SqliteBatchStore:
    opened = SqliteBatchStore(tmp_path / "runs.db")
    opened.create_batch(BatchHeader(BATCH, "w", "w.yaml", "", "in.jsonl", "jsonl", "x", 40, {}, {}))
    return opened


async def test_a_dead_workers_rows_come_from_the_store_or_run_again_with_their_steps(store: SqliteBatchStore) -> None:
    steady, dying = FakeActor(store), FakeActor(store, die_after=5, saved_unreported=1)
    engine = engine_over(store, steady, dying)
    step = StepRecord("classify", "classify", "model", StepState.SUCCEEDED, output="x", cost_usd=0.5)
    # every row the dying worker may hold has a checkpointed step: a re-sent row must carry it
    for row in range(40):
        store.save_step(BATCH, row, step)
    store.flush()

    results = [r async for r in engine.run(feed(40), concurrency=16)]  # the dying worker holds 2 chunks

    assert sorted(r.row for r in results) == list(range(40))  # each row once
    [death] = engine.deaths
    assert death.pid == 1001 and dying.killed and len(engine.workers) == 1
    assert death.recovered == 1 and death.resent == len(death.rows) - 1 and death.resent > 0
    ran_by_dying = {t.row for t in dying.ran}
    assert len(ran_by_dying) == 6  # 5 reported + the one saved but never reported: taken from the store
    resent = [t for t in steady.ran if t.prior is not None]
    assert len(resent) == death.resent and not ran_by_dying & {t.row for t in resent}
    assert all(t.prior == {"classify": step.to_dict()} for t in resent)
    assert len(store.done_rows(BATCH)) == 40


async def test_rows_stay_within_the_concurrency_bound(store: SqliteBatchStore) -> None:
    actors = [FakeActor(store), FakeActor(store)]
    engine = engine_over(store, *actors, chunk=3)
    peak = 0
    original = engine._send

    def counting(queue: Any) -> None:
        nonlocal peak
        original(queue)
        peak = max(peak, sum(len(w.rows) for w in engine.workers))

    engine._send = counting  # type: ignore[method-assign]
    results = [r async for r in engine.run(feed(40), concurrency=5)]
    assert sorted(r.row for r in results) == list(range(40)) and 0 < peak <= 5
    assert all(a.ran for a in actors)  # both got rows


async def test_a_worker_that_keeps_failing_alive_fails_its_rows_after_a_few_resends(store: SqliteBatchStore) -> None:
    broken = FakeActor(store)
    broken.fail = True
    engine = engine_over(store, broken)
    results = [r async for r in engine.run(feed(3), concurrency=2)]
    assert sorted(r.row for r in results) == [0, 1, 2]
    assert {r.status for r in results} == {"failed"} and all("worker bug" in (r.error or "") for r in results)
    assert not engine.deaths and store.done_rows(BATCH) == {0: "failed", 1: "failed", 2: "failed"}


async def test_when_every_worker_is_gone_the_batch_stops_with_a_resume_hint(store: SqliteBatchStore) -> None:
    engine = engine_over(store, FakeActor(store, die_after=2))
    with pytest.raises(BatchEngineError, match="--resume"):
        async for _ in engine.run(feed(20), concurrency=4):
            pass
    assert 2 <= len(store.done_rows(BATCH)) < 20  # what finished is saved


def fake_cluster(nodes: int, cpus: float) -> Any:
    return SimpleNamespace(
        nodes=lambda: [{"Alive": True}] * nodes + [{"Alive": False}],
        cluster_resources=lambda: {"CPU": cpus},
    )


def test_a_sqlite_store_is_refused_on_several_nodes_and_postgres_is_not() -> None:
    with pytest.raises(BatchEngineError, match=r"use --store postgresql://"):
        ray_engine._check_cluster(fake_cluster(2, 4), "/tmp/runs.db", None)
    assert ray_engine._check_cluster(fake_cluster(2, 4), "postgresql://h/db", None) == 4
    assert ray_engine._check_cluster(fake_cluster(1, 2), "/tmp/runs.db", None) == 2  # one node may share a file
    with pytest.raises(BatchEngineError, match="more than the cluster's 2 CPUs"):
        ray_engine._check_cluster(fake_cluster(1, 2), "/tmp/runs.db", 3)


async def test_without_ray_the_engine_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.setattr(ray_engine.importlib, "import_module", lambda name: no_ray(name))
    header = BatchHeader(BATCH, "w", "w.yaml", "", "in.jsonl", "jsonl", "x", 1, {}, {})
    with pytest.raises(BatchEngineError, match=r"pip install 'modelyard\[ray\]'"):
        async with open_ray_engine(header, "/tmp/x.db", BackendRef()):
            pass
