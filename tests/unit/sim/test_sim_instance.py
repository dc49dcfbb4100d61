"""JSON-Schema instances: every generated value validates against its schema (checked with jsonschema)."""

from __future__ import annotations

import random
from typing import Any

import jsonschema
import pytest

from modelyard.sim.instance import instance

SCHEMAS: list[dict[str, Any]] = [
    {"type": "string"},
    {"type": "integer", "minimum": -5, "maximum": 5},
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
    {"type": "integer", "minimum": 10, "multipleOf": 5},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "number", "minimum": 1.5, "multipleOf": 0.5},
    {"type": "number", "maximum": -100},
    {"type": "boolean"},
    {"type": "null"},
    {"enum": ["red", "green", 3, None]},
    {"const": {"fixed": True}},
    {"type": ["string", "null"], "minLength": 12, "maxLength": 20},
    {"type": "string", "maxLength": 2},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "email"},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True, "minItems": 3},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False, "minItems": 2},
    {"type": "array", "maxItems": 0},
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": ".*"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
    {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]},
    {"oneOf": [{"type": "string", "maxLength": 3}]},
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    },
    {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value"],
            }
        },
        "$ref": "#/$defs/node",
    },
    {
        "definitions": {
            "step": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"$ref": "#/definitions/step"}, "minItems": 1}},
        "required": ["steps"],
    },
    {"type": "integer", "minimum": 0, "exclusiveMinimum": True},  # draft-04 boolean form
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_generated_instances_validate(schema: dict[str, Any]) -> None:
    validator_cls = jsonschema.Draft4Validator if schema.get("exclusiveMinimum") is True else None
    for seed in range(60):
        value = instance(schema, random.Random(seed))
        if validator_cls is not None:
            validator_cls(schema).validate(value)
        else:
            jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)


def test_gemini_openapi_upper_case_types() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "recipe": {"type": "STRING"},
            "minutes": {"type": "INTEGER"},
            "steps": {"type": "ARRAY", "items": {"type": "STRING"}},
            "vegan": {"type": "BOOLEAN", "nullable": True},
        },
        "required": ["recipe", "minutes", "steps"],
        "propertyOrdering": ["recipe", "minutes", "steps"],
    }
    lowered = {
        "type": "object",
        "properties": {
            "recipe": {"type": "string"},
            "minutes": {"type": "integer"},
            "steps": {"type": "array", "items": {"type": "string"}},
            "vegan": {"type": "boolean"},
        },
        "required": ["recipe", "minutes", "steps"],
    }
    for seed in range(30):
        jsonschema.validate(instance(schema, random.Random(seed)), lowered)


def test_optional_properties_are_sometimes_present_and_values_vary() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]}
    values = [instance(schema, random.Random(s)) for s in range(40)]
    assert any("b" in v for v in values) and any("b" not in v for v in values)
    assert len({v["a"] for v in values}) > 5


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"allOf": [{"$ref": "#"}]},
        {"anyOf": [{"$ref": "#"}]},
        {"type": "object", "properties": {"a": {"$ref": "#"}, "b": {"$ref": "#"}}, "required": ["a", "b"]},
        {"$defs": {"n": {"type": "array", "minItems": 3, "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"},
    ],
)
def test_schemas_without_a_finite_instance_still_give_a_bounded_value(schema: dict[str, Any]) -> None:
    """A client's cyclic tool schema once crashed the simulator (RecursionError → 500): now a bounded value."""
    value = instance(schema, random.Random(0))
    assert len(repr(value)) < 200_000
