"""Feedback on the real stores (SQLite, PostgreSQL): idempotent writes, the join with the spend row (which may
land after the feedback), the learning columns of the spend row, and bad rows that must not stall anything."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.state.feedback import FeedbackRecord, decode_embedding, encode_embedding
from modelyard.state.store import Store

T0 = 1_700_000_000.0


def _spend(i: int, **fields: Any) -> SpendRecord:
    base: dict[str, Any] = {"id": f"req_{i}", "at": T0 + i, "model": "smart", "deployment": "cheap", "key_id": "k1"}
    base.update(fields)
    return SpendRecord(**base)


def _feedback(i: int, request: int, score: float = 1.0, **fields: Any) -> FeedbackRecord:
    base: dict[str, Any] = {"id": f"fb_{i}", "request_id": f"req_{request}", "at": T0 + 100 + i, "score": score}
    base.update({"source": "key", "key_id": "k1"}, **fields)
    return FeedbackRecord(**base)


async def test_learning_columns_round_trip(store: Store) -> None:
    vector = np.arange(8, dtype=np.float32) / 10
    stored = encode_embedding("minilm-l6-v2/t16", vector.tobytes())
    learned = _spend(1, task="maths", predicted=0.8125, embedding=stored)
    await store.write_spend([learned, _spend(2)])  # one batch with and without the learning columns
    got = await store.get_spend("req_1")
    assert got is not None and (got.task, got.predicted, got.embedding) == ("maths", 0.8125, stored)
    space, raw = decode_embedding(got.embedding)  # type: ignore[arg-type]
    assert space == "minilm-l6-v2/t16" and np.array_equal(np.frombuffer(raw, np.float32), vector)
    plain = await store.get_spend("req_2")
    assert plain is not None and (plain.task, plain.predicted, plain.embedding) == (None, None, None)
    await store.write_spend([_spend(3)])  # a batch none of whose rows fills them
    again = await store.get_spend("req_3")
    assert again is not None and again.deployment == "cheap" and again.embedding is None


async def test_feedback_joins_its_spend_row_once_the_row_lands(store: Store) -> None:
    await store.write_spend([_spend(1, task="code", predicted=0.25, content="hello")])
    await store.write_feedback([_feedback(1, 1, 0.0, label="wrong"), _feedback(2, 2, 1.0)])  # req_2 not stored yet
    samples = await store.feedback_samples()
    assert [(s.feedback_id, s.request_id) for s in samples] == [("fb_1", "req_1")]
    first = samples[0]
    assert (first.score, first.label, first.task, first.predicted, first.content) == (
        0.0,
        "wrong",
        "code",
        0.25,
        "hello",
    )
    assert (first.model, first.deployment, first.key_id, first.source) == ("smart", "cheap", "k1", "key")
    await store.write_spend([_spend(2, model="other")])  # the spend writer catches up
    assert [s.feedback_id for s in await store.feedback_samples()] == ["fb_1", "fb_2"]
    assert [s.feedback_id for s in await store.feedback_samples(model="other")] == ["fb_2"]
    assert [s.feedback_id for s in await store.feedback_samples(since=T0 + 102)] == ["fb_2"]
    assert [s.feedback_id for s in await store.feedback_samples(limit=1)] == ["fb_1"]


async def test_feedback_is_ordered_by_time_then_id_and_written_once(store: Store) -> None:
    await store.write_spend([_spend(1)])
    same_time = {"at": T0 + 500}
    await store.write_feedback([_feedback(9, 1, **same_time), _feedback(3, 1, **same_time), _feedback(5, 1)])
    await store.write_feedback([_feedback(9, 1, 0.0, **same_time)])  # a retried write: the first one stays
    samples = await store.feedback_samples()
    assert [s.feedback_id for s in samples] == ["fb_5", "fb_3", "fb_9"]
    assert samples[-1].score == 1.0
    assert await store.write_feedback([]) is None


@pytest.mark.parametrize("score", [math.nan, math.inf, -0.01, 1.01])
async def test_feedback_out_of_its_domain_is_refused_before_anything_is_written(store: Store, score: float) -> None:
    await store.write_spend([_spend(1)])
    with pytest.raises(ValueError):
        await store.write_feedback([_feedback(1, 1), _feedback(2, 1, score)])
    assert await store.feedback_samples() == []


async def test_hostile_text_in_feedback_is_stored_escaped(store: Store) -> None:
    await store.write_spend([_spend(1)])
    await store.write_feedback([_feedback(1, 1, label="nul\x00 and \ud800 half")])
    (sample,) = await store.feedback_samples()
    assert sample.label is not None and "\x00" not in sample.label and sample.label.startswith("nul")


async def test_a_bad_learning_row_does_not_stall_the_spend_writer(store: Store, tmp_path: Path) -> None:
    writer = SpendWriter(store, batch_size=50, flush_interval_s=0.01, spool_dir=tmp_path / "spool")
    await writer.start()
    try:
        for i in range(10):
            fields: dict[str, Any] = {"task": "t", "predicted": 0.5, "embedding": "minilm|AAAA"}
            if i == 2:
                fields["embedding"] = "bad\x00embedding"  # NUL: PostgreSQL text cannot hold it
            elif i == 4:
                fields["task"] = "half \ud800 pair"
            elif i == 6:
                fields["predicted"] = math.nan
            writer.submit(_spend(i, **fields))
        assert await writer.flush(10)
        for i in range(10):
            assert await store.get_spend(f"req_{i}") is not None, i
        writer.submit(_spend(100, task="after"))
        assert await writer.flush(10)
        assert (await store.get_spend("req_100")) is not None
        assert writer.dead_letters == 0
    finally:
        await writer.close()


async def test_a_lean_read_leaves_the_embedding_and_text_out(store: Store) -> None:
    await store.write_spend([_spend(1, task="t", predicted=0.25, embedding="minilm|AAAA", content="the prompt")])
    await store.write_feedback([_feedback(1, 1)])
    (full,) = await store.feedback_samples()
    (lean,) = await store.feedback_samples(lean=True)
    assert (full.embedding, full.content) == ("minilm|AAAA", "the prompt")
    assert (lean.embedding, lean.content) == (None, None)
    assert (lean.task, lean.predicted, lean.deployment, lean.key_id) == ("t", 0.25, "cheap", "k1")
    (by_model,) = await store.feedback_samples(model="smart", lean=True)
    assert by_model.embedding is None and by_model.feedback_id == "fb_1"
