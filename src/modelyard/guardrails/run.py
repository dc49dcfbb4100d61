"""Running a GuardSet on a request (input) or a whole answer (output): timing, actions, redaction, and
fail-closed handling. Nothing here raises: a check that fails becomes a Finding with `error`, which blocks
unless its spec says `on_error: allow`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from msgspec import structs

from modelyard.guardrails.checks import CheckContext, CompiledCheck, Fired, Span, SpanCheck, TextCheck
from modelyard.guardrails.compile import GuardSet
from modelyard.guardrails.findings import Finding
from modelyard.schema.chat import ChatRequest, Message, TextPart, ToolMessage

#: A message whose `name` starts with this carries retrieved text (RAG context): `injection` looks at it.
RETRIEVED_PREFIX = "retrieved"


@dataclass(slots=True)
class InputVerdict:
    findings: list[Finding] = field(default_factory=list)
    #: The first check that blocks the request (or failed, failing closed); nothing may go upstream.
    blocked: Finding | None = None
    #: A copy of the request with spans redacted, when an input check redacted; else None.
    request: ChatRequest | None = None


@dataclass(slots=True)
class OutputVerdict:
    findings: list[Finding] = field(default_factory=list)
    #: The first check that blocks the answer (or failed, failing closed).
    blocked: Finding | None = None
    #: The first `retry` check that fired: ask the next candidate (when none is left, treat it as blocked).
    retry: Finding | None = None
    #: The answer with spans redacted, when something was redacted; else None.
    text: str | None = None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def _finding(check: CompiledCheck, stage: str, elapsed: float) -> Finding:
    spec = check.spec
    return Finding(spec.label, spec.check, stage, spec.action, False, elapsed * 1000.0)


def failed(check: CompiledCheck, stage: str, exc: BaseException, elapsed: float) -> Finding:
    """The finding of a check that raised: fired (fail closed) unless `on_error: allow`."""
    finding = _finding(check, stage, elapsed)
    finding.error = _short(exc)
    finding.fired = check.spec.on_error != "allow"
    if finding.fired:
        finding.message = f"guardrail `{check.spec.label}` failed and fails closed"
    return finding


def scan(check: SpanCheck, text: str, stage: str, pos: int = 0) -> tuple[Finding, list[Span]]:
    """Run a span check; its finding and the spans it found (none when the check failed)."""
    start = time.perf_counter()
    try:
        spans = check.spans(text, pos)
    except Exception as exc:
        return failed(check, stage, exc, time.perf_counter() - start), []
    finding = _finding(check, stage, time.perf_counter() - start)
    if spans:
        finding.fired = True
        finding.spans = len(spans)
        finding.kinds = tuple(dict.fromkeys(s.kind for s in spans))
        finding.message = f"{', '.join(finding.kinds)} found in the {stage} (guardrail `{check.spec.label}`)"
    return finding, spans


def judge(check: TextCheck, text: str, ctx: CheckContext) -> Finding:
    """Run a text check."""
    start = time.perf_counter()
    try:
        verdict = check.judge(text, ctx)
    except Exception as exc:
        return failed(check, ctx.stage, exc, time.perf_counter() - start)
    finding = _finding(check, ctx.stage, time.perf_counter() - start)
    if verdict is not None:
        finding.fired = True
        if isinstance(verdict, Fired):
            finding.message, finding.kinds = verdict.message, verdict.kinds
        else:
            finding.message = verdict
    if finding.fired and not finding.message.endswith(")"):
        finding.message += f" (guardrail `{check.spec.label}`)"
    return finding


def redact(text: str, found: Iterable[tuple[SpanCheck, list[Span]]]) -> str:
    """`text` with the spans replaced by each check's replacement; where spans of different checks overlap,
    their union is replaced (by the replacement of the one that starts first): nothing of either is left."""
    spans: list[tuple[Span, str]] = [
        (span, check.spec.replacement.replace("{kind}", span.kind)) for check, spans in found for span in spans
    ]
    spans.sort(key=lambda item: item[0].start)
    parts: list[str] = []
    at = 0
    for span, replacement in spans:
        if span.start < at:  # overlaps the last replaced span: extend it
            at = max(at, span.end)
            continue
        parts += (text[at : span.start], replacement)
        at = span.end
    parts.append(text[at:])
    return "".join(parts)


def blocks(finding: Finding) -> bool:
    """Whether a fired finding stops the text: `block`, or a failed check failing closed."""
    return finding.fired and (finding.action == "block" or finding.error is not None)


# --------------------------------------------------------------------------- output


def check_output(
    guards: GuardSet,
    text: str,
    *,
    finish_reason: str | None,
    response_format: Any = None,
    tool_calls: list[Any] | None = None,
    skip_incremental: bool = False,
) -> OutputVerdict:
    """Run the output checks on a whole answer. `skip_incremental`: a StreamGuard already ran the span checks
    that stream (pass the buffered answer here for the whole-answer checks only)."""
    verdict = OutputVerdict()
    ctx = CheckContext("output", finish_reason, response_format, tool_calls)
    to_redact: list[tuple[SpanCheck, list[Span]]] = []
    for check in guards.output_checks:
        if isinstance(check, SpanCheck):
            if skip_incremental and check.incremental:
                continue
            finding, spans = scan(check, text, "output")
            if finding.fired and finding.error is None and check.spec.action == "redact":
                to_redact.append((check, spans))
        else:
            finding = judge(check, text, ctx)
        _decide_output(verdict, finding)
    if to_redact:
        verdict.text = redact(text, to_redact)
    return verdict


def _decide_output(verdict: OutputVerdict, finding: Finding) -> None:
    verdict.findings.append(finding)
    if blocks(finding):
        verdict.blocked = verdict.blocked or finding
    elif finding.fired and finding.action == "retry":
        verdict.retry = verdict.retry or finding


# --------------------------------------------------------------------------- input


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part.text for part in content if isinstance(part, TextPart)]


def _untrusted(message: Message) -> bool:
    if isinstance(message, ToolMessage):
        return True
    name = getattr(message, "name", None)
    return isinstance(name, str) and name.startswith(RETRIEVED_PREFIX)


@dataclass(slots=True)
class _InputRun:
    """Per-check accumulation over the segments of a request."""

    finding: Finding | None = None
    elapsed: float = 0.0


def check_input(guards: GuardSet, req: ChatRequest) -> InputVerdict:
    """Run the input checks on every message's text (string content or text parts; system, user, assistant,
    tool). `injection` looks only at tool results and messages named `retrieved…`."""
    verdict = InputVerdict()
    if not guards.input_checks:
        return verdict
    segments = [
        (i, j, text, _untrusted(m)) for i, m in enumerate(req.messages) for j, text in enumerate(_texts(m.content))
    ]
    replacements: dict[tuple[int, int], str] = {}
    for check in guards.input_checks:
        if isinstance(check, SpanCheck):
            finding = _scan_segments(check, segments, replacements)
        elif check.spec.check == "injection":
            finding = _judge_segments(check, [(t, u) for _, _, t, u in segments], req)
        else:
            whole = "\n\n".join(t for _, _, t, _ in segments)
            finding = judge(check, whole, CheckContext("input", request=req))
        verdict.findings.append(finding)
        if blocks(finding):
            verdict.blocked = verdict.blocked or finding
    if replacements:
        verdict.request = _rewritten(req, replacements)
    return verdict


def _scan_segments(
    check: SpanCheck, segments: list[tuple[int, int, str, bool]], replacements: dict[tuple[int, int], str]
) -> Finding:
    total: Finding | None = None
    for i, j, original, _ in segments:
        text = replacements.get((i, j), original)
        finding, spans = scan(check, text, "input")
        if finding.fired and finding.error is None and check.spec.action == "redact":
            replacements[(i, j)] = redact(text, [(check, spans)])
        if total is None:
            total = finding
        else:
            total.merge(finding)
        if finding.error is not None:
            break
    return total or _finding(check, "input", 0.0)


def _judge_segments(check: TextCheck, segments: list[tuple[str, bool]], req: ChatRequest) -> Finding:
    total: Finding | None = None
    for text, untrusted in segments:
        if not untrusted:
            continue
        finding = judge(check, text, CheckContext("input", request=req, untrusted=True))
        if total is None:
            total = finding
        else:
            total.merge(finding)
        if finding.fired:
            break
    return total or _finding(check, "input", 0.0)


def _rewritten(req: ChatRequest, replacements: dict[tuple[int, int], str]) -> ChatRequest:
    messages = list(req.messages)
    for i in sorted({i for i, _ in replacements}):
        message = messages[i]
        content = message.content
        if isinstance(content, str):
            messages[i] = structs.replace(message, content=replacements[(i, 0)])
            continue
        assert content is not None
        parts, j = [], 0
        for part in content:
            if isinstance(part, TextPart):
                part = TextPart(text=replacements.get((i, j), part.text))
                j += 1
            parts.append(part)
        messages[i] = structs.replace(message, content=parts)
    return structs.replace(req, messages=messages)
