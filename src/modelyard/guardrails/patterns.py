"""Every regular expression a guardrail or an acceptance suite evaluates runs on RE2 (linear time).

That includes the regexes inside JSON Schemas: jsonschema's own `pattern`, `patternProperties` and
`additionalProperties` keywords call Python's backtracking `re`, and a schema can come from a client
(`response_format`, per-request `json_schema` checks), so `{"pattern": "(a+)+$"}` against a crafted answer
would hang the event loop. `make_validator` swaps those keywords for RE2 versions; a schema that needs
what RE2 cannot do fails to compile (a check error: fail closed), never backtracks.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for

_QUIET = re2.Options()
_QUIET.log_errors = False


def compile_pattern(pattern: str) -> re2._Regexp[str]:
    """An RE2 pattern, or ValueError with RE2's reason (linear-time engine: no backtracking to hang on)."""
    try:
        return re2.compile(pattern, _QUIET)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not an RE2 pattern {pattern!r}: {reason}") from None


@lru_cache(maxsize=1024)
def _schema_pattern(pattern: str) -> re2._Regexp[str]:
    """Patterns met inside schemas, compiled once (bounded: schemas may come with requests)."""
    return compile_pattern(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _schema_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        compiled = _schema_pattern(pattern)
        for key, value in instance.items():
            if compiled.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [_schema_pattern(p) for p in schema.get("patternProperties", {})]
    extras = [k for k in instance if k not in known and not any(p.search(k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)))})")


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


@lru_cache(maxsize=16)
def _re2_class(cls: type[Validator]) -> type[Validator]:
    keywords = {name: fn for name, fn in _RE2_KEYWORDS.items() if name in cls.VALIDATORS}
    extended: type[Validator] = extend(cls, keywords)  # type: ignore[no-untyped-call]
    return extended


def _check_patterns(schema: Any) -> None:
    """Compile every regex of the schema now (a pattern RE2 refuses fails here, not mid-request), and refuse
    `unevaluatedProperties` beside `patternProperties`, which would reach jsonschema's backtracking matcher."""
    if isinstance(schema, dict):
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            _schema_pattern(pattern)
        properties = schema.get("patternProperties")
        if isinstance(properties, dict):
            if "unevaluatedProperties" in schema:
                raise ValueError("unevaluatedProperties together with patternProperties is not supported")
            for key in properties:
                _schema_pattern(key)
        for value in schema.values():
            _check_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            _check_patterns(value)


def make_validator(schema: dict[str, Any]) -> Validator:
    """A validator for `schema` (the draft it names, else 2020-12) whose regexes run on RE2; ValueError when
    the schema is invalid or needs a regex feature RE2 lacks."""
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON schema: {exc.message}") from None
    _check_patterns(schema)
    validator: Validator = _re2_class(cls)(schema)
    return validator
