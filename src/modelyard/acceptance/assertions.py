"""Each assertion kind as a small function of (the assertion, the answer, the case) → a verdict.

The cheap kinds are synchronous and pure. `similar` needs the MiniLM embedder and `judge` another model
call; both come from a `Grader` the runner supplies, so this module does no I/O of its own and every kind
is unit-tested without a network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from modelyard.acceptance.matchers import parse_json, regex_search, schema_errors
from modelyard.acceptance.outcome import Answer, CheckResult
from modelyard.acceptance.spec import Assertion, CaseSpec, JudgeCheck, SimilarCheck

JUDGE_PROMPT = """You grade an answer against a rubric. Reply with PASS or FAIL on the first line, then one \
short sentence of reason.

Rubric: {rubric}

Question:
{question}

Answer:
{answer}
"""


class Grader(Protocol):
    """What the two expensive kinds need from the run: an embedder and a second model."""

    async def similarity(self, a: str, b: str) -> float: ...

    async def judge(self, model: str | None, prompt: str) -> Answer: ...


Sync = Callable[[Assertion, Answer, CaseSpec], CheckResult]


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _fold(text: str, check: Assertion) -> str:
    return text if check.case_sensitive else text.casefold()


def check_contains(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.contains is not None
    text = _fold(answer.text, check)
    missing = [s for s in _texts(check.contains) if _fold(s, check) not in text]
    return CheckResult("contains", not missing, f"missing {missing!r}" if missing else "")


def check_not_contains(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.not_contains is not None
    text = _fold(answer.text, check)
    found = [s for s in _texts(check.not_contains) if _fold(s, check) in text]
    return CheckResult("not_contains", not found, f"found {found!r}" if found else "")


def check_regex(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.regex is not None
    ok = regex_search(check.regex, answer.text)
    return CheckResult("regex", ok, "" if ok else f"no match for /{check.regex}/")


def check_equals(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    """Equal after trimming surrounding whitespace (and case, unless case_sensitive)."""
    assert check.equals is not None
    got, want = _fold(answer.text.strip(), check), _fold(check.equals.strip(), check)
    return CheckResult("equals", got == want, "" if got == want else f"got {_short(answer.text)!r}")


def check_is_json(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    _, problem = parse_json(answer.text)
    want = bool(check.is_json)
    ok = (problem is None) == want
    return CheckResult("is_json", ok, "" if ok else (problem or "is JSON, expected not to be"))


def check_json_schema(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.json_schema is not None
    value, problem = parse_json(answer.text)
    if problem is None:
        problem = schema_errors(check.json_schema, value)
    return CheckResult("json_schema", problem is None, problem or "")


def check_max_tokens(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.max_tokens is not None
    ok = answer.completion_tokens <= check.max_tokens
    return CheckResult("max_tokens", ok, f"{answer.completion_tokens} output tokens (max {check.max_tokens})")


def check_max_latency(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    """On a cached answer, the latency measured when it was first fetched."""
    assert check.max_latency_ms is not None
    ok = answer.latency_ms <= check.max_latency_ms
    return CheckResult("max_latency_ms", ok, f"{answer.latency_ms:.0f} ms (max {check.max_latency_ms:g})")


def check_max_cost(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    """The answer's own price (on a cached answer, what it cost the first time)."""
    assert check.max_cost_usd is not None
    cost = answer.first_cost_usd if answer.cached else answer.cost_usd
    ok = cost <= check.max_cost_usd
    return CheckResult("max_cost_usd", ok, f"${cost:.6f} (max ${check.max_cost_usd:g})")


def check_tool_call(check: Assertion, answer: Answer, case: CaseSpec) -> CheckResult:
    assert check.tool_call is not None
    want = check.tool_call
    calls = [call for call in answer.tool_calls if call.name == want.name]
    if not calls:
        names = [call.name for call in answer.tool_calls]
        return CheckResult("tool_call", False, f"no call of {want.name!r} (calls: {names or 'none'})")
    if want.arguments is None:
        return CheckResult("tool_call", True)
    problem = ""
    for call in calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            problem = f"arguments are not JSON: {exc.msg}"
            continue
        error = schema_errors(want.arguments, arguments)
        if error is None:
            return CheckResult("tool_call", True)
        problem = f"arguments: {error}"
    return CheckResult("tool_call", False, problem)


