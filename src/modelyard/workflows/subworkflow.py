"""Running a `workflow: path.yaml` step: the included graph in a nested frame of the same run.

The child's steps are ordinary steps of the run: their records are keyed under the including step's key
with `/` (`review/critique`, `review[2]/critique` in a fan-out, `build#2.review/critique` in a loop), so
they are checkpointed, reused on resume, counted against the run's budget and shown nested in reports
like a loop's rounds. What differs is what their templates see: the child's own inputs (the including
step's `inputs:` templates, rendered, then checked and defaulted like a run's) and its own `workflow`
name and directory. The step's output is the child's `outputs` (or, when it declares none, its
top-level steps' outputs by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelyard.workflows.inputs import resolve_inputs
from modelyard.workflows.records import DONE_OK, StepRecord, StepState
from modelyard.workflows.templates import TemplateEngine, TemplateError

if TYPE_CHECKING:
    from collections.abc import Callable

    from modelyard.workflows.spec import SubWorkflowSpec, WorkflowSpec

#: Between an including step's key and its child steps' names.
SEPARATOR = "/"


@dataclass(frozen=True)
class Scope:
    """What a nested workflow's templates see in place of the run's: its inputs, name and directory."""

    spec: WorkflowSpec
    inputs: dict[str, Any]
    workflow_vars: dict[str, Any]
    #: The child keys' prefix (`review/`): one per instance, so per-instance caches never mix.
    prefix: str


def nested_scope(sub: SubWorkflowSpec, key: str, evaluate: Callable[[Any], Any], run_id: str) -> Scope:
    """Render the step's `inputs:` in its own context and resolve them against the child's declaration.

    Raises TemplateError or InputError (a value of the wrong type, for instance) for the step to fail on.
    """
    given = {name: evaluate(template) for name, template in sub.inputs.items()}
    inputs = resolve_inputs(sub.spec, given)
    workflow_vars = {"name": sub.spec.name, "dir": str(sub.spec.base_dir), "run_id": run_id}
    return Scope(sub.spec, inputs, workflow_vars, key + SEPARATOR)


def conclude(
    aggregate: StepRecord, records: dict[str, StepRecord], scope: Scope, templates: TemplateEngine, stopping: bool
) -> None:
    """The including step's state, error and output from its child steps' records (by step id)."""
    bad = [r for r in records.values() if r.state not in DONE_OK]
    if any(r.state is StepState.WAITING for r in bad):  # a person decides a gate inside: not a failure
        aggregate.state = StepState.WAITING
        return
    if bad:
        quiet = all(r.state in (StepState.STOPPED, StepState.CANCELLED) for r in bad)
        aggregate.state = StepState.STOPPED if stopping and quiet else StepState.FAILED
        first = bad[0]
        aggregate.error = f"step '{first.key}' {first.state.value}: {first.error}"
        return
    outputs = {sid: r.output for sid, r in records.items()}
    if not scope.spec.outputs:
        aggregate.output, aggregate.state = outputs, StepState.SUCCEEDED
        return
    context = {"inputs": scope.inputs, "workflow": scope.workflow_vars, **outputs}
    try:
        aggregate.output = {name: templates.evaluate(t, context) for name, t in scope.spec.outputs.items()}
    except TemplateError as exc:
        aggregate.state, aggregate.error = StepState.FAILED, f"sub-workflow outputs: {exc.message}"
        return
    aggregate.state = StepState.SUCCEEDED
