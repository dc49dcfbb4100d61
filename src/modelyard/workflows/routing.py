"""`next:` — a step choosing which of its declared successors run, from its own output.

The graph stays static and validated: the builder records each such step's `successors` (the steps that
`need` it, in the same scope), `checks.py` refuses `next` where there are none, and at run time a choice
naming anything else fails the choosing step. Successors not chosen are skipped exactly as `when: false`
skips a step (output null), so the existing rules for steps needing skipped steps apply unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.templates import TemplateEngine, TemplateError

#: A choice longer than this is not a step id list anyone meant; cut it in messages.
_SHOWN_CHARS = 80


class NextError(ModelyardError, ValueError):
    """The `next` template failed or named something that is not a declared successor."""


def choose_next(
    step_id: str,
    template: str,
    successors: Sequence[str],
    context: Mapping[str, Any],
    templates: TemplateEngine,
) -> tuple[str, ...]:
    """The successors `template` chose: a step id, a list of ids, or nothing (none, "", []) for none."""
    try:
        value = templates.evaluate(template, dict(context))
    except TemplateError as exc:
        raise NextError(f"next: template: {exc.message}") from None
    chosen = _as_names(value)
    if chosen is None:
        shown = repr(value)[:_SHOWN_CHARS]
        raise NextError(f"next: must give a step id or a list of step ids, got {shown}")
    unknown = [name for name in chosen if name not in successors]
    if unknown:
        listed = ", ".join(successors)
        shown = repr(unknown[0])[:_SHOWN_CHARS]
        raise NextError(f"next: chose {shown}, which is not a successor of '{step_id}' (its successors: {listed})")
    return tuple(dict.fromkeys(chosen))


def _as_names(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                return None
        else:
            return [text] if text else []
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value]
    return None


def not_chosen(step_id: str, needs: Sequence[str], chosen: Mapping[str, tuple[str, ...]]) -> str | None:
    """Why `step_id` is skipped: the first step it needs whose `next` did not choose it, else None."""
    for need in needs:
        picked = chosen.get(need)
        if picked is not None and step_id not in picked:
            names = ", ".join(picked) or "none"
            return f"skipped: '{need}' chose next: {names}"
    return None


def successors_of(step_id: str, needs_by_step: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The steps of one scope that need `step_id`, in declaration order."""
    return tuple(sid for sid, needs in needs_by_step.items() if step_id in needs)
