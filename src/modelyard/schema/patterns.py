"""The one way modelyard compiles a client's or an operator's regex and JSON Schema: both in linear time.

Regexes run on RE2. JSON Schemas run on jsonschema-rs (Rust): ~0.2 µs to validate a 500-token answer where
the pure-Python `jsonschema` took ~50 µs, its `pattern` keywords on Rust's linear-time `regex` engine (a
schema from a client, `{"pattern": "(a+)+$"}`, cannot make the gateway backtrack), and `offline`, so a
`$ref` to a URL is an error, never a request from the gateway. Guardrails, acceptance suites and the config
loader all compile through here, so a pattern or schema accepted at load is the one that runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import re2

_QUIET = re2.Options()
_QUIET.log_errors = False


def compile_pattern(pattern: str) -> re2._Regexp[str]:
    """An RE2 pattern, or ValueError with RE2's reason (linear-time engine: no backtracking to hang on)."""
    try:
        return re2.compile(pattern, _QUIET)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not an RE2 pattern {pattern!r}: {reason}") from None


def compile_ascii(pattern: str) -> re2._Regexp[bytes]:
    """`pattern` for scanning an ASCII text's bytes (the same offsets, without google-re2's per-call offset
    conversion of a str); quiet like `compile_pattern` (a crafted text must not fill the log)."""
    return re2.compile(pattern.encode(), _QUIET)


@dataclass(frozen=True, slots=True)
class SchemaError:
    """Where an instance first fails its schema (`/`-joined path, empty at the root) and why."""

    path: str
    message: str


class SchemaValidator:
    """A compiled JSON Schema."""

    __slots__ = ("_validator",)

    def __init__(self, validator: Any) -> None:
        self._validator = validator

    def first_error(self, value: Any) -> SchemaError | None:
        error = next(iter(self._validator.iter_errors(value)), None)
        if error is None:
            return None
        return SchemaError("/".join(str(part) for part in error.instance_path), str(error.message))


def make_validator(schema: dict[str, Any]) -> SchemaValidator:
    """A validator for `schema` (the draft it names, else 2020-12); ValueError when the schema is invalid,
    has a pattern the linear-time engine refuses, or refers to a document it would have to fetch."""
    try:
        validator = jsonschema_rs.validator_for(
            schema, pattern_options=jsonschema_rs.RegexOptions(), validate_formats=False, offline=True
        )
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"invalid JSON schema: {first[:300]}") from None
    return SchemaValidator(validator)
