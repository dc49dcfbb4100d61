"""How record keys nest, in one place for the terminal report and the admin API.

`plan` (a top-level step), `search[3]` (a fan-out item), `build#2.code` (round 2 of a loop) and
`review/critique` (a step of the sub-workflow run by `review`) compose: `build#2.review[0]/critique`.
"""

from __future__ import annotations

from collections.abc import Iterable

#: After the key of an aggregate that has nested rows shown under it, per its record's kind.
NESTING = {"loop": "#", "workflow": "/"}


def top_key(key: str) -> str:
    """The top-level step a key belongs to."""
    for index, char in enumerate(key):
        if char in "[#./":
            return key[:index]
    return key


def parent_key(key: str) -> str | None:
    """The record a key belongs to: `fan` for `fan[3]`, `loop` for `loop#2.check`, `sub` for `sub/x`,
    None at the top level."""
    if key.endswith("]") and "[" in key:
        return key[: key.rindex("[")]
    cut = max(key.rfind("#"), key.rfind("/"))
    return key[:cut] if cut > 0 else None


def depth(key: str) -> int:
    """How deep a key nests: one per loop round or sub-workflow it is inside, one more for an item."""
    return key.count("#") + key.count("/") + (1 if key.endswith("]") else 0)


def nested_rows(keys: Iterable[str], key: str, kind: str) -> list[str]:
    """The keys shown under an aggregate `key` (a loop's rounds, a sub-workflow's steps), in record order;
    fan-out items stay folded into their step."""
    mark = NESTING.get(kind)
    if mark is None:
        return []
    prefix = key + mark
    return [k for k in keys if k.startswith(prefix) and "[" not in k[len(prefix) :]]
