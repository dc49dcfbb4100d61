"""The compiled checks. Two kinds:

- span checks (pii, secrets, regex, keywords) find spans of text, so they can redact, and they run
  incrementally on streams (their match shapes bound what a stream holds back);
- text checks (json_schema, injection, empty, truncated, max_length, python) judge a whole text and return
  why they fired, or None.

Both are immutable after compilation, except the json_schema check's small bounded cache of validators for
schemas that arrive with requests.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import re2

from modelyard.config.imports import CallableImportError, import_callable
from modelyard.guardrails import injection
from modelyard.guardrails.recognisers import PII, SECRETS, Recogniser, recogniser, select, warm_up
from modelyard.schema.guardrails import CheckSpec
from modelyard.schema.patterns import SchemaValidator, compile_ascii, compile_pattern, make_validator


class Span(NamedTuple):
    start: int
    end: int
    kind: str


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a text check may look at besides the text (`python` checks receive it as their second argument)."""

    stage: str
    finish_reason: str | None = None
    #: The request's `response_format` (a schema.chat Struct or a plain dict), output stage only.
    response_format: Any = None
    #: The answer's tool calls (output) or None.
    tool_calls: list[Any] | None = None
    #: The canonical ChatRequest (input stage only).
    request: Any = None
    #: input stage: this text came from a tool result or a retrieved document.
    untrusted: bool = False


def spec_key(spec: CheckSpec) -> bytes:
    """Identity of a spec for de-duplication (two equal specs are one check)."""
    return msgspec.json.encode(spec, order="sorted")


@dataclass(frozen=True, slots=True, eq=False)
class SpanCheck:
    spec: CheckSpec
    key: bytes
    recognisers: tuple[Recogniser, ...]
    #: What a stream holds back, one per distinct character set of the recognisers' matches; None when a
    #: recogniser's matches are unbounded (the stream then holds everything).
    tails: tuple[Tail, ...] | None
    #: Every recogniser's pattern in one alternation: one RE2 scan tells a clean text from one that needs the
    #: per-kind scans (14 PII scans cost ~66 µs on a 500-token answer, this one ~5 µs). A prefilter only: a
    #: hit runs the full scans from where it starts (no pattern can match before the leftmost hit).
    any_match: re2._Regexp[str]
    any_match_ascii: re2._Regexp[bytes]

    @property
    def incremental(self) -> bool:
        """Whether a stream can check this piece by piece (every match bounded)."""
        return self.tails is not None

    def spans(self, text: str, pos: int = 0) -> list[Span]:
        """`_spans` on the text as a reader sees it: zero-width characters dropped, full-width forms and odd
        spaces read as ASCII (a card with a zero-width space inside, in full-width digits, an address with a
        full-width at sign would each slip past the
        patterns), the spans mapped back onto `text` (a dropped character inside a match is covered too)."""
        if text.isascii() or _FOLDABLE.search(text) is None:
            return self._spans(text, pos)
        folded = text.translate(_FOLD)
        if len(folded) == len(text):
            return self._spans(folded, pos)
        kept = [i for i, ch in enumerate(text) if ch not in _INVISIBLE]
        found = self._spans(folded, bisect_left(kept, pos))
        return [Span(kept[s.start], kept[s.end - 1] + 1, s.kind) for s in found]

    def _spans(self, text: str, pos: int = 0) -> list[Span]:
        """Validated matches starting at or after `pos`, as their union: where two kinds' matches overlap, one
        span covers both (the earlier kind in the table names it), so no part of either is left out, and a
        stream never releases the start of one match because a longer, still-pending match of another kind
        covered it.

        An ASCII text (most answers) is scanned as its bytes: offsets are the same, and google-re2 converts
        a str's character offsets to byte offsets on every call (O(n): ~6 µs a call on a 2 kB answer).
        At most `MAX_VALIDATIONS` candidates are validated per call; past that (a text crafted to be full of
        lookalikes) a candidate counts as found unvalidated, and past `MAX_SPANS` spans the rest of the text
        is one span: the safe side, in bounded time."""
        ascii_text = text.isascii()
        subject: Any = text.encode() if ascii_text else text
        first = (self.any_match_ascii if ascii_text else self.any_match).search(subject, pos)
        if first is None:
            return []
        pos = first.start()
        found: list[Span] = []
        covered = _Covered()
        budget = MAX_VALIDATIONS
        for rec in self.recognisers:
            pattern: Any = rec.ascii if ascii_text else rec.pattern
            mine: list[Span] = []
            for m in pattern.finditer(subject, pos):
                start, end = m.span()
                if covered.holds(start, end):
                    continue  # inside what an earlier kind found (validating it, e.g. a phone parse, is the cost)
                if rec.validate is not None and budget > 0:
                    budget -= 1
                    length = rec.validate(text[start:end])
                    if length == 0:
                        continue
                    end = start + length
                if end > start:
                    mine.append(Span(start, end, rec.kind))
                if len(mine) + len(found) >= MAX_SPANS:
                    # A text this full of matches is covered from here to its end (the safe side) and the
                    # scan stops: its cost stays bounded whatever the client sent.
                    mine.append(Span(start, len(text), rec.kind))
                    return union(found + mine)
            if mine:
                found += mine
                covered = _Covered(union(found))
        return union(found)

    def hold_from(self, text: str, pos: int) -> int:
        """The earliest index ≥ pos where a match could still start and be changed by text not yet seen: for
        each tail, the start of the text's trailing run of characters a match can contain, within the tail's
        window (the longest match)."""
        tails = self.tails
        if tails is None:
            return pos
        n = len(text)
        base = max(pos, n - tails[0].window)  # the widest window first
        window = text[base:]
        cut = n
        for tail in tails:
            start = max(base, n - tail.window)
            if tail.members is not None:
                run = base + len(window.rstrip(tail.members))
            else:
                match = tail.pattern.search(window, start - base)
                run = base + (match.start() if match is not None else len(window))
            cut = min(cut, max(start, run))
        return cut


