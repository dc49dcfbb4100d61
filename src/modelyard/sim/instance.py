"""Valid JSON instances of a JSON Schema, drawn from a seeded RNG (tool arguments, structured outputs).

Covers what tool and response schemas use in practice: `type` (also a list, also Gemini's upper-case
OpenAPI names), `enum`, `const`, `properties`/`required`, `additionalProperties`, `items`/`prefixItems`,
`minItems`/`maxItems`/`uniqueItems`, `anyOf`/`oneOf`/`allOf`, local `$ref`s (`#/$defs/...`,
`#/definitions/...`, `#`), string `format`s and lengths, numeric bounds and `multipleOf`. `pattern` is not
honoured (the value is then a plain word).
"""

from __future__ import annotations

import math
import random
from typing import Any

_WORDS = (
    "alpha",
    "bravo",
    "delta",
    "echo",
    "kilo",
    "lima",
    "nova",
    "orbit",
    "pixel",
    "quartz",
    "river",
    "sierra",
)
_MAX_DEPTH = 6
#: Past this depth, or this many values, every schema yields a plain word: a `$ref` cycle (`{"$ref": "#"}`) or
#: recursive required properties have no finite instance, and the simulator must answer, not crash or explode.
_HARD_DEPTH = 32
_MAX_VALUES = 2_000
_FORMATS = {
    "date": "2024-05-17",
    "date-time": "2024-05-17T09:30:00Z",
    "time": "09:30:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "3f1c2a4e-8b7d-4c6a-9e21-5a0b7c9d1e2f",
    "ipv4": "192.0.2.7",
    "ipv6": "2001:db8::7",
    "hostname": "sim.example.com",
}


def instance(schema: Any, rng: random.Random) -> Any:
    """A value that validates against `schema`."""
    return _Gen(schema, rng).value(schema, 0)


class _Gen:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.values = 0

    def value(self, schema: Any, depth: int) -> Any:
        self.values += 1
        if depth > _HARD_DEPTH or self.values > _MAX_VALUES:
            return self.word()
        if not isinstance(schema, dict):
            return self.word() if schema is not False else None
        if "$ref" in schema:
            return self.value(self.resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        if "allOf" in schema:
            return self.value(_merge_all(schema), depth + 1)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(_first_non_null(options), depth + 1)
        return self.typed(schema, depth)

    def typed(self, schema: dict[str, Any], depth: int) -> Any:
        kind = _type_of(schema)
        if kind == "object":
            return self.obj(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return self.string(schema)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.word()

    def resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node

    def word(self) -> str:
        return self.rng.choice(_WORDS)

    def obj(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or (depth < _MAX_DEPTH and self.rng.random() < 0.5):
                out[name] = self.value(sub, depth + 1)
        for name in required:
            if name not in out:  # required but not described: any value will do
                out[name] = self.word()
        minimum = int(schema.get("minProperties") or 0)
        extra = schema.get("additionalProperties", True)
        index = 1
        while len(out) < minimum and extra is not False:
            out[f"key{index}"] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
            index += 1
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        low = int(schema.get("minItems") or 0)
        high = schema.get("maxItems")
        high = int(high) if isinstance(high, int) else max(low, 1 if depth >= _MAX_DEPTH else 3)
        count = self.rng.randint(min(max(low, 1), high), max(low, high))
        if items is False:
            count = min(count, len(prefix))
        out: list[Any] = [self.value(sub, depth + 1) for sub in prefix[:count]]
        unique = bool(schema.get("uniqueItems"))
        attempts = 0
        while len(out) < count and attempts < count * 10:
            attempts += 1
            item = self.value(items, depth + 1)
            if unique and item in out:
                continue
            out.append(item)
        return out

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
        if not text:
            text = " ".join(self.word() for _ in range(self.rng.randint(1, 3)))
        low = int(schema.get("minLength") or 0)
        high = schema.get("maxLength")
        while len(text) < low:
            text += " " + self.word()
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        return text

    def integer(self, schema: dict[str, Any]) -> int:
        low, high, low_open, high_open = _bounds(schema, 0.0, 100.0)
        low_i = math.floor(low) + 1 if low_open else math.ceil(low)
        high_i = math.ceil(high) - 1 if high_open else math.floor(high)
        high_i = max(low_i, high_i)
        step = _num(schema.get("multipleOf"))
        if step and step > 0:
            first, last = math.ceil(low_i / step), math.floor(high_i / step)
            return int(step * self.rng.randint(first, max(first, last)))
        return self.rng.randint(low_i, high_i)

    def number(self, schema: dict[str, Any]) -> float:
        low, high, low_open, high_open = _bounds(schema, 0.0, 100.0)
        step = _num(schema.get("multipleOf"))
        if step and step > 0:
            first = math.floor(low / step) + 1 if low_open else math.ceil(low / step)
            last = math.ceil(high / step) - 1 if high_open else math.floor(high / step)
            return step * self.rng.randint(first, max(first, last))
        if high <= low:
            return low
        margin = 0.05 if (low_open or high_open) else 0.0
        return low + (high - low) * (margin + (1 - 2 * margin) * self.rng.random())


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k.lower() != "null"]
        kind = kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _first_non_null(options: list[Any]) -> Any:
    for option in options:
        if not (isinstance(option, dict) and _type_of(option) == "null"):
            return option
    return options[0]


def _merge_all(schema: dict[str, Any]) -> dict[str, Any]:
    """`allOf` folded into one schema: properties and required lists united, other keywords overlaid."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema.get("allOf") or []:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged.setdefault(key, value)
    return merged


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float, bool, bool]:
    """(low, high, low is exclusive, high is exclusive), with defaults where the schema sets no bound."""
    minimum, maximum = _num(schema.get("minimum")), _num(schema.get("maximum"))
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    lo, lo_open = minimum, ex_min is True  # draft-04: a boolean beside minimum
    hi, hi_open = maximum, ex_max is True
    if _num(ex_min) is not None:
        lo, lo_open = _num(ex_min), True
    if _num(ex_max) is not None:
        hi, hi_open = _num(ex_max), True
    if lo is None and hi is None:
        return low, high, False, False
    if lo is None:
        lo = min(low, hi - 1) if hi is not None else low
    if hi is None:
        hi = lo + (high - low)
    return lo, max(lo, hi), lo_open, hi_open
