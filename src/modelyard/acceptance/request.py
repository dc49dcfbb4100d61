"""The chat request of one case run (shared by the runner, and by the loader to validate it early)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.acceptance.spec import CaseSpec


def case_body(case: CaseSpec, task: str, model: str, repeat: int) -> dict[str, Any]:
    """The chat request of one case run; `seed` is the repeat index so a simulator draws independently."""
    messages: list[dict[str, Any]] = []
    if case.system is not None:
        messages.append({"role": "system", "content": case.system})
    if case.messages is not None:
        messages.extend(case.messages)
    else:
        messages.append({"role": "user", "content": case.prompt or ""})
    body: dict[str, Any] = {"model": model, "messages": messages, "seed": repeat, "modelyard": {"task": task}}
    for key in ("tools", "tool_choice", "response_format", "max_tokens", "temperature"):
        value = getattr(case, key)
        if value is not None:
            body[key] = value
    return body
