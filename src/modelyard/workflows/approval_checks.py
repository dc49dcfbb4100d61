"""Validation of `approve:` steps (what the JSON Schema cannot say): `prompt` and `show` are templates that
may read only what the step `needs`, and `timeout` is a finite number of seconds (YAML's `.inf` is a number)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelyard.workflows.approval import finite_timeout

if TYPE_CHECKING:
    from modelyard.workflows.checks import _Checker, _Scope
    from modelyard.workflows.spec import StepSpec


def check_approval(checker: _Checker, step: StepSpec, scope: _Scope) -> None:
    """Add the approval step's problems to `checker` at their lines."""
    spec = step.approve
    assert spec is not None
    for field in ("prompt", "show"):
        text = getattr(spec, field)
        if isinstance(text, str):
            checker.check_template(step, (*step.path, "approve", field), text, scope)
    if spec.timeout is not None and not finite_timeout(spec.timeout):
        line = checker.spec.lines.line((*step.path, "approve", "timeout"))
        checker.add(line, f"approve.timeout must be a finite number of seconds above 0, not {spec.timeout!r}", step)
