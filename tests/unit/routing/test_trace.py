"""routing/trace.py: the route and the attempts a spend row keeps are bounded whatever the plan holds, readable
back, tolerant of rows they did not write; the executor fills each attempt's start and error on every path."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from modelyard.config.loader import parse_config
from modelyard.routing.attempts import ERROR_CHARS, AttemptRecord
from modelyard.routing.features import RequestFeatures
from modelyard.routing.plan import Plan
from modelyard.routing.router import Router
from modelyard.routing.trace import (
    MAX_ATTEMPTS,
    MAX_NOTES,
    MAX_RANKED,
    MAX_SKIPPED,
    NOTE_CHARS,
    REASON_CHARS,
    attempts_json,
    read_attempts,
    read_route,
    route_json,
)
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ErrorKind, ProviderError
from modelyard.server.observe import Outcome
from modelyard.server.services import spend_record
from tests.unit.routing.helpers import ctx, dep
from tests.unit.routing.test_executor import CONFIG, make, request


def big_plan(*, explain: bool, ranked: int = 40, skipped: int = 100) -> Plan:
    deps = [dep(f"d{i}") for i in range(max(ranked, skipped))]
    decision = ctx(deployments=deps, explain=explain)
    for d in deps[:skipped]:
        decision.skip(d, "over its limit: {}", "x" * 1000)
    for d in deps[:ranked]:
        decision.note(d, "score " + "y" * 1000)
    return Plan("m", "cost", deps[:ranked], decision)


def test_route_is_bounded_however_many_candidates_were_skipped_or_ranked():
    text = route_json(big_plan(explain=True))
    route = read_route(text)
    assert len(route["ranked"]) == MAX_RANKED == 32
    assert len(route["skipped"]) == MAX_SKIPPED == 32 and route["skipped_total"] == 100
    assert all(len(reason) == REASON_CHARS for _, reason in route["skipped"])
    assert route["skipped"][0][0] == "d0" and route["skipped"][0][1].startswith("over its limit: xxx")
    assert len(route["notes"]) == MAX_NOTES and all(len(n) == NOTE_CHARS for n in route["notes"].values())
    assert len(text) < 32 * (REASON_CHARS + 16) + 32 * (NOTE_CHARS + 16) + 32 * 16 + 1000
    assert isinstance(json.loads(text), list)  # positional: the compact stored form


def test_an_explained_plan_keeps_its_notes_and_a_plain_one_does_not():
    router = Router(parse_config(CONFIG), seed=1)
    features = RequestFeatures(prompt_tokens=10, max_output_tokens=20, task="code")
    explained = read_route(route_json(router.plan("m", features, explain=True)))
    plain = read_route(route_json(router.plan("m", features)))
    assert explained["explained"] is True and set(explained["notes"]) == {"a", "b", "c"}
    assert plain["explained"] is False and plain["notes"] == {}
    for route in (explained, plain):
        assert route["strategy"] == "priority" and route["ranked"] == ["a", "b", "c"]
        assert route["features"] == {
            "prompt_tokens": 10,
            "max_tokens": 20,
            "tools": False,
            "images": False,
            "json": False,
            "task": "code",
        }
    assert read_route(route_json(big_plan(explain=False)))["notes"] == {}
    # the usual request: trailing empty values left out (each byte of a row costs the store's insert)
    assert route_json(router.plan("m", RequestFeatures(prompt_tokens=10))) == '["priority",["a","b","c"],[10],"m"]'


def test_client_text_in_the_route_is_bounded_and_a_lone_surrogate_does_not_break_it():
    plan = big_plan(explain=False, ranked=1, skipped=0)
    plan.ctx.features.task = "\ud800" + "t" * 5000
    plan.fallbacks = tuple(f"f{i}" + "z" * 500 for i in range(50))
    route = read_route(route_json(plan))
    assert route["features"]["task"].startswith("\\ud800") and len(route["features"]["task"]) < 300
    assert len(route["fallbacks"]) == 32 and all(len(name) == 256 for name in route["fallbacks"])


def test_a_long_error_is_kept_to_300_characters_and_attempts_to_16():
    record = AttemptRecord("a", "openai", "pending", 12.0, started=100.0)
    record.fail(ProviderError(ErrorKind.SERVER, "boom " * 2000))  # 10 kB
    assert record.outcome == "server" and len(record.error) == ERROR_CHARS == 300
    ok = AttemptRecord("b", "openai", "ok", 30.0, status=200, cost_usd=0.5, started=100.25)
    attempts = read_attempts(attempts_json([record, ok], request_start=99.99))
    assert attempts == [
        {
            "deployment": "a",
            "provider": "openai",
            "outcome": "server",
            "start_ms": 10.0,
            "ms": 12.0,
            "status": None,
            "cost_usd": 0.0,
            "hedge": False,
            "error": ("boom " * 60),
        },
        {
            "deployment": "b",
            "provider": "openai",
            "outcome": "ok",
            "start_ms": 260.0,
            "ms": 30.0,
            "status": 200,
            "cost_usd": 0.5,
            "hedge": False,
            "error": "",
        },
    ]
    many = [AttemptRecord(f"d{i}", "openai", "server", 1.0, started=float(i)) for i in range(40)]
    assert len(read_attempts(attempts_json(many, 0.0))) == MAX_ATTEMPTS == 16
    assert read_attempts('[["a", "openai", "ok"]]')[0]["error"] == ""  # an older, shorter row


@pytest.mark.parametrize(
    "text", [None, "", "not json", "[1, 2]", '{"ranked": 5}', '{"features": []}', b"\xff\xfe", "null", '"x"']
)
def test_a_malformed_or_missing_route_reads_as_empty(text: Any):
    assert read_route(text) == {}


@pytest.mark.parametrize(
    "text", [None, "", "{", '{"a": 1}', '[{"start_ms": "soon"}]', "[1]", b"\xff", "null", '[{"error": 5}]']
)
def test_malformed_or_missing_attempts_read_as_empty(text: Any):
    assert read_attempts(text) == []


def test_a_route_missing_fields_reads_with_defaults():
    """Fields are only ever appended: a row written before some existed reads with their defaults."""
    assert read_route('["cost", [], [], "m"]') == {
        "model": "m",
        "strategy": "cost",
        "rule": None,
        "ranked": [],
        "skipped": [],
        "skipped_total": 0,
        "fallbacks": [],
        "sticky": None,
        "features": {
            "prompt_tokens": 0,
            "max_tokens": None,
            "tools": False,
            "images": False,
            "json": False,
            "task": None,
        },
        "explained": False,
        "notes": {},
        "explored": None,
    }


# --------------------------------------------------------------------------- the executor fills them


async def test_a_failover_records_each_attempts_start_on_the_executors_clock_and_its_error():
    router, _ = make({"a": [ErrorKind.SERVER]}, retries=0)
    before = router.executor.clock()
    result = await router.complete(*request())
    after = router.executor.clock()
    first, second = result.records
    assert (first.outcome, first.error) == ("server", "scripted server")
    assert (second.outcome, second.error) == ("ok", "")
    assert before <= first.started <= second.started <= after
    detail = read_attempts(attempts_json(result.records, before))
    assert 0 <= detail[0]["start_ms"] <= detail[1]["start_ms"] <= (after - before) * 1000 + 0.1


async def test_a_streams_attempts_and_a_cancelled_hedge_leg_have_their_start():
    router, _ = make({"a": [ErrorKind.OVERLOADED]}, retries=0)
    result = await router.stream(*request(stream=True))
    async for _ in result.batches():
        pass
    assert [(r.outcome, r.error) for r in result.records] == [("overloaded", "scripted overloaded"), ("ok", "")]
    assert 0 < result.records[0].started <= result.records[1].started
    router, _ = make({"a": [("sleep", 1.0)], "b": ["ok"]})
    hedged = await router.complete(*request("hedged"))
    loser = next(r for r in hedged.records if r.deployment == "a")
    winner = next(r for r in hedged.records if r.deployment == "b")
    assert (loser.outcome, loser.error, winner.hedge) == ("cancelled", "", True)
    assert loser.started < winner.started  # the hedge leg started after the delay


async def test_a_stream_cut_after_its_first_byte_keeps_the_error():
    router, _ = make({"a": ["cut"]})
    result = await router.stream(*request(stream=True))
    with pytest.raises(ProviderError):
        async for _ in result.batches():
            pass
    (record,) = result.records
    assert record.outcome != "ok" and record.error


# --------------------------------------------------------------------------- the spend row


def test_the_spend_row_gives_attempt_starts_relative_to_the_request_whatever_the_executors_clock():
    """The request's start is on time.perf_counter, the attempts' on the executor's clock: the row converts.
    Here the executor's clock runs 5000 s ahead of perf_counter."""
    plan = big_plan(explain=False, ranked=2, skipped=1)
    offset = 5000.0
    executor = SimpleNamespace(clock=lambda: time.perf_counter() + offset)
    router = SimpleNamespace(started=True, executor=executor)
    started = time.perf_counter() - 0.5  # the request began half a second ago
    context: Any = SimpleNamespace(
        request_id="req_1",
        key_id=None,
        key_name=None,
        requested_model="m",
        endpoint="/v1/chat/completions",
        content=None,
        plan=plan,
        started=started,
        gateway=SimpleNamespace(router=router),
    )
    records = [
        AttemptRecord("d0", "openai", "server", 100.0, status=503, error="down", started=started + offset + 0.1),
        AttemptRecord("d1", "openai", "ok", 200.0, status=200, started=started + offset + 0.2),
    ]
    row = spend_record(Outcome(context, "ok", "d1", "openai", records, Usage(), 0.0, 500.0, None))
    attempts = read_attempts(row.attempt_detail)
    assert [a["start_ms"] for a in attempts] == pytest.approx([100.0, 200.0], abs=5.0)
    assert attempts[0]["error"] == "down" and attempts[1]["outcome"] == "ok"
    assert read_route(row.route)["ranked"] == ["d0", "d1"]
    context.plan = None
    no_plan = spend_record(Outcome(context, "ok", "d1", "openai", [], Usage(), 0.0, 1.0, None))
    assert no_plan.route is None and no_plan.attempt_detail is None
    assert msgspec.json.decode(msgspec.json.encode(row))["route"] == row.route  # the spool's round trip


def test_an_explored_request_says_which_deployment_it_explored():
    router = Router(parse_config(CONFIG), seed=1)
    features = RequestFeatures(prompt_tokens=10)
    explored = read_route(route_json(router.plan("m", features, explored="c")))
    assert explored["explored"] == "c" and explored["notes"] == {}
    assert read_route(route_json(router.plan("m", features)))["explored"] is None
    # a row written before the field existed still reads
    assert read_route('["priority",["a"],[10],"m"]')["explored"] is None
