"""Every assertion kind passes on an answer that satisfies it and fails, with a reason, on one that does not."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from modelyard.acceptance.assertions import evaluate, judge_verdict, question_of
from modelyard.acceptance.outcome import Answer, ToolCallOut
from modelyard.acceptance.spec import Assertion, CaseSpec

CASE = CaseSpec(id="c", prompt="Classify: I want a refund", reference="refund")


def answer(text: str = "", **fields: Any) -> Answer:
    return Answer(text=text, deployment="d", latency_ms=fields.pop("latency_ms", 10.0), cost_usd=0.001, **fields)


class FakeGrader:
    """Similarity by word overlap; the judge answers whatever it was told to and costs $0.01."""

    def __init__(self, verdict: str = "PASS") -> None:
        self.verdict = verdict
        self.prompts: list[tuple[str | None, str]] = []

    async def similarity(self, a: str, b: str) -> float:
        wa, wb = set(a.split()), set(b.split())
        return len(wa & wb) / max(1, len(wa | wb))

    async def judge(self, model: str | None, prompt: str) -> Answer:
        self.prompts.append((model, prompt))
        return Answer(text=self.verdict, deployment="judge@x", latency_ms=1.0, cost_usd=0.01)


def check(**spec: Any) -> Assertion:
    return msgspec.convert(spec, Assertion)


async def verdict(spec: dict[str, Any], got: Answer, grader: FakeGrader | None = None, **kw: Any) -> Any:
    return await evaluate(check(**spec), got, kw.get("case", CASE), grader or FakeGrader(), kw.get("fns", {}), {})


TOOL = ToolCallOut("get_weather", '{"city": "Oslo"}')
SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}

# (assertion, an answer that passes, an answer that fails)
CASES: list[tuple[dict[str, Any], Answer, Answer]] = [
    ({"contains": "refund"}, answer("a refund please"), answer("shipping")),
    ({"contains": ["a", "b"]}, answer("a b"), answer("a c")),
    ({"contains": "REFUND", "case_sensitive": False}, answer("refund"), answer("shipping")),
    ({"not_contains": "sorry"}, answer("done"), answer("sorry, no")),
    ({"not_contains": ["x", "y"]}, answer("abc"), answer("aby")),
    ({"regex": r"^\d{3}-\d{4}$"}, answer("555-1234"), answer("555-12345")),
    ({"equals": "refund"}, answer("  refund\n"), answer("refunds")),
    ({"equals": "Refund", "case_sensitive": False}, answer("REFUND"), answer("shipping")),
    ({"is_json": True}, answer('{"a": 1}'), answer("{a: 1}")),
    ({"is_json": True}, answer('```json\n{"a": 1}\n```'), answer("nope")),
    ({"is_json": False}, answer("plain"), answer("[1, 2]")),
    ({"json_schema": SCHEMA}, answer('{"city": "Oslo"}'), answer('{"town": "Oslo"}')),
    ({"json_schema": SCHEMA}, answer('{"city": "Oslo"}'), answer("not json")),
    ({"max_tokens": 5}, answer("x", completion_tokens=5), answer("x", completion_tokens=6)),
    ({"max_latency_ms": 100}, answer("x", latency_ms=99.0), answer("x", latency_ms=101.0)),
    ({"max_cost_usd": 0.001}, answer("x"), Answer("x", "d", 1.0, 0.002)),
    ({"tool_call": {"name": "get_weather"}}, answer("", tool_calls=[TOOL]), answer("Oslo is sunny")),
    (
        {"tool_call": {"name": "get_weather", "arguments": SCHEMA}},
        answer("", tool_calls=[TOOL]),
        answer("", tool_calls=[ToolCallOut("get_weather", '{"town": "Oslo"}')]),
    ),
    (
        {"tool_call": {"name": "get_weather", "arguments": SCHEMA}},
        answer("", tool_calls=[TOOL]),
        answer("", tool_calls=[ToolCallOut("get_weather", "{broken")]),
    ),
    ({"similar": 0.5}, answer("refund"), answer("shipping delay")),
    ({"similar": {"threshold": 0.5, "to": "late parcel"}}, answer("late parcel"), answer("refund")),
]


@pytest.mark.parametrize(("spec", "good", "bad"), CASES, ids=[next(iter(c[0])) for c in CASES])
async def test_passes_and_fails(spec: dict[str, Any], good: Answer, bad: Answer) -> None:
    ok = await verdict(spec, good)
    assert ok.passed, ok.detail
    failed = await verdict(spec, bad)
    assert not failed.passed
    assert failed.kind == check(**spec).kind
    if failed.kind not in ("max_tokens", "max_latency_ms", "max_cost_usd", "similar"):
        assert failed.detail  # says why


async def test_a_cached_answer_is_judged_on_what_it_first_cost() -> None:
    cached = Answer.from_cache({**answer("x").to_cache(), "cost_usd": 0.5})
    assert cached.cost_usd == 0.0 and cached.cached
    result = await verdict({"max_cost_usd": 0.1}, cached)
    assert not result.passed


async def test_regex_is_linear_time_on_a_catastrophic_pattern() -> None:
    started = time.perf_counter()
    result = await verdict({"regex": "(a+)+$"}, answer("a" * 50_000 + "!"))
    assert time.perf_counter() - started < 0.5
    assert not result.passed  # no run of a's ends the text, and finding that out took linear time


async def test_judge_asks_the_grader_with_the_rubric_and_counts_its_cost() -> None:
    grader = FakeGrader("PASS\nit names the category")
    result = await verdict({"judge": {"rubric": "names one category", "model": "m"}}, answer("refund"), grader)
    assert result.passed
    assert result.cost_usd == 0.01
    model, prompt = grader.prompts[0]
    assert model == "m"
    assert "names one category" in prompt and str(CASE.prompt) in prompt and "refund" in prompt
    failed = await verdict({"judge": "be polite"}, answer("refund"), FakeGrader("FAIL: rude"))
    assert not failed.passed and failed.cost_usd == 0.01


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("PASS", True),
        ("**PASS** good", True),
        ("pass.", True),
        ("\n\nPASS", True),
        ("FAIL", False),
        ("", False),
        ("It might PASS", False),
        ("PASSABLE", False),
    ],
)
def test_judge_verdict_reads_the_first_word(text: str, passed: bool) -> None:
    assert judge_verdict(text) is passed


def _py_true(text: str, context: dict[str, Any]) -> bool:
    return text == "yes"


def _py_reason(text: str, context: dict[str, Any]) -> bool | str:
    return True if text == "yes" else f"wanted yes for {context.get('case')}"


def _py_raises(text: str, context: dict[str, Any]) -> bool:
    raise RuntimeError("boom")


def _py_none(text: str, context: dict[str, Any]) -> None:
    return None


async def test_python_checks_true_false_reason_raise_and_bad_return() -> None:
    fns = {"m:t": _py_true, "m:r": _py_reason, "m:x": _py_raises, "m:n": _py_none}
    assert (await verdict({"python": "m:t"}, answer("yes"), fns=fns)).passed
    assert not (await verdict({"python": "m:t"}, answer("no"), fns=fns)).passed
    reason = await evaluate(check(python="m:r"), answer("no"), CASE, FakeGrader(), fns, {"case": "c7"})
    assert not reason.passed and reason.detail == "wanted yes for c7"
    raised = await verdict({"python": "m:x"}, answer("yes"), fns=fns)
    assert not raised.passed and "RuntimeError: boom" in raised.detail and "Traceback" not in raised.detail
    none = await verdict({"python": "m:n"}, answer("yes"), fns=fns)
    assert not none.passed and "NoneType" in none.detail


def test_question_of_a_message_case_is_its_last_user_text() -> None:
    case = CaseSpec(
        id="m",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    )
    assert question_of(case) == "second"
