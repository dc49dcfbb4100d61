"""The JSON Schema of the workflow file format, exported so editors can validate and complete it.

`spec.py` validates every file against this schema first (structure, types, unknown keys) and then checks
what a schema cannot express (references, cycles, templates). `docs/workflow.schema.json` is this dict,
written by `python -m modelyard.workflows.schema > docs/workflow.schema.json`; a test keeps them equal.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_VERSION = "modelyard.workflow/v1"
STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
INPUT_TYPES = ["string", "number", "integer", "boolean", "array", "object"]

_TEMPLATE = {"type": "string", "description": "A Jinja2 template; sees only `inputs`, `needs`, `item`."}


def _input() -> dict[str, Any]:
    full = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": {"enum": INPUT_TYPES},
            "description": {"type": "string"},
            "default": {},
            "enum": {"type": "array", "minItems": 1},
        },
    }
    return {"oneOf": [{"enum": INPUT_TYPES}, full]}


def _step() -> dict[str, Any]:
    positive_int = {"type": "integer", "minimum": 1}
    properties: dict[str, Any] = {
        "kind": {
            "enum": ["model", "tool", "loop", "approval", "workflow"],
            "description": "Inferred from the step's keys.",
        },
        "description": {"type": "string"},
        "needs": {
            "type": "array",
            "items": {"type": "string", "pattern": STEP_ID_PATTERN},
            "uniqueItems": True,
            "description": "Steps whose outputs this step's templates may read (and waits for).",
        },
        "model": {"type": "string", "minLength": 1, "description": "A model name or deployment."},
        "prompt": _TEMPLATE,
        "system": _TEMPLATE,
        "call": {"type": "string", "pattern": CALL_PATTERN, "description": "package.module:function"},
        "args": {"type": "object", "description": "Keyword arguments of a tool; values are templates."},
        "foreach": {
            "oneOf": [_TEMPLATE, {"type": "array"}],
            "description": "Fan out: run the step once per item (`item`, `item_index`).",
        },
        "max_parallel": positive_int,
        "when": {"type": ["string", "boolean"], "description": "Skip the step when this is false."},
        "next": {
            "type": "string",
            "description": "A template over the step's output giving the id(s) of the successors that run.",
        },
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds per attempt."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": positive_int,
        "task": {"type": "string", "description": "Task label for quality-aware routing."},
        "route": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "strategy": {"type": "string"},
                "constraints": {"type": "object"},
                "candidates": {"type": "array", "items": {"type": "string"}},
            },
        },
        "output": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "schema": {
                    "type": ["object", "boolean", "string"],
                    "description": "JSON Schema of the answer, or a .json file beside the workflow.",
                },
            },
        },
        "loop": {
            "type": "object",
            "additionalProperties": False,
            "required": ["steps"],
            "properties": {
                "max_iterations": {"type": "integer", "minimum": 1, "maximum": 50},
                "until": {"type": ["string", "boolean"]},
                "steps": {"$ref": "#/$defs/steps"},
            },
        },
        "approve": {
            "type": "object",
            "additionalProperties": False,
            "required": ["prompt"],
            "description": "Wait for a person: `modelyard runs approve|reject RUN STEP` decides (see Approval steps).",
            "properties": {
                "prompt": {**_TEMPLATE, "description": "The question the person answers (a template)."},
                "show": {**_TEMPLATE, "description": "What the person is shown (a template over `needs`)."},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds to wait."},
                "on_timeout": {"enum": ["reject", "approve"], "description": "The decision once timeout passed."},
            },
        },
        "workflow": {
            "type": "string",
            "minLength": 1,
            "description": "A sub-workflow: another workflow file (relative to this one) run as this step.",
        },
        "inputs": {
            "type": "object",
            "propertyNames": {"pattern": STEP_ID_PATTERN},
            "description": "The sub-workflow's inputs; values are templates.",
        },
        "estimate": {
            "type": "object",
            "additionalProperties": False,
            "description": "Hints for `modelyard plan`: fan-out width, answer size, loop rounds.",
            "properties": {"items": positive_int, "output_tokens": positive_int, "iterations": positive_int},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "oneOf": [
            {"required": ["model"]},
            {"required": ["call"]},
            {"required": ["loop"]},
            {"required": ["approve"]},
            {"required": ["workflow"]},
        ],
        "dependentRequired": {"model": ["prompt"], "prompt": ["model"]},
    }


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a `modelyard.workflow/v1` file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:modelyard:workflow:v1",
        "title": "modelyard workflow",
        "type": "object",
        "additionalProperties": False,
        "required": ["schema", "name", "steps"],
        "properties": {
            "schema": {"const": SCHEMA_VERSION},
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
            "description": {"type": "string"},
            "inputs": {
                "type": "object",
                "propertyNames": {"pattern": STEP_ID_PATTERN},
                "additionalProperties": _input(),
            },
            "budget": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_cost_usd": {"type": "number", "exclusiveMinimum": 0},
                    "max_seconds": {"type": "number", "exclusiveMinimum": 0},
                },
            },
            "max_parallel": {"type": "integer", "minimum": 1, "description": "Model/tool calls in flight."},
            "steps": {"$ref": "#/$defs/steps"},
            "outputs": {
                "type": "object",
                "additionalProperties": {
                    "oneOf": [
                        {"type": "string"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["value", "schema"],
                            "properties": {
                                "value": {"type": "string", "description": "The output's template."},
                                "schema": {
                                    "type": ["object", "boolean", "string"],
                                    "description": "JSON Schema the value must match, or a .json file.",
                                },
                            },
                        },
                    ]
                },
            },
            "report": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "premium_model": {"type": "string", "description": "Price the tokens at this model."},
                    "tasks_step": {"type": "string", "description": "The fan-out whose items are tasks."},
                    "per_tasks": {"type": "integer", "minimum": 1},
                },
            },
        },
        "$defs": {
            "steps": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": STEP_ID_PATTERN},
                "additionalProperties": {"$ref": "#/$defs/step"},
            },
            "step": _step(),
        },
    }


if __name__ == "__main__":
    print(json.dumps(workflow_json_schema(), indent=2))
