"""A model step's call, built in one place: what `run` sends is exactly what `plan` prices.

The engine renders the step's templates with the real data; the planner renders them with filler the size
of the data. Everything else (model, limits, output schema, routing hints, labels) comes from the step here,
so a step's `route:` override reaches the plan's estimate as surely as the run's request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from modelyard.workflows.backend import ModelCall
from modelyard.workflows.jsonout import response_format
from modelyard.workflows.spec import StepSpec

#: The labels that also travel to the gateway as tags (`workflow:<name>`, `run:<id>`, `step:<key>`).
_TAGGED = ("workflow", "run", "step")


def step_call(
    step: StepSpec, render: Callable[[str], str], *, workflow: str, key: str, run_id: str | None = None
) -> ModelCall:
    """The call of model step `step` (at `key`: `fan[2]`, `loop#1.draft`), its templates put through `render`."""
    messages: list[dict[str, Any]] = []
    if step.system:
        messages.append({"role": "system", "content": render(step.system)})
    messages.append({"role": "user", "content": render(step.prompt or "")})
    labels = {"workflow": workflow, "run": run_id, "step": key, "step_name": step.qualname}
    metadata = {name: value for name, value in labels.items() if value}
    tags = tuple(f"{name}:{metadata[name]}" for name in _TAGGED if name in metadata)
    schema = step.output_schema
    return ModelCall(
        model=step.model or "",
        messages=messages,
        max_tokens=step.max_tokens,
        temperature=step.temperature,
        response_format=response_format(step.id, schema) if schema is not None else None,
        timeout_s=step.timeout,
        route=msgspec.structs.replace(step.route, tags=tags),
        estimate_output_tokens=step.estimate.output_tokens or None,
        metadata=metadata,
    )
