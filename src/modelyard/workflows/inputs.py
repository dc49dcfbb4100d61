"""Checking a run's inputs against the workflow's declared inputs, and reading them from the CLI."""

from __future__ import annotations

import json
import math
from typing import Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.spec import InputSpec, WorkflowSpec

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class InputError(ModelyardError, ValueError):
    """Inputs that do not fit the workflow: every problem, one per line."""


def resolve_inputs(spec: WorkflowSpec, given: dict[str, Any] | None) -> dict[str, Any]:
    """Declared inputs with defaults filled in; raises InputError for missing, unknown or mistyped ones."""
    given = dict(given or {})
    declared_names = ", ".join(spec.inputs) or "none"
    unknown = [name for name in given if name not in spec.inputs]
    problems = [f"unknown input '{name}' (declared: {declared_names})" for name in unknown]
    resolved: dict[str, Any] = {}
    for name, declared in spec.inputs.items():
        if name in given:
            problem = _type_problem(declared, given[name])
            if problem:
                problems.append(problem)
            resolved[name] = given[name]
        elif declared.required:
            about = f": {declared.description}" if declared.description else ""
            problems.append(f"missing input '{name}' ({declared.type}{about})")
        else:
            resolved[name] = declared.default
    if problems:
        raise InputError("\n".join(problems))
    return resolved


def _type_problem(declared: InputSpec, value: Any) -> str | None:
    expected = _PYTHON_TYPES.get(declared.type, (object,))
    wrong_bool = isinstance(value, bool) and declared.type in ("number", "integer")
    if not isinstance(value, expected) or wrong_bool:
        return f"input '{declared.name}' should be {declared.type}, got {type(value).__name__} {value!r}"
    if _non_finite(value):
        return f"input '{declared.name}' holds a number out of range (NaN or infinite)"
    if declared.enum is not None and value not in declared.enum:
        return f"input '{declared.name}' must be one of {list(declared.enum)}, got {value!r}"
    return None


def _non_finite(value: Any) -> bool:
    """NaN or ±inf anywhere in a value (JSON's `1e999` parses to inf): no JSON document can carry it onward."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def parse_cli_inputs(spec: WorkflowSpec, pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs: strings stay text, other declared types are read as JSON (`n=3`, `tags=["a"]`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise InputError(f"input {pair!r} is not key=value")
        declared = spec.inputs.get(name.strip())
        if declared is None or declared.type == "string":
            values[name.strip()] = raw
            continue
        try:
            values[name.strip()] = json.loads(raw)
        except ValueError:
            raise InputError(f"input '{name}' should be {declared.type} (JSON), got {raw!r}") from None
    return values
