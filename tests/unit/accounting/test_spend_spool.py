"""The spend spool: one write() per event-loop tick before anyone is answered, replay after a crash,
rotation and deletion once the store has acknowledged, outages retried, bad rows bisected and set aside."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from modelyard.accounting.spend import SpendDataError, SpendRecord, SpendWriter, escape_text, sanitise, unstorable


class Sink:
    """A store stand-in: fails the first `down` calls like an outage, refuses batches holding `poison` ids."""

    def __init__(self, *, down: int = 0, poison: frozenset[str] = frozenset()) -> None:
        self.rows: dict[str, SpendRecord] = {}
        self.down = down
        self.poison = poison
        self.calls = 0
        self.dead: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None

    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.calls <= self.down:
            raise ConnectionRefusedError("connection refused")
        if any(r.id in self.poison for r in records):
            raise SpendDataError("invalid byte sequence")
        for record in records:
            self.rows.setdefault(record.id, record)  # like ON CONFLICT (id) DO NOTHING

    async def write_dead_spend(self, records: Sequence[tuple[SpendRecord, str]]) -> None:
        self.dead.extend((record.id, reason) for record, reason in records)


def record(i: int, **fields: object) -> SpendRecord:
    return SpendRecord(id=f"req_{i}", at=1000.0 + i, **fields)  # type: ignore[arg-type]


def spooled_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.spool"))


async def committed(writer: SpendWriter, item: SpendRecord) -> None:
    """Commit and wait until the record is in the spool, as a handler does before its last byte."""
    done = writer.commit(item)
    assert done is not None
    await done


def leftover(directory: Path) -> list[str]:
    """Files left in the spool directory (segments, lock files)."""
    return sorted(os.listdir(directory))


def crash(writer: SpendWriter) -> None:
    """What kill -9 leaves: the writer task gone, files closed, nothing deleted."""
    assert writer._task is not None and writer.spool is not None
    writer._task.cancel()
    writer.spool.abandon()
    writer._task = None
    writer.spool = None


async def test_one_write_per_tick_and_in_the_kernel_before_the_commit_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)  # the spool calls os.write
    sink = Sink()
    writer = SpendWriter(sink, spool_dir=tmp_path, flush_interval_s=30.0)
    await writer.start()
    try:

        async def respond(i: int) -> int:
            done = writer.commit(record(i))
            assert done is not None
            await done
            return spooled_lines(tmp_path)  # what the kernel holds when this response may go out

        seen = await asyncio.gather(*(respond(i) for i in range(50)))
        assert len(writes) == 1  # fifty responses in one tick: one write()
        assert min(seen) == 50 and sink.rows == {}  # all in the spool, none in the store yet
        await respond(50)
        assert len(writes) == 2
    finally:
        await writer.close()
    assert len(sink.rows) == 51
    assert leftover(tmp_path) == []  # everything acknowledged: segments and lock file gone


async def test_a_crashed_writers_spool_is_replayed_once(tmp_path: Path) -> None:
    down = Sink(down=10**6)  # the store never answers before the crash
    first = SpendWriter(down, spool_dir=tmp_path, retry_base_s=0.01, flush_interval_s=0.01)
    await first.start()
    for i in range(40):
        first.submit(record(i, key_id="k1", cost_usd=0.25))
    await asyncio.sleep(0.05)
    assert first.pending_cost("k1", 1000.0) == pytest.approx(10.0)
    assert first.pending_cost("k1", 1030.0) == pytest.approx(2.5)
    assert first.pending_cost("k2", 0.0) == 0.0
    crash(first)

    store = Sink()
    store.rows = {f"req_{i}": record(i) for i in range(15)}  # some had reached the store before the crash
    second = SpendWriter(store, spool_dir=tmp_path, flush_interval_s=0.01)
    await second.start()
    assert second.replayed == 40
    assert second.pending_cost("k1", 0.0) == pytest.approx(10.0)  # replayed, not yet acknowledged
    assert await second.flush(5)
    assert sorted(store.rows) == sorted(f"req_{i}" for i in range(40))
    assert second.pending_cost("k1", 0.0) == 0.0
    await second.close()
    assert leftover(tmp_path) == []

    third = SpendWriter(Sink(), spool_dir=tmp_path)  # nothing left to replay
    await third.start()
    assert third.replayed == 0
    await third.close()


async def test_a_live_writers_spool_is_not_adopted(tmp_path: Path) -> None:
    gate = Sink()
    gate.gate = asyncio.Event()  # its store write hangs: records stay unacknowledged
    live = SpendWriter(gate, spool_dir=tmp_path, flush_interval_s=0.01)
    await live.start()
    await committed(live, record(1))
    other = SpendWriter(Sink(), spool_dir=tmp_path)
    await other.start()
    assert other.replayed == 0  # its owner's lock is held
    await other.close()
    gate.gate.set()
    await live.close()
    assert list(gate.rows) == ["req_1"]


async def test_segments_rotate_and_go_once_acknowledged(tmp_path: Path) -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    writer = SpendWriter(sink, spool_dir=tmp_path, segment_bytes=4096, flush_interval_s=0.01, batch_size=50)
    await writer.start()
    try:
        for tick in range(12):
            await asyncio.gather(*(committed(writer, record(tick * 10 + i)) for i in range(10)))
        assert writer.spool is not None
        assert len(writer.spool.files) >= 3  # ~200 bytes a record, 4 KiB segments
        assert spooled_lines(tmp_path) == 120
        sink.gate.set()
        assert await writer.flush(5)
        await writer.spool.sync()
        assert len(writer.spool.files) == 1  # sealed and acknowledged: deleted; the active one stays
    finally:
        await writer.close()
    assert len(sink.rows) == 120 and leftover(tmp_path) == []


async def test_an_outage_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    sink = Sink(down=3)
    writer = SpendWriter(sink, spool_dir=tmp_path, retry_base_s=0.01, flush_interval_s=0.01)
    await writer.start()
    for i in range(20):
        writer.submit(record(i))
    assert await writer.flush(5)
    await writer.close()
    assert writer.failures == 3 and writer.dead_letters == 0 and len(sink.rows) == 20


async def test_store_down_at_shutdown_leaves_the_records_for_the_next_start(tmp_path: Path) -> None:
    writer = SpendWriter(Sink(down=10**6), spool_dir=tmp_path, retry_base_s=0.01, flush_interval_s=0.01)
    await writer.start()
    for i in range(5):
        writer.submit(record(i))
    await writer.close()
    assert writer.dropped == 0 and spooled_lines(tmp_path) == 5
    store = Sink()
    later = SpendWriter(store, spool_dir=tmp_path)
    await later.start()
    await later.close()
    assert len(store.rows) == 5 and leftover(tmp_path) == []


async def test_a_poison_row_is_bisected_out_and_set_aside(tmp_path: Path) -> None:
    sink = Sink(poison=frozenset({"req_37"}))
    writer = SpendWriter(sink, spool_dir=tmp_path, batch_size=100, flush_interval_s=0.01)
    await writer.start()
    for i in range(100):
        writer.submit(record(i))
    assert await writer.flush(5)
    assert len(sink.rows) == 99 and "req_37" not in sink.rows
    assert [dead for dead, _ in sink.dead] == ["req_37"] and writer.dead_letters == 1
    assert sink.calls <= 2 * 7 + 1  # a bisection, not a row-by-row retry
    writer.submit(record(200))  # later batches flow
    assert await writer.flush(5)
    assert "req_200" in sink.rows
    await writer.close()
    assert leftover(tmp_path) == []  # the dead letter was acknowledged too


def test_sanitise_makes_text_ints_and_floats_storable() -> None:
    bad = SpendRecord(id="r\x00", at=float("nan"), model="a\x00b\ud800", prompt_tokens=2**70, cost_usd=float("inf"))
    clean = sanitise(bad)
    assert clean.id == "r\\u0000" and clean.model == "a\\u0000b\\ud800"
    assert clean.prompt_tokens == 2**63 - 1 and clean.cost_usd == 0.0 and clean.at == 0.0
    good = record(1)
    assert sanitise(good) is good and escape_text("plain") == "plain"


async def test_a_lone_surrogate_does_not_break_the_spool(tmp_path: Path) -> None:
    sink = Sink()
    writer = SpendWriter(sink, spool_dir=tmp_path, flush_interval_s=0.01)
    await writer.start()
    await committed(writer, record(1, model="x\ud800y"))
    await writer.close()
    assert sink.rows["req_1"].model == "x\\ud800y"


async def test_a_cancelled_committer_cancels_no_one_else(tmp_path: Path) -> None:
    writer = SpendWriter(Sink(), spool_dir=tmp_path, flush_interval_s=30.0)
    await writer.start()
    try:
        waiting = [asyncio.ensure_future(committed(writer, record(i))) for i in range(3)]
        await asyncio.sleep(0)  # all three are waiting on this tick's write
        waiting[0].cancel()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError) and results[1:] == [None, None]
        assert spooled_lines(tmp_path) == 3  # the cancelled one's record is written all the same
    finally:
        await writer.close()


async def test_an_unusable_spool_directory_is_loud_but_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sink = Sink()
    writer = SpendWriter(sink, spool_dir=blocker / "spool", flush_interval_s=0.01)
    await writer.start()
    assert writer.spool is None and writer.spool_errors == 1
    writer.submit(record(1))
    assert await writer.flush(5)
    await writer.close()
    assert list(sink.rows) == ["req_1"]


async def test_a_crashed_writers_spool_keeps_what_the_guardrails_found(tmp_path: Path) -> None:
    """The guardrails column rides the spool like the money: a kill -9 before the store wrote the row loses
    neither (issue 13's column, same path as cost)."""
    first = SpendWriter(Sink(down=10**6), spool_dir=tmp_path, retry_base_s=0.01, flush_interval_s=0.01)
    await first.start()
    text = "pii:output:redact fired 2 0.06ms, json_schema:output:retry fired 0 0.11ms"
    await committed(first, record(1, cost_usd=0.5, guardrails=text))
    crash(first)
    store = Sink()
    second = SpendWriter(store, spool_dir=tmp_path, flush_interval_s=0.01)
    await second.start()
    assert second.replayed == 1
    assert await second.flush(5)
    assert store.rows["req_1"].guardrails == text and store.rows["req_1"].cost_usd == 0.5
    await second.close()


def test_unstorable_text_is_told_apart_on_both_paths_ascii_and_not() -> None:
    """The one rule a store's text check and escape_text share: NUL (ASCII or not) and lone surrogates."""
    for text in ("a\x00b", "\x00", "é\x00", "half \ud800 pair", "\udfff"):
        assert unstorable(text) and escape_text(text) != text
    for text in ("", "plain ascii", "héllo wörld", "emoji \U0001f600", "\\u0000 written out"):
        assert not unstorable(text) and escape_text(text) == text