#: Characters a reader does not see (dropped before scanning; a match across them is still a match).
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
#: Spaces that look like a space.
_SPACES = "\u00a0\u2007\u2009\u202f\u3000"
_FOLD: dict[int, int | None] = {
    **{ord(ch): None for ch in _INVISIBLE},
    **{ord(ch): 0x20 for ch in _SPACES},
    **{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)},  # full-width ASCII forms
}
#: Whether a text needs folding at all (a character class: linear, whatever the text).
_FOLDABLE = re.compile("[" + _INVISIBLE + _SPACES + "\uff01-\uff5e]")


def _widened(members: str | None) -> str | None:
    """A tail's characters plus what folds onto them (and the invisible ones), so a stream holds those too."""
    if members is None:
        return None
    extra = _INVISIBLE + (_SPACES if " " in members else "")
    extra += "".join(chr(ord(ch) + 0xFEE0) for ch in members if "!" <= ch <= "~")
    return members + extra


#: Spans per scan at most: past that, the rest of the text counts as one span.
MAX_SPANS = 10_000
#: Candidates validated per scan at most (a phone parse is ~10-25 µs): bounds the time a crafted text costs.
MAX_VALIDATIONS = 2000


def union(spans: list[Span]) -> list[Span]:
    """Overlapping spans merged (sorted by start; the first of a merged run names it): O(n log n)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):  # stable: at one start, the earlier kind stays first
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                merged[-1] = Span(last.start, span.end, last.kind)
        else:
            merged.append(span)
    return merged


class _Covered:
    """Disjoint sorted spans, asked whether they hold [start, end) entirely (a bisection)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: list[Span] | None = None) -> None:
        self._starts = [s.start for s in spans or ()]
        self._ends = [s.end for s in spans or ()]

    def holds(self, start: int, end: int) -> bool:
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end


@dataclass(frozen=True, slots=True)
class Tail:
    """The trailing run of text a pending match could still cover: its characters and its longest length."""

    window: int
    members: str | None
    pattern: re2._Regexp[str]


class Fired(NamedTuple):
    """A text check's verdict when it names kinds (injection families) besides its message."""

    message: str
    kinds: tuple[str, ...]


#: A text check's verdict: None (passed), or why it fired.
Verdict = str | Fired | None


@dataclass(frozen=True, slots=True, eq=False)
class TextCheck:
    spec: CheckSpec
    key: bytes
    judge: Callable[[str, CheckContext], Verdict]


CompiledCheck = SpanCheck | TextCheck


def _span_check(spec: CheckSpec, recognisers: tuple[Recogniser, ...]) -> SpanCheck:
    any_match = _alternation([r.pattern.pattern for r in recognisers])
    any_match_ascii = compile_ascii(any_match.pattern)
    return SpanCheck(spec, spec_key(spec), recognisers, _tails(recognisers), any_match, any_match_ascii)


def _tails(recognisers: tuple[Recogniser, ...]) -> tuple[Tail, ...] | None:
    """One tail per distinct character set (the widest window of those sharing it), widest first."""
    widest: dict[str, Tail] = {}
    for rec in recognisers:
        shape = rec.shape
        if shape.max_len is None:
            return None
        chars = shape.chars or "(?s)."
        window = shape.max_len + 1
        if chars not in widest or widest[chars].window < window:
            pattern = compile_pattern(shape.tail_pattern())
            widest[chars] = Tail(window, _widened(shape.members), pattern)
    return tuple(sorted(widest.values(), key=lambda t: -t.window))


def _alternation(patterns: list[str]) -> re2._Regexp[str]:
    return compile_pattern("|".join(f"(?:{p})" for p in patterns))


