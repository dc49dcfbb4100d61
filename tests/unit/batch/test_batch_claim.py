"""One driver per batch: `claim` marks a batch running atomically with reading who holds it, on both stores."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.batch.store import LEASE_S, BatchStore, holds_batch, open_batch_store
from tests.unit.batch.test_store import header


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process of this host that is alive for the test (a driver that has not died)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def marker(pid: int, host: str | None = None, beat: float | None = None) -> dict[str, object]:
    return {"pid": pid, "host": host or socket.gethostname(), "heartbeat_at": time.time() if beat is None else beat}


def opened(where: str) -> BatchStore:
    store = open_batch_store(where)
    store.create_batch(header("b1"))
    return store


def test_a_batch_held_by_a_live_process_is_refused_unless_forced(where: str, live_pid: int) -> None:
    store = opened(where)
    try:
        assert store.claim("b1", marker(live_pid)) is None  # free: claimed
        held = store.claim("b1", marker(os.getpid()))
        assert held is not None and held[0] == "running" and held[1]["pid"] == live_pid
        assert store.claim("b1", marker(os.getpid()), force=True) is None
        state = store.state("b1")
        assert state is not None and state[1]["pid"] == os.getpid()
    finally:
        store.close()


def test_a_dead_drivers_batch_and_a_finished_batch_are_claimed(where: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = opened(where)
    try:
        store.set_state("b1", "running", marker(dead.pid))
        assert store.claim("b1", marker(os.getpid())) is None
        store.set_state("b1", "finished", {"reason": "done"})
        assert store.claim("b1", marker(os.getpid())) is None
    finally:
        store.close()


def test_two_stores_claiming_at_once_give_the_batch_to_exactly_one(where: str, live_pid: int) -> None:
    """Two handles (as two drivers on two machines would have), the second claiming for a live process."""
    first, second = opened(where), open_batch_store(where)
    try:
        assert first.claim("b1", marker(live_pid)) is None
        assert second.claim("b1", marker(os.getpid())) is not None
    finally:
        first.close()
        second.close()


def test_another_hosts_driver_holds_the_batch_while_its_heartbeat_is_fresh() -> None:
    now = time.time()
    fresh = ("running", marker(1, "elsewhere", now - 5))
    stale = ("running", marker(1, "elsewhere", now - LEASE_S - 1))
    assert holds_batch(fresh, now) and not holds_batch(stale, now)
    assert not holds_batch(("stopped", marker(1, "elsewhere", now)), now)
    assert not holds_batch(("running", {"pid": 1, "host": "elsewhere"}), now)  # never beat: not held
    assert not holds_batch(("running", marker(os.getpid())), now)  # this very process: a session of its own


async def test_a_running_driver_keeps_its_heartbeat_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host takes a silent driver for dead after LEASE_S: a live one must keep beating."""
    from modelyard.batch import driver as driver_module
    from modelyard.workflows.scripted import ScriptedBackend
    from tests.unit.batch.test_driver import Batch

    monkeypatch.setattr(driver_module, "HEARTBEAT_S", 0.05)
    batch = Batch(tmp_path, 12)
    run = asyncio.ensure_future(batch.driver(ScriptedBackend(delay_s=0.05), concurrency=1).run())
    beats: list[float] = []
    try:
        while not run.done() and len(set(beats)) < 3:
            await asyncio.sleep(0.02)
            state = batch.store.state("b-test")
            if state is not None and state[0] == "running":
                beats.append(state[1]["heartbeat_at"])
    finally:
        await run
    assert len(set(beats)) >= 3 and beats == sorted(beats)
    final = batch.store.state("b-test")
    assert final is not None and final[0] == "finished"