def check_python(
    check: Assertion, answer: Answer, case: CaseSpec, fn: Callable[..., Any], context: dict[str, Any]
) -> CheckResult:
    """`fn(text, context)` returns True (pass), False (fail) or a string (fail, with that reason).

    A function that raises fails the case with the exception's type and message (never a traceback)."""
    try:
        verdict = fn(answer.text, context)
    except Exception as exc:  # a user check failing is a failed case, reported
        return CheckResult("python", False, f"{check.python} raised {type(exc).__name__}: {exc}")
    if isinstance(verdict, bool):
        return CheckResult("python", verdict, "" if verdict else f"{check.python} returned False")
    if isinstance(verdict, str):
        return CheckResult("python", False, verdict)
    return CheckResult("python", False, f"{check.python} returned {type(verdict).__name__}, expected bool or str")


SYNC: dict[str, Sync] = {
    "contains": check_contains,
    "not_contains": check_not_contains,
    "regex": check_regex,
    "equals": check_equals,
    "is_json": check_is_json,
    "json_schema": check_json_schema,
    "max_tokens": check_max_tokens,
    "max_latency_ms": check_max_latency,
    "max_cost_usd": check_max_cost,
    "tool_call": check_tool_call,
}


async def check_similar(check: Assertion, answer: Answer, case: CaseSpec, grader: Grader) -> CheckResult:
    spec = check.similar
    threshold = spec.threshold if isinstance(spec, SimilarCheck) else float(spec or 0.0)
    target = (spec.to if isinstance(spec, SimilarCheck) else None) or case.reference or ""
    score = await grader.similarity(answer.text, target)
    return CheckResult("similar", score >= threshold, f"cosine {score:.3f} (min {threshold:g})")


async def check_judge(check: Assertion, answer: Answer, case: CaseSpec, grader: Grader) -> CheckResult:
    spec = check.judge
    rubric = spec.rubric if isinstance(spec, JudgeCheck) else str(spec)
    model = spec.model if isinstance(spec, JudgeCheck) else None
    prompt = JUDGE_PROMPT.format(rubric=rubric, question=question_of(case), answer=answer.text)
    graded = await grader.judge(model, prompt)
    verdict = judge_verdict(graded.text)
    detail = f"judge {graded.deployment}: {_short(graded.text)}"
    return CheckResult("judge", verdict, detail, cost_usd=graded.cost_usd)


def judge_verdict(text: str) -> bool:
    """PASS on the first non-empty line (FAIL, or anything else, fails)."""
    for line in text.strip().splitlines():
        words = line.split()
        if words:
            return words[0].strip("*#`_.:,!").upper() == "PASS"
    return False


def question_of(case: CaseSpec) -> str:
    """The case's prompt, or the text of its last user message."""
    if case.prompt is not None:
        return case.prompt
    for message in reversed(case.messages or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))
    return ""


async def evaluate(
    check: Assertion,
    answer: Answer,
    case: CaseSpec,
    grader: Grader,
    functions: dict[str, Callable[..., Any]],
    context: dict[str, Any],
) -> CheckResult:
    """One assertion's verdict on one answer."""
    kind = check.kind
    sync = SYNC.get(kind)
    if sync is not None:
        return sync(check, answer, case)
    if kind == "similar":
        return await check_similar(check, answer, case, grader)
    if kind == "judge":
        return await check_judge(check, answer, case, grader)
    if kind == "python" and check.python is not None:
        return check_python(check, answer, case, functions[check.python], context)
    return CheckResult(kind, False, f"unknown assertion {kind!r}")


def _short(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
