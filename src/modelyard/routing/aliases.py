"""Model aliases: the names clients ask for by habit (`claude-sonnet-4-5`, `gpt-4o`) mapped to routes.

Coding agents ask for their own default model name; an alias (`claude-*: smart`) serves them without
configuring every name. Exact configured names (models, deployments) win over aliases, an exact alias wins
over a pattern, and among patterns the most specific one (the most literal characters) wins, ties going to
the one written first. Patterns use `*` (any run of characters) and `?` (one character) only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Resolved names remembered (client-chosen strings, so bounded); the memo is cleared when full.
MEMO_SIZE = 4096
#: Longer names are resolved but not remembered.
MEMO_NAME_CHARS = 256


def is_pattern(name: str) -> bool:
    return "*" in name or "?" in name


def _compile(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


def specificity(pattern: str) -> int:
    """How specific a pattern is: its literal characters."""
    return len(pattern) - pattern.count("*") - pattern.count("?")


class Aliases:
    """Alias name or pattern → target model (or deployment) name, resolved once per distinct name."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.exact = {name: target for name, target in mapping.items() if not is_pattern(name)}
        ordered = sorted(
            ((name, target) for name, target in mapping.items() if is_pattern(name)),
            key=lambda item: -specificity(item[0]),  # stable: ties keep the written order
        )
        self.patterns = [(_compile(name), target) for name, target in ordered]
        self._memo: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def resolve(self, name: str) -> str | None:
        """The target of `name`, or None when no alias applies."""
        target = self.exact.get(name)
        if target is not None or not self.patterns:
            return target
        memo = self._memo
        if name in memo:
            return memo[name]
        found = next((t for pattern, t in self.patterns if pattern.fullmatch(name)), None)
        if len(name) <= MEMO_NAME_CHARS:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[name] = found
        return found
