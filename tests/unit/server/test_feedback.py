"""`POST /v1/feedback` in pieces: the strict body check, and the ownership lookup (the recent-requests index,
then the store, then a bounded wait) with the one 404 that must not tell an unknown id from another key's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelyard.accounting.spend import RecentRequests, SpendRecord
from modelyard.schema.errors import GatewayError
from modelyard.server.feedback import FeedbackRoute, Verdict, feedback_wait, parse_verdict
from modelyard.state.outage import StoreGuard
from modelyard.state.sqlite_store import SQLiteStore


def test_a_good_body_with_a_score_or_thumbs() -> None:
    assert parse_verdict(b'{"request_id": "req_1", "score": 0.25}') == Verdict("req_1", 0.25, None)
    assert parse_verdict(b'{"request_id": "req_1", "score": 1, "label": "fine"}') == Verdict("req_1", 1.0, "fine")
    assert parse_verdict(b'{"request_id": "req_1", "thumbs": "down"}').score == 0.0
    assert parse_verdict(b'{"request_id": "req_1", "thumbs": "up", "label": "caf\\u00e9 ok"}').score == 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"request_id": "req_1", "score": true}', "score"),
        (b'{"request_id": "req_1", "score": "1"}', "score"),
        (b'{"request_id": "req_1", "score": 1e999}', "score"),
        (b'{"request_id": "req_1", "score": -1e999}', "score"),
        (b'{"request_id": ' + b"[" * 100_000 + b"]" * 100_000 + b', "score": 1}', "request_id"),  # found by the fuzzer
        (b'{"label": ' + b"[" * 100_000 + b"]" * 100_000 + b', "request_id": "req_1", "score": 1}', "label"),
        (b'{"extra": ' + b"[" * 100_000 + b"]" * 100_000 + b', "request_id": "req_1", "score": 1}', "extra"),
        (b'{"request_id": "req_1", "score": NaN}', "body"),  # not JSON at all
        (b'{"request_id": "req_1", "score": 1.0000001}', "score"),
        (b'{"request_id": "req_1", "score": -0.5}', "score"),
        (b'{"request_id": "req_1", "score": 100000000000000000000000000000000000000}', "score"),
        (b'{"request_id": "req_1", "score": null}', "score"),
        (b'{"request_id": "req_1", "score": [0.5]}', "score"),
        (b'{"request_id": "req_1"}', "score"),
        (b'{"request_id": "req_1", "score": 0.5, "thumbs": "up"}', "score"),
        (b'{"request_id": "req_1", "thumbs": "UP"}', "thumbs"),
        (b'{"request_id": "req_1", "thumbs": 1}', "thumbs"),
        (b'{"score": 0.5}', "request_id"),
        (b'{"request_id": "", "score": 0.5}', "request_id"),
        (b'{"request_id": 7, "score": 0.5}', "request_id"),
        (b'{"request_id": "req_1\\u0000", "score": 0.5}', "request_id"),
        (b'{"request_id": "' + b"r" * 129 + b'", "score": 0.5}', "request_id"),
        (b'{"request_id": "req_1", "score": 0.5, "label": "' + b"x" * 201 + b'"}', "label"),
        (b'{"request_id": "req_1", "score": 0.5, "label": "a\\nb"}', "label"),
        (b'{"request_id": "req_1", "score": 0.5, "label": "\\u001b[31mred"}', "label"),
        (
            b'{"request_id": "req_1", "score": 0.5, "label": "\\ud800"}',
            "body",
        ),  # a lone surrogate: the decoder refuses it
        (b'{"request_id": "req_1", "score": 0.5, "label": 3}', "label"),
        (b'{"request_id": "req_1", "score": 0.5, "model": "x"}', "model"),
        (b"[1, 2]", "body"),
        (b"", "body"),
        (b"\xff\xfe", "body"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(body: bytes, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_verdict(body)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.to_body()["error"]["type"] == "invalid_request_error"


def test_the_wait_follows_the_spend_writers_flush_interval() -> None:
    assert feedback_wait(1.0) == 2.0 and feedback_wait(30.0) == 2.0
    assert feedback_wait(0.05) == 0.1 and feedback_wait(0.3) == pytest.approx(0.6)


# --------------------------------------------------------------------------- ownership


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    made = SQLiteStore(str(tmp_path / "db.sqlite"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()


def _gateway(store: SQLiteStore, recent: RecentRequests) -> Any:
    services = SimpleNamespace(store=store, spend=SimpleNamespace(recent=recent))
    return SimpleNamespace(services=services, access=SimpleNamespace(store_guard=StoreGuard(2.0), open=False))


WAIT = 0.4


async def _timed(route: FeedbackRoute, gw: Any, request_id: str, owner: str | None) -> tuple[bool, float]:
    start = time.monotonic()
    found = await route._owned(gw, request_id, owner)
    return found, time.monotonic() - start


async def test_the_index_answers_without_the_store_and_only_for_its_key(store: SQLiteStore) -> None:
    recent = RecentRequests()
    recent.add("req_a", "key_a")
    recent.add("req_open", None)
    gw = _gateway(store, recent)
    route = FeedbackRoute(wait_s=WAIT)
    assert await _timed(route, gw, "req_a", "key_a") == (True, pytest.approx(0.0, abs=0.1))
    assert (await _timed(route, gw, "req_a", None))[0] is True  # an admin (owner None) may rate any request
    found, seconds = await _timed(route, gw, "req_a", "key_b")
    assert found is False and seconds >= WAIT * 0.95  # another key's id: the same wait as an unknown one
    found, seconds = await _timed(route, gw, "req_nowhere", "key_b")
    assert found is False and seconds >= WAIT * 0.95
    assert (await _timed(route, gw, "req_open", "key_b"))[0] is False  # made in open mode: admins only
    assert route.waiting == 0


async def test_a_row_another_replica_flushes_during_the_wait_is_found(store: SQLiteStore) -> None:
    gw = _gateway(store, RecentRequests())
    route = FeedbackRoute(wait_s=2.0)

    async def flush_later() -> None:
        await asyncio.sleep(0.3)
        await store.write_spend([SpendRecord(id="req_late", at=time.time(), key_id="key_a")])

    writer = asyncio.create_task(flush_later())
    found, seconds = await _timed(route, gw, "req_late", "key_a")
    await writer
    assert found is True and 0.25 < seconds < 1.5
    # Stored and another key's: no quicker than unknown.
    found, seconds = await _timed(FeedbackRoute(wait_s=WAIT), gw, "req_late", "key_b")
    assert found is False and seconds >= WAIT * 0.95


async def test_past_the_cap_of_waiting_lookups_every_404_is_immediate(store: SQLiteStore) -> None:
    recent = RecentRequests()
    recent.add("req_a", "key_a")
    gw = _gateway(store, recent)
    route = FeedbackRoute(wait_s=WAIT, max_waiting=2)
    slow = [asyncio.create_task(route._owned(gw, f"req_missing_{i}", "key_b")) for i in range(2)]
    await asyncio.sleep(0.05)
    assert route.waiting == 2
    unknown = await _timed(route, gw, "req_missing", "key_b")
    mismatch = await _timed(route, gw, "req_a", "key_b")
    assert unknown[0] is False and mismatch[0] is False
    assert unknown[1] < WAIT / 2 and mismatch[1] < WAIT / 2
    assert await asyncio.gather(*slow) == [False, False]
    assert route.waiting == 0


@pytest.mark.parametrize("request_id", ["req_unknown", "req_theirs"])
async def test_a_store_outage_is_a_503_for_unknown_and_foreign_ids_alike(store: SQLiteStore, request_id: str) -> None:
    recent = RecentRequests()
    recent.add("req_theirs", "key_a")
    recent.add("req_mine", "key_b")
    gw = _gateway(store, recent)
    await store.close()  # every store call now fails
    route = FeedbackRoute(wait_s=WAIT)
    assert await route._owned(gw, "req_mine", "key_b") is True  # the index alone answers the owner
    with pytest.raises(GatewayError) as caught:
        await route._owned(gw, request_id, "key_b")
    assert caught.value.status == 503 and caught.value.headers.get("Retry-After")


def test_the_recent_index_is_bounded_and_forgets_the_oldest() -> None:
    recent = RecentRequests(max_entries=3)
    for i in range(5):
        recent.add(f"req_{i}", f"key_{i}")
    assert len(recent) == 3
    assert recent.lookup("req_0") == (False, None) and recent.lookup("req_4") == (True, "key_4")


def test_who_sends_feedback_master_and_admin_keys_are_admins_open_mode_is_anyone() -> None:
    from modelyard.server.access import MASTER_ID
    from modelyard.server.feedback import _sender

    def ctx(key_id: str | None, admin: bool = False) -> Any:
        key = None if key_id is None else SimpleNamespace(id=key_id, admin=admin)
        return SimpleNamespace(key=key)

    assert _sender(ctx("key_a"), open_mode=False) == ("key", "key_a")
    assert _sender(ctx(MASTER_ID), open_mode=False) == ("admin", MASTER_ID)
    assert _sender(ctx("key_ops", admin=True), open_mode=False) == ("admin", "key_ops")
    assert _sender(ctx(None), open_mode=True) == ("key", None)
