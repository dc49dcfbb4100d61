"""Loading a `workflow: path.yaml` step's file: where it is, whether it closes a cycle, how deep it nests.

A sub-workflow is loaded when its including workflow is, with its own file's line numbers, so its own
problems are reported at its own `file:line`. The chain of including files travels down the recursion:
a file that appears in its own chain (A includes A, or A -> B -> A) is refused at the including step, with
the chain named; nesting is bounded by MAX_DEPTH so a long (acyclic) chain cannot exhaust the stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.workflows.issues import Issue

if TYPE_CHECKING:
    from modelyard.workflows.spec import StepSpec, WorkflowSpec

#: Sub-workflows nested deeper than this are refused (a chain this long is a mistake, not a design).
MAX_DEPTH = 8
#: An included file larger than this is refused unread (a workflow is a page of YAML, not a data file).
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Included:
    """Where an included file is: `name` for messages (relative as written), `resolved` for identity."""

    name: str
    resolved: Path


def identity(name: str) -> Path | None:
    """The resolved path of a workflow's own file; None for text that has no file (`<string>`)."""
    return None if name.startswith("<") else Path(name).resolve()


def locate(including: str, path: str) -> Included:
    """`path` relative to the including file's directory (the working directory for `<string>`)."""
    if including.startswith("<") or os.path.isabs(path):
        name = path
    else:
        name = os.path.normpath(os.path.join(os.path.dirname(including), path))
    return Included(name, Path(name).resolve())


def chain_problem(target: Included, chain: tuple[Path, ...]) -> str | None:
    """Why including `target` from the end of `chain` must be refused: a cycle, or nesting too deep."""
    if target.resolved in chain:
        start = chain.index(target.resolved)
        names = [p.name for p in chain[start:]] + [target.resolved.name]
        return "sub-workflow cycle: " + " -> ".join(names) + " (a workflow cannot include itself)"
    if len(chain) >= MAX_DEPTH:
        return f"sub-workflows nested deeper than {MAX_DEPTH} levels"
    return None


def read(target: Included) -> tuple[str | None, str | None]:
    """The included file's text, or why it cannot be read."""
    try:
        if (
            target.resolved.exists() and not target.resolved.is_file()
        ):  # a device or FIFO (`/dev/zero`) would be read forever
            return None, f"the sub-workflow {target.name} is not a regular file"
        with target.resolved.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            return None, f"the sub-workflow {target.name} is larger than {MAX_BYTES // 1024 // 1024} MiB"
        return data.decode("utf-8"), None
    except OSError as exc:
        return None, f"cannot read the sub-workflow {target.name}: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        return None, f"the sub-workflow {target.name} is not UTF-8 text: {exc.reason}"


def input_issues(spec: WorkflowSpec, step: StepSpec) -> list[Issue]:
    """Inputs the included workflow does not declare (at their line), and required ones not given."""
    assert step.workflow is not None
    child = step.workflow.spec
    issues: list[Issue] = []
    declared = ", ".join(child.inputs) or "none"
    for name in step.workflow.inputs:
        if name not in child.inputs:
            line = spec.lines.line((*step.path, "inputs", name))
            message = f"sub-workflow {step.workflow.path} has no input '{name}' (declared: {declared})"
            issues.append(Issue(spec.source, line, message, step.qualname))
    missing = [n for n, d in child.inputs.items() if d.required and n not in step.workflow.inputs]
    if missing:
        line = spec.lines.line((*step.path, "workflow"))
        names = ", ".join(f"'{n}'" for n in missing)
        issues.append(Issue(spec.source, line, f"sub-workflow {step.workflow.path} needs input {names}", step.qualname))
    return issues


def output_problem(step: StepSpec, attr: str) -> str | None:
    """`{{ review.x }}` where the included workflow declares outputs and `x` is none of them."""
    assert step.workflow is not None
    outputs: dict[str, Any] = step.workflow.spec.outputs or step.workflow.spec.steps
    if step.foreach is None and attr not in outputs:
        return f"sub-workflow '{step.id}' has no output '{attr}' (its outputs: {', '.join(outputs)})"
    return None