def keyword_pattern(words: list[str]) -> str:
    """One case-insensitive alternation of the words, each on word boundaries where it starts/ends in one."""
    parts = []
    for word in words:
        text = re2.escape(word)
        left = r"\b" if word[:1].isalnum() or word[:1] == "_" else ""
        right = r"\b" if word[-1:].isalnum() or word[-1:] == "_" else ""
        parts.append(f"{left}{text}{right}")
    return "(?i)(?:" + "|".join(parts) + ")"


def compile_span(spec: CheckSpec) -> SpanCheck:
    if spec.check == "pii":
        warm_up()
        return _span_check(spec, select(PII, spec.kinds, "pii"))
    if spec.check == "secrets":
        return _span_check(spec, select(SECRETS, spec.kinds, "secrets"))
    if spec.check == "regex":
        for pattern in spec.patterns:
            compile_pattern(pattern)
        return _span_check(spec, tuple(recogniser(spec.label, p) for p in spec.patterns))
    return _span_check(spec, (recogniser(spec.label, keyword_pattern(spec.words)),))


# --------------------------------------------------------------------------- text checks


def _empty(text: str, ctx: CheckContext) -> str | None:
    return None if text.strip() or ctx.tool_calls else "the answer is empty"


def _truncated(text: str, ctx: CheckContext) -> str | None:
    return (
        "the answer was cut off at the token limit (finish_reason: length)" if ctx.finish_reason == "length" else None
    )


def _max_length(limit: int) -> Callable[[str, CheckContext], str | None]:
    def judge(text: str, ctx: CheckContext) -> str | None:
        return f"the {ctx.stage} has {len(text)} characters, more than {limit}" if len(text) > limit else None

    return judge


def _python(function: str) -> Callable[[str, CheckContext], str | None]:
    try:
        fn = import_callable(function)
    except CallableImportError as exc:
        raise ValueError(f"cannot import `{function}`: {exc}") from None

    def judge(text: str, ctx: CheckContext) -> str | None:
        verdict = fn(text, ctx)
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return f"`{function}` rejected the {ctx.stage}"
        if isinstance(verdict, str):
            return verdict or f"`{function}` rejected the {ctx.stage}"
        raise TypeError(f"`{function}` returned {type(verdict).__name__}, not bool | str | None")

    return judge


@dataclass(slots=True)
class SchemaJudge:
    """json_schema: the spec's schema, else the one the request's response_format carries."""

    fixed: SchemaValidator | None
    cache: OrderedDict[bytes, SchemaValidator] = field(default_factory=OrderedDict)
    cache_size: int = 256

    def __call__(self, text: str, ctx: CheckContext) -> str | None:
        wanted, schema = _asked_for(ctx.response_format)
        validator = self.fixed
        if validator is None:
            if wanted is None:
                return None  # no JSON asked for and none required by the spec
            validator = self._validator(schema) if schema is not None else None
        try:
            value = msgspec.json.decode(text.strip())
        except msgspec.DecodeError:
            return "the answer is not valid JSON"
        if validator is None:
            return None if isinstance(value, dict) else "the answer is JSON but not an object"
        error = validator.first_error(value)
        if error is None:
            return None
        return f"the answer does not match the schema at {error.path or '(root)'}: {error.message[:200]}"

    def _validator(self, schema: dict[str, Any]) -> SchemaValidator:
        key = msgspec.json.encode(schema, order="sorted")
        found = self.cache.get(key)
        if found is None:
            found = make_validator(schema)
            self.cache[key] = found
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return found


def _asked_for(response_format: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(`json_object` | `json_schema` | None, the schema) from a response_format Struct or dict."""
    if response_format is None:
        return None, None
    if not isinstance(response_format, dict):
        response_format = msgspec.to_builtins(response_format)
    kind = response_format.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind != "json_schema":
        return None, None
    inner = response_format.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else response_format.get("schema")
    return "json_schema", schema if isinstance(schema, dict) else None


def _injection(text: str, ctx: CheckContext) -> Verdict:
    if not ctx.untrusted:
        return None
    found = tuple(injection.families_in(text))
    if not text.isascii():  # and as read: `Ig<zero-width>nore previous instructions` is the same phrase
        found = tuple(dict.fromkeys(found + tuple(injection.families_in(text.translate(_FOLD)))))
    if not found:
        return None
    return Fired(f"prompt-injection heuristics ({', '.join(found)}) in a tool result or retrieved text", found)


def compile_text(spec: CheckSpec) -> TextCheck:
    key = spec_key(spec)
    if spec.check == "empty":
        return TextCheck(spec, key, _empty)
    if spec.check == "truncated":
        return TextCheck(spec, key, _truncated)
    if spec.check == "max_length":
        return TextCheck(spec, key, _max_length(spec.max_chars or 0))
    if spec.check == "python":
        return TextCheck(spec, key, _python(spec.function or ""))
    if spec.check == "json_schema":
        return TextCheck(spec, key, SchemaJudge(make_validator(spec.json_schema) if spec.json_schema else None))
    return TextCheck(spec, key, _injection)
