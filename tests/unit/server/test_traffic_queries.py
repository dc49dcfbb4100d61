"""The traffic admin module's pure parts: the overview's window and buckets, the request log's parameters
and cursor, the rebuilt headers, the request page's candidate rows, and the bounded flush before a read."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.schema.errors import GatewayError
from modelyard.server import admin_traffic
from modelyard.server.admin_traffic import (
    answer_headers,
    encode_cursor,
    fresh,
    overview_window,
    parse_cursor,
    parse_moment,
    request_filter,
)
from modelyard.server.ui.requests import candidates
from modelyard.state.store import RollupRow

NOW = 1_800_000_030.0


@pytest.mark.parametrize(
    ("name", "grain", "width", "buckets"),
    [("15m", "minute", 60, 15), ("1h", "minute", 60, 60), ("6h", "minute", 60, 360), ("24h", "hour", 3600, 24)],
)
def test_the_window_is_whole_buckets_ending_with_the_current_one(
    name: str, grain: str, width: int, buckets: int
) -> None:
    got_grain, got_width, since, until = overview_window(name, NOW)
    assert (got_grain, got_width) == (grain, width)
    assert since % width == 0 and until % width == 0 and since < NOW < until
    assert (until - since) / width == buckets


def test_the_series_has_every_bucket_with_zeros_where_there_was_no_traffic() -> None:
    _, width, since, until = overview_window("15m", NOW)
    rows = [RollupRow(bucket=since + 120, requests=6, errors=3, cost_usd=1.5, histogram=(0, 6))]
    series = admin_traffic._series(rows, since, until, width, NOW)
    assert len(series) == 15 and [b["t"] for b in series] == [since + 60 * i for i in range(15)]
    busy = series[2]
    assert busy["requests"] == 6 and busy["error_rate"] == 0.5 and busy["rps"] == pytest.approx(0.1)
    assert 50 <= busy["p50_ms"] <= 100
    assert all(
        b["requests"] == 0 and b["p50_ms"] is None and b["error_rate"] == 0 for i, b in enumerate(series) if i != 2
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - 86400),
        ("90m", NOW - 5400),
        ("1800000000", 1_800_000_000.0),
        ("1800000000.25", 1_800_000_000.25),
        ("2027-01-15", datetime(2027, 1, 15, tzinfo=UTC).timestamp()),
        ("2027-01-15T10:00:00+02:00", datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()),
        ("", None),
    ],
)
def test_moments(text: str, expected: float | None) -> None:
    assert parse_moment("since", text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1y", "-5", "nan", "inf", "1e9", "9" * 50, "2099-01-01", "24 h"])
def test_bad_moments_are_400(text: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_moment("since", text, NOW)
    assert caught.value.status == 400 and caught.value.param == "since"


def test_the_cursor_round_trips_exactly() -> None:
    record = SpendRecord(id="req_abc", at=1_800_000_000.123456789)
    at, request_id = parse_cursor(encode_cursor(record)) or (0.0, "")
    assert at == record.at and request_id == "req_abc"


@pytest.mark.parametrize("cursor", ["garbage", "nan:req_x", "inf:req_x", "-1:req_x", "1.5:", "x:req", "1:" + "r" * 200])
def test_bad_cursors_are_400(cursor: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_cursor(cursor)
    assert caught.value.param == "before"


def test_the_filter_carries_every_parameter() -> None:
    where, limit = request_filter(
        {
            "key": "key_1",
            "model": "m",
            "deployment": "d",
            "status": "error",
            "min_cost": "0.5",
            "min_latency_ms": "100",
            "since": "2h",
            "until": "1h",
            "guardrail": "block",
            "q": "req_ab",
            "before": "1800000000.5:req_z",
            "limit": "20",
        },
        NOW,
    )
    assert limit == 20
    assert (where.key_id, where.model, where.deployment, where.status) == ("key_1", "m", "d", "error")
    assert (where.min_cost_usd, where.min_latency_ms, where.guardrail, where.id_prefix) == (
        0.5,
        100.0,
        "block",
        "req_ab",
    )
    assert (where.since, where.until) == (NOW - 7200, NOW - 3600)
    assert (where.before_at, where.before_id) == (1_800_000_000.5, "req_z")
    default, limit = request_filter({}, NOW)
    assert limit == 50 and default.since is None and default.status is None


@pytest.mark.parametrize(
    "query",
    [{"limit": "201"}, {"limit": "-1"}, {"min_cost": "NaN"}, {"min_latency_ms": "1e10"}, {"model": "x\ny"}],
)
def test_bad_filters_are_400(query: dict[str, str]) -> None:
    with pytest.raises(GatewayError) as caught:
        request_filter(query, NOW)
    assert caught.value.status == 400 and caught.value.param in query


def test_headers_are_rebuilt_as_the_answer_had_them() -> None:
    record = SpendRecord(
        id="req_1", at=NOW, deployment="up", provider="openai", attempt_log="2; down overloaded 3ms, up ok 9ms",
        cost_usd=0.000123, latency_ms=12.345, guardrails="pii:input:redact fired 1",
    )  # fmt: skip
    assert answer_headers(record) == {
        "x-request-id": "req_1",
        "x-modelyard-model": "up",
        "x-modelyard-provider": "openai",
        "x-modelyard-attempts": "2; down overloaded 3ms, up ok 9ms",
        "x-modelyard-cost-usd": "0.00012300",
        "x-modelyard-latency-ms": "12.3",
        "x-modelyard-guardrails": "pii:input:redact fired 1",
    }
    failed = answer_headers(SpendRecord(id="req_2", at=NOW, status="error"))
    assert "x-modelyard-cost-usd" not in failed and "x-modelyard-model" not in failed


def test_candidates_say_chosen_kept_and_skipped_with_reasons_and_notes() -> None:
    route: dict[str, Any] = {
        "ranked": ["down", "up", "spare"],
        "skipped": [["far", "region eu not allowed"]],
        "notes": {"up": "score 0.91"},
    }
    attempts = [{"deployment": "down"}, {"deployment": "up"}, {"deployment": "other-model-dep"}]
    rows = {r["name"]: r for r in candidates(route, "up", attempts)}
    assert rows["up"]["decision"] == "chosen" and rows["up"]["note"] == "score 0.91" and rows["up"]["rank"] == 2
    assert rows["down"]["decision"] == "kept" and rows["down"]["reason"] == "tried, did not answer"
    assert rows["spare"]["reason"] == "in reserve"
    assert rows["far"]["decision"] == "skipped" and rows["far"]["reason"] == "region eu not allowed"
    assert rows["other-model-dep"]["reason"] == "fallback"
    assert [r["decision"] for r in candidates({}, None, [])] == []


class _Writer(SpendWriter):
    """The real writer's read gate over a flush that only counts."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace())
        self.flushes = 0

    async def flush(self, timeout_s: float | None = None) -> bool:
        assert timeout_s is not None and math.isfinite(timeout_s) and timeout_s <= 2.0
        self.flushes += 1
        await asyncio.sleep(0.01)
        return True


def test_reads_flush_the_writer_at_most_once_a_second() -> None:
    writer = _Writer()
    guard = SimpleNamespace(down=False, timeout_s=5.0)
    services: Any = SimpleNamespace(spend=writer, access=SimpleNamespace(store_guard=guard))

    async def views() -> None:
        await asyncio.gather(*(fresh(services) for _ in range(20)))  # a burst of views: one flush
        assert writer.flushes == 1
        await fresh(services)
        assert writer.flushes == 1
        writer._read_flushed_at -= admin_traffic.FLUSH_EVERY_S  # a second later
        await fresh(services)
        assert writer.flushes == 2
        guard.down = True  # the store is down: no flush to wait on
        writer._read_flushed_at -= admin_traffic.FLUSH_EVERY_S
        await fresh(services)
        assert writer.flushes == 2

    asyncio.run(views())
