"""The shape of a pattern's matches, read from its syntax: the longest match and the characters a match can
contain. Streams use it to hold back only the tail of the text that a pending match could still cover.

RE2 has no API for this, so the pattern is parsed with Python's own regex parser (RE2's syntax is, for what
matters here, a subset of it). The answer is conservative: a pattern Python cannot parse, or one with
unbounded repetition (`*`, `+`, `{n,}`), has no bound, and a stream then buffers that check's whole text.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

# Python 3.11+ keeps its regex parser under `re` (untyped: read through Any).
_sre: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

# RE2's \d \w \s are ASCII-only, so these ranges are exact for RE2.
_CATEGORY: dict[Any, list[tuple[int, int]]] = {
    _c.CATEGORY_DIGIT: [(0x30, 0x39)],
    _c.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    _c.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20)],
}
# Case-insensitive RE2 also folds these onto ASCII letters (long s U+017F, Kelvin sign U+212A).
_FOLDS = [(0x41, 0x5A), (0x61, 0x7A), (0x17F, 0x17F), (0x212A, 0x212A)]


class _Any(Exception):
    """A part of the pattern can match any character."""


@dataclass(frozen=True, slots=True)
class Shape:
    """`max_len`: the longest match (None: unbounded). `chars`: an RE2 character class that every character
    of every match belongs to (None: any character)."""

    max_len: int | None
    chars: str | None
    #: The characters of `chars` spelled out when there are few (`str.rstrip` finds a trailing run of them
    #: in C, ~20x faster than an RE2 call from Python), else None.
    members: str | None = None

    def tail_pattern(self) -> str:
        """An RE2 pattern whose leftmost match is the trailing run of characters a match could contain."""
        return f"{self.chars}*$" if self.chars is not None else "(?s).*$"


UNBOUNDED = Shape(None, None)


def shape_of(pattern: str) -> Shape:
    """The shape of `pattern`'s matches; UNBOUNDED when it cannot be told."""
    try:
        parsed = _sre.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return UNBOUNDED
    hi = parsed.getwidth()[1]
    if hi >= _c.MAXREPEAT - 1:
        return UNBOUNDED
    ranges: list[tuple[int, int]] = []
    try:
        _collect(list(parsed), ranges)
    except _Any:
        return Shape(hi, None)
    if parsed.state.flags & re.IGNORECASE or "(?i" in pattern:
        letters = any(lo <= 0x7A and hi_ >= 0x41 for lo, hi_ in ranges)
        if letters:
            ranges.extend(_FOLDS)
    return Shape(hi, _char_class(ranges), _members(ranges))


def _collect(items: list[tuple[Any, Any]], out: list[tuple[int, int]]) -> None:
    for op, av in items:
        if op is _c.LITERAL:
            out.append((av, av))
        elif op is _c.IN:
            _collect_in(av, out)
        elif op is _c.SUBPATTERN:
            _collect(list(av[-1]), out)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            _collect(list(av[2]), out)
        elif op is _c.BRANCH:
            for branch in av[1]:
                _collect(list(branch), out)
        elif op is _c.AT:
            continue  # assertions (\b, ^, $) match no character
        else:  # ANY, NOT_LITERAL, group references, lookarounds: anything goes
            raise _Any


def _collect_in(items: list[tuple[Any, Any]], out: list[tuple[int, int]]) -> None:
    for op, av in items:
        if op is _c.LITERAL:
            out.append((av, av))
        elif op is _c.RANGE:
            out.append((av[0], av[1]))
        elif op is _c.CATEGORY and av in _CATEGORY:
            out.extend(_CATEGORY[av])
        else:  # NEGATE, negated categories
            raise _Any


#: The most characters `Shape.members` spells out.
MAX_MEMBERS = 512


def _members(ranges: list[tuple[int, int]]) -> str | None:
    if sum(hi - lo + 1 for lo, hi in ranges) > MAX_MEMBERS * 4:
        return None  # don't even build it
    chars = sorted({chr(c) for lo, hi in ranges for c in range(lo, hi + 1)})
    return "".join(chars) if len(chars) <= MAX_MEMBERS else None


def _char_class(ranges: list[tuple[int, int]]) -> str:
    if not ranges:
        return "[^\\x{0}-\\x{10FFFF}]"  # matches nothing: the pattern matches only the empty string
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    parts = [f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in merged]
    return "[" + "".join(parts) + "]"
