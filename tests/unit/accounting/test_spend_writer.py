"""The spend writer: batches, never blocks, retries a failed store, loses nothing at a clean shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from modelyard.accounting.spend import SpendRecord, SpendWriter


class Sink:
    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.fail_first = fail_first
        self.delay = delay
        self.calls = 0

    async def write_spend(self, records: Sequence[SpendRecord]) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.calls <= self.fail_first:
            raise ConnectionError("database is down")
        self.batches.append([r.id for r in records])


def record(i: int) -> SpendRecord:
    return SpendRecord(id=f"r{i}", at=float(i))


async def test_batches_of_batch_size() -> None:
    sink = Sink()
    writer = SpendWriter(sink, batch_size=10, flush_interval_s=10.0)
    await writer.start()
    for i in range(25):
        writer.submit(record(i))
    await writer.flush()
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert [r for b in sink.batches for r in b] == [f"r{i}" for i in range(25)]
    await writer.close()
    assert writer.written == 25 and writer.dropped == 0


async def test_a_small_batch_waits_at_most_the_flush_interval() -> None:
    sink = Sink()
    writer = SpendWriter(sink, batch_size=100, flush_interval_s=0.05)
    await writer.start()
    writer.submit(record(1))
    await asyncio.sleep(0.02)
    assert sink.batches == []  # still collecting
    await asyncio.sleep(0.1)
    assert sink.batches == [["r1"]]
    await writer.close()


async def test_a_write_starts_at_write_at_and_a_backlog_still_goes_in_full_batches() -> None:
    """A write does not wait for a whole batch_size (the c=1 tail of issue #20: one short burst of store work
    at a time), but records that piled up meanwhile go in batches of batch_size, where a row is cheapest."""
    from modelyard.accounting.spend import WRITE_AT

    sink = Sink(delay=0.05)
    writer = SpendWriter(sink, batch_size=WRITE_AT * 3, flush_interval_s=60.0)
    assert writer.write_at == WRITE_AT
    await writer.start()
    for i in range(WRITE_AT - 1):
        writer.submit(record(i))
    await asyncio.sleep(0.02)
    assert sink.calls == 0  # one short of write_at, and the flush interval is a minute away
    writer.submit(record(WRITE_AT - 1))
    await asyncio.sleep(0.01)
    assert sink.calls == 1  # started at write_at, not at batch_size
    for i in range(WRITE_AT, WRITE_AT * 5):
        writer.submit(record(i))  # queued while the first write is in flight
    await writer.flush()
    assert [len(b) for b in sink.batches] == [WRITE_AT, WRITE_AT * 3, WRITE_AT]
    await writer.close()


async def test_close_writes_everything_queued() -> None:
    sink = Sink(delay=0.01)
    writer = SpendWriter(sink, batch_size=7, flush_interval_s=60.0)
    await writer.start()
    for i in range(50):
        writer.submit(record(i))
    await writer.close()
    assert sum(len(b) for b in sink.batches) == 50
    writer.submit(record(99))  # after close: counted, not queued
    assert writer.dropped == 1


async def test_failed_writes_are_retried_without_losing_the_batch() -> None:
    sink = Sink(fail_first=2)
    writer = SpendWriter(sink, batch_size=5, flush_interval_s=0.01, retry_base_s=0.01)
    await writer.start()
    for i in range(5):
        writer.submit(record(i))
    await writer.flush()
    assert sink.batches == [[f"r{i}" for i in range(5)]]
    assert writer.failures == 2
    await writer.close()


async def test_submit_never_blocks_and_counts_drops() -> None:
    sink = Sink(delay=0.05)
    writer = SpendWriter(sink, batch_size=2, flush_interval_s=0.0, max_queue=3)
    await writer.start()
    for i in range(10):
        writer.submit(record(i))  # synchronous: returns at once even though the queue overflows
    assert writer.dropped == 7  # the queue holds 3; nothing ran in between
    await writer.close()
    assert writer.written + writer.dropped == 10


async def test_submit_before_start_is_dropped_not_raised() -> None:
    writer = SpendWriter(Sink())
    writer.submit(record(1))
    assert writer.dropped == 1
    await writer.close()  # never started: nothing to do


@pytest.mark.parametrize("count", [1, 499, 500, 501])
async def test_flush_after_any_count(count: int) -> None:
    sink = Sink()
    writer = SpendWriter(sink, batch_size=500, flush_interval_s=30.0)
    await writer.start()
    for i in range(count):
        writer.submit(record(i))
    await asyncio.wait_for(writer.flush(), 5)
    assert sum(len(b) for b in sink.batches) == count
    await writer.close()
