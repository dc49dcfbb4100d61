"""The SQLite store's spend inserts in a helper process (state/sqlite_insert_process.py): when it starts, that a
bad row and a dead child keep their meanings (data error vs outage), that nothing is lost or counted twice
across a child's death, and that the child never outlives the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from modelyard.accounting.spend import WRITE_AT, SpendDataError, SpendRecord, SpendWriter
from modelyard.state import sqlite_store
from modelyard.state.sqlite_insert_process import InsertProcessGone
from modelyard.state.sqlite_store import YIELD_UP_TO_ROWS, InsertsIn, SQLiteStore
from tests.unit.state.conftest import spend_record


@asynccontextmanager
async def _opened(path: str, inserts: InsertsIn) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(path, inserts=inserts)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _batch(first: int, count: int) -> list[SpendRecord]:
    return [spend_record(i) for i in range(first, first + count)]


async def _totals(store: SQLiteStore) -> tuple[int, int, int]:
    """(rows, requests in the hour rollups, prompt tokens in the hour rollups)."""
    hours = await store.traffic("hour", "all", 0.0, 2e9)
    rows = len(await store.spend_records(limit=10**6))
    return rows, sum(r.requests for r in hours), sum(r.prompt_tokens for r in hours)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie that nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


async def test_auto_starts_the_helper_under_load_and_keeps_a_lagging_writers_big_batches_on_the_thread(
    tmp_path: Path,
) -> None:
    """Below WRITE_AT rows a batch (a quiet gateway) no helper is started; from the first such batch on, the
    batches of a writer that keeps up go to the helper, and a batch over YIELD_UP_TO_ROWS (a writer that is
    behind, perhaps because the idle-priority helper finds no idle CPU) to the thread."""
    async with _opened(str(tmp_path / "db.sqlite"), inserts="auto") as store:
        await store.write_spend(_batch(0, WRITE_AT - 1))
        assert store.insert_pid is None  # a quiet gateway keeps to one process
        await store.write_spend(_batch(1000, WRITE_AT))
        pid = store.insert_pid
        assert pid is not None and pid != os.getpid() and not _gone(pid)
        assert store.process_inserts == 1
        await store.write_spend(_batch(2000, 5))
        assert store.process_inserts == 2 and store.insert_pid == pid
        await store.write_spend(_batch(3000, YIELD_UP_TO_ROWS + 1))
        assert store.process_inserts == 2 and store.insert_pid == pid  # on the thread; the helper is kept
        rows = 2 * WRITE_AT - 1 + 5 + YIELD_UP_TO_ROWS + 1
        assert await _totals(store) == (rows, rows, rows * 100)
    assert _wait_gone(pid), "close() ends the helper process"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_the_helper_runs_at_idle_priority(tmp_path: Path) -> None:
    """It must take only CPU nobody else wants: at normal priority its bursts cost the c=1 p99 0.4-0.6 ms."""
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        await store.write_spend(_batch(0, 5))
        assert store.insert_pid is not None
        assert os.sched_getscheduler(store.insert_pid) == os.SCHED_IDLE


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")
async def test_the_helper_holds_no_socket(tmp_path: Path) -> None:
    """Nothing leaves the machine: the helper talks to its gateway over its stdin/stdout pipes and to the
    database file, nothing else."""
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        await store.write_spend(_batch(0, 5))
        pid = store.insert_pid
        assert pid is not None
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert any(t.startswith("pipe:") for t in targets)  # the reading works: its pipes are there
        assert not [t for t in targets if t.startswith("socket:")]


async def test_thread_never_starts_a_process(tmp_path: Path) -> None:
    async with _opened(str(tmp_path / "db.sqlite"), inserts="thread") as store:
        await store.write_spend(_batch(0, 2 * YIELD_UP_TO_ROWS))
        assert store.insert_pid is None and store.process_inserts == 0


async def test_an_in_memory_store_never_starts_a_process() -> None:
    async with _opened(":memory:", inserts="process") as store:
        await store.write_spend(_batch(0, 300))
        assert store.insert_pid is None
        assert (await _totals(store))[0] == 300


@pytest.mark.parametrize(
    ("fields", "in_child"),
    [
        ({"prompt_tokens": 2**63}, True),  # msgpack carries it; SQLite cannot bind it: refused in the child
        ({"model": "a\x00b"}, True),  # a NUL: refused by the child's preparation
        ({"prompt_tokens": 2**70}, False),  # beyond msgpack: refused when the gateway encodes the batch
    ],
)
async def test_a_row_that_cannot_be_stored_is_a_data_error_in_the_gateway(
    tmp_path: Path, fields: dict[str, object], in_child: bool
) -> None:
    """A row refused in the child (at binding, or by the batch's preparation) or by the gateway's encoding:
    the writer must still see a data error (to bisect and sanitise the row), not an outage (which it would
    retry forever)."""
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        with pytest.raises(SpendDataError):
            await store.write_spend([*_batch(0, 3), spend_record(3, **fields)])
        assert (store.insert_pid is not None) is in_child  # a child that refused a row is fine, and kept
        await store.write_spend(_batch(0, 4))
        assert store.insert_pid is not None
        assert await _totals(store) == (4, 4, 400)  # the refused batch left nothing behind


async def test_the_helper_prepares_its_batches_so_the_event_loop_only_encodes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's rows, parameters and rollup deltas are built in the child (issue #20: ~3 µs a row that held
    up the requests behind a write); the gateway's process never builds a row of a batch the helper takes,
    and what the helper stores is what the thread stores."""
    built: list[str] = []
    spend_row = sqlite_store.spend_row

    def counted(record: SpendRecord) -> tuple[object, ...]:
        built.append(record.id)
        return spend_row(record)

    monkeypatch.setattr(sqlite_store, "spend_row", counted)
    records = [*_batch(0, 40), spend_record(40, model="é ☃", cost_usd=0.25, ttft_ms=None)]
    async with _opened(str(tmp_path / "helper.sqlite"), inserts="process") as helper:
        await helper.write_spend(records)
        assert helper.process_inserts == 1 and built == []
        by_helper = (await helper.spend_records(limit=100), await helper.traffic("hour", "all", 0.0, 2e9))
    async with _opened(str(tmp_path / "thread.sqlite"), inserts="thread") as thread:
        await thread.write_spend(records)
        assert len(built) == len(records)
        by_thread = (await thread.spend_records(limit=100), await thread.traffic("hour", "all", 0.0, 2e9))
    assert by_helper == by_thread and by_helper[0] == records


def test_the_helper_gives_its_core_up_between_the_statements_it_prepares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child decodes and prepares a batch a statement at a time and yields between (a 200-row batch at once
    was a ~0.7 ms burst at the start of every write, which held up the requests behind it even at idle
    priority), then inserts it yielding between statements as before; run here on a connection of our own."""
    yields: list[int] = []
    monkeypatch.setattr(sqlite_store, "_YIELD", lambda: yields.append(1))
    records = _batch(0, 100)  # statements of 32, 32, 32 and 4 rows
    payload = sqlite_store.encoded_batch(records)
    assert len(payload) == 4
    conn = sqlite_store.connect(str(tmp_path / "db.sqlite"))
    try:
        sqlite_store._migrate(conn)
        sqlite_store.insert_records(conn, payload)
        assert conn.execute("SELECT COUNT(*) FROM modelyard_spend").fetchone()[0] == 100
    finally:
        conn.close()
    assert len(yields) == 3 + 4  # between the 4 statements prepared, after each of the 4 inserted


async def test_a_killed_child_is_an_outage_and_a_retry_counts_each_row_once(tmp_path: Path) -> None:
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        first = _batch(0, 50)
        await store.write_spend(first)
        pid = store.insert_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid)
        second = _batch(50, 50)
        with pytest.raises(InsertProcessGone) as caught:
            await store.write_spend(second)
        assert isinstance(caught.value, ConnectionError)  # an outage to the spend writer: kept and retried
        await store.write_spend(second)
        assert store.insert_pid not in (None, pid)  # a new child
        await store.write_spend(first)  # a replay of rows already stored (a spool after a crash)
        assert await _totals(store) == (100, 100, 10_000)


async def test_the_child_ignores_sigterm_so_the_last_flush_still_lands(tmp_path: Path) -> None:
    """SIGTERM reaches a whole service (systemd's control group) or process group; the gateway drains and
    flushes the spend log after it, so its helper must still be there."""
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        await store.write_spend(_batch(0, 5))
        pid = store.insert_pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        await asyncio.sleep(0.2)
        await store.write_spend(_batch(5, 5))
        assert store.insert_pid == pid
        assert (await _totals(store))[0] == 10


async def test_the_spend_writer_loses_nothing_when_the_child_dies_mid_stream(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "db.sqlite"), inserts="process")
    await store.open()
    writer = SpendWriter(store, batch_size=40, flush_interval_s=0.05, spool_dir=tmp_path / "spool")
    writer.retry_base_s = 0.01
    await writer.start()
    try:
        for i in range(120):
            writer.submit(spend_record(i))
        await writer.flush(10)
        pid = store.insert_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid)
        for i in range(120, 240):
            writer.submit(spend_record(i))
        await writer.flush(10)
    finally:
        await writer.close()
    try:
        assert await _totals(store) == (240, 240, 24_000)
        assert writer.failures >= 1  # the dead child was met, and waited out
    finally:
        await store.close()


async def test_poison_rows_through_the_helper_are_sanitised_or_set_aside_and_the_rest_flows(tmp_path: Path) -> None:
    """The hostile rows of the thread's poison test (test_spend_durable.py), now refused in the helper or by
    the gateway's encoding: each is still a data error the writer bisects to, sanitises or sets aside; every
    other row lands once, and the rollups stay finite."""
    poison: dict[int, dict[str, object]] = {
        3: {"model": "evil\x00model"},  # NUL: refused by the helper's preparation
        5: {"latency_ms": float("nan")},  # not finite: stored as 0
        7: {"key_name": "half \ud800 pair"},  # a lone surrogate: msgpack cannot encode it
        9: {"cost_usd": float("inf")},  # not finite: stored as 0, never summed
        11: {"prompt_tokens": 2**70},  # beyond msgpack: clamped when sanitised
        13: {"completion_tokens": 2**63},  # beyond SQLite's integers: refused at binding in the helper
        15: {"status": None},  # NOT NULL: nothing can fix it, set aside
    }
    store = SQLiteStore(str(tmp_path / "db.sqlite"), inserts="process")
    await store.open()
    writer = SpendWriter(store, batch_size=50, flush_interval_s=0.01, spool_dir=tmp_path / "spool")
    await writer.start()
    try:
        for i in range(20):
            writer.submit(spend_record(i, **poison.get(i, {})))
        assert await writer.flush(10)
    finally:
        await writer.close()
    try:
        stored = await store.spend_records(limit=100)
        assert {r.id for r in stored} == {f"req_{i}" for i in range(20)} - {"req_15"}
        by_id = {r.id: r for r in stored}
        assert "\x00" not in (by_id["req_3"].model or "") and by_id["req_9"].cost_usd == 0.0
        assert by_id["req_5"].latency_ms == 0.0 and writer.dead_letters == 1
        hours = await store.traffic("hour", "all", 0.0, 2e9)
        assert sum(r.requests for r in hours) == 19
        assert abs(sum(r.cost_usd for r in hours) - 18 * 0.001) < 1e-12
        assert store.process_inserts >= 2  # the helper made the inserts (the bisection's halves too)
    finally:
        await store.close()
    assert os.listdir(tmp_path / "spool") == []


def test_the_child_does_not_outlive_a_gateway_killed_with_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(Path(__file__).parents[3])!r})
        from tests.unit.state.test_sqlite_insert_process import _batch
        from modelyard.state.sqlite_store import SQLiteStore

        async def main():
            store = SQLiteStore({str(tmp_path / "db.sqlite")!r}, inserts="process")
            await store.open()
            await store.write_spend(_batch(0, 10))
            print(store.insert_pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    gateway = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        child = int(gateway.stdout.readline())
        assert not _gone(child)
        gateway.kill()
        gateway.wait()
        assert _wait_gone(child), "the helper exits when its gateway dies"
    finally:
        if gateway.poll() is None:
            gateway.kill()


@pytest.mark.parametrize("setting", [None, "thread", "process"])
def test_the_config_picks_where_inserts_are_made(tmp_path: Path, setting: str | None) -> None:
    from modelyard.config.loader import parse_config
    from modelyard.server.services import build_services

    line = f"\n  sqlite_inserts: {setting}" if setting else ""
    text = f"""
deployments:
  - {{name: d, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1"}}
spend:
  store: {tmp_path / "spend.db"}{line}
"""
    store = build_services(parse_config(text, env={})).store
    assert isinstance(store, SQLiteStore)
    assert store.inserts == (setting or "auto")


def test_an_unknown_insert_place_is_a_config_error() -> None:
    from modelyard.config.loader import parse_config
    from modelyard.schema.errors import ModelyardError

    text = """
deployments:
  - {name: d, provider: openai, model: m, api_base: "http://127.0.0.1:9/v1"}
spend: {store: x.db, sqlite_inserts: elsewhere}
"""
    with pytest.raises(ModelyardError, match="sqlite_inserts"):
        parse_config(text, env={})


@pytest.mark.parametrize(
    "command",
    [
        ["/nonexistent/python"],  # cannot be started at all
        [sys.executable, "-c", "import sys; sys.exit(1)"],  # dies before its first answer
    ],
)
async def test_a_helper_that_cannot_run_leaves_the_inserts_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Retrying a helper that cannot start would fail the same way forever (and the spend log would stop):
    the store says so once and goes back to its thread; the batch is written."""
    from modelyard.state import sqlite_insert_process

    real_init = sqlite_insert_process.InsertProcess.__init__

    def broken(self: sqlite_insert_process.InsertProcess, path: str) -> None:
        real_init(self, path)
        self.command = command

    monkeypatch.setattr(sqlite_insert_process.InsertProcess, "__init__", broken)
    async with _opened(str(tmp_path / "db.sqlite"), inserts="process") as store:
        await store.write_spend(_batch(0, 20))
        assert store.inserts == "thread" and store.insert_pid is None
        await store.write_spend(_batch(20, 20))
        assert await _totals(store) == (40, 40, 4000)
    assert "stay on the store's thread" in caplog.text
