"""From check specs to a GuardSet: compiled once per config entry (a set, a model's list, a key's list),
combined per request (operator's, key's and the request's own checks), never recompiled on the hot path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from modelyard.guardrails.checks import CompiledCheck, SpanCheck, compile_span, compile_text
from modelyard.schema.guardrails import REDACTABLE, REQUEST_ALLOWED, CheckSpec

#: What one request's own checks may carry (`trusted=False`), so that a client cannot make the gateway spend
#: seconds of CPU compiling them on the event loop (32 keyword lists of 1,000 words of 200 characters took
#: 18 s): the characters of all `keywords` words over all the request's checks, and one `json_schema`'s
#: size, JSON-encoded. Operator-configured checks are compiled once at start and have no such bound.
REQUEST_KEYWORD_CHARS = 20_000
REQUEST_SCHEMA_BYTES = 64 * 1024

#: Checks that need the whole answer: a stream buffers it before they run.
WHOLE_ANSWER: frozenset[str] = frozenset({"json_schema", "empty", "truncated", "max_length", "python"})

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class GuardSet:
    """The checks of one request, by stage, in the order they were configured."""

    input_checks: tuple[CompiledCheck, ...] = ()
    output_checks: tuple[CompiledCheck, ...] = ()
    #: The output checks that find spans (pii, secrets, regex, keywords), and a set of only those: told once
    #: here, since a set is compiled once per config entry or request combination, not per request.
    span_checks: tuple[SpanCheck, ...] = field(init=False, repr=False, compare=False)
    _spans_only: GuardSet | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spans = tuple(c for c in self.output_checks if isinstance(c, SpanCheck))
        object.__setattr__(self, "span_checks", spans)
        alone = not self.input_checks and len(spans) == len(self.output_checks)
        object.__setattr__(self, "_spans_only", None if alone else GuardSet((), spans))

    def __bool__(self) -> bool:
        return bool(self.input_checks or self.output_checks)

    @property
    def output_spans(self) -> GuardSet:
        """Only the output span checks, as a set: what runs on an answer's other texts (reasoning, refusals,
        tool arguments) and on streams."""
        return self._spans_only or self

    @property
    def has_output(self) -> bool:
        return bool(self.output_checks)

    @property
    def redacts_output(self) -> bool:
        return any(c.spec.action == "redact" for c in self.output_checks)

    @property
    def whole_answer(self) -> bool:
        """An output check needs the full answer (a stream must buffer it): json_schema, empty, truncated,
        max_length, python, and a regex whose matches are unbounded."""
        return any(
            c.spec.check in WHOLE_ANSWER or (isinstance(c, SpanCheck) and not c.incremental) for c in self.output_checks
        )

    @property
    def retries(self) -> bool:
        return any(c.spec.action == "retry" for c in self.output_checks)


EMPTY = GuardSet()


def compile_check(spec: CheckSpec) -> CompiledCheck:
    """One spec compiled; ValueError (a short message naming the check) when it cannot be."""
    try:
        return compile_span(spec) if spec.check in REDACTABLE else compile_text(spec)
    except ValueError as exc:
        raise ValueError(f"guardrail `{spec.label}`: {exc}") from None


def compile_checks(specs: Sequence[CheckSpec], *, trusted: bool = True) -> GuardSet:
    """Compile `specs`. `trusted=False` (a client's per-request checks): built-in checks with parameters only,
    never `python:` code or raw regexes (schema.guardrails.REQUEST_ALLOWED), else ValueError naming it."""
    if not trusted:
        _check_request_specs(specs)
    inputs: list[CompiledCheck] = []
    outputs: list[CompiledCheck] = []
    for spec in specs:
        (inputs if spec.stage == "input" else outputs).append(compile_check(spec))
    return GuardSet(_unique(inputs), _unique(outputs))


def _check_request_specs(specs: Sequence[CheckSpec]) -> None:
    """A client's checks, refused before anything is compiled: operator-only checks, and parameters over the
    request budgets (REQUEST_KEYWORD_CHARS, REQUEST_SCHEMA_BYTES). ValueError naming the check and the limit."""
    keyword_chars = 0
    for spec in specs:
        if spec.check not in REQUEST_ALLOWED:
            raise ValueError(
                f"guardrail `{spec.label}`: `{spec.check}` checks can only be configured by the operator, "
                f"not sent with a request (allowed: {', '.join(sorted(REQUEST_ALLOWED))})"
            )
        keyword_chars += sum(len(word) for word in spec.words)
        if keyword_chars > REQUEST_KEYWORD_CHARS:
            raise ValueError(
                f"guardrail `{spec.label}`: a request's keyword lists may hold at most {REQUEST_KEYWORD_CHARS} "
                "characters in all (configure longer lists as an operator guardrail set)"
            )
        if spec.json_schema is not None and len(_encode(spec.json_schema)) > REQUEST_SCHEMA_BYTES:
            raise ValueError(
                f"guardrail `{spec.label}`: a request's `json_schema` may be at most "
                f"{REQUEST_SCHEMA_BYTES // 1024} KiB of JSON (configure larger schemas as an operator guardrail)"
            )


def combine(*sets: GuardSet) -> GuardSet:
    """The union of `sets`, order kept, a check present in several (an equal spec) once."""
    present = [s for s in sets if s]
    if len(present) == 1:
        return present[0]
    if not present:
        return EMPTY
    return GuardSet(
        _unique(c for s in present for c in s.input_checks), _unique(c for s in present for c in s.output_checks)
    )


def _unique(checks: Iterable[CompiledCheck]) -> tuple[CompiledCheck, ...]:
    seen: dict[bytes, CompiledCheck] = {}
    for check in checks:
        seen.setdefault(check.key, check)
    return tuple(seen.values())
