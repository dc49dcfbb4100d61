"""A model group's typed routing settings: its constraints, its options and its rules.

Each is a msgspec Struct that refuses unknown fields, so `max_attempt: 3`, `min_qualty: 0.9` or a rule
`when: {tsk: coding}` is a `file:line: key: unknown field` error when the config loads (`modelyard check`,
start-up) instead of being silently ignored; the routing code reads them by attribute. The YAML is the one
it always was: `options:` stays one flat mapping, and a rule's `metadata.<name>: value` conditions are
accepted as written (`nest_metadata` moves them under `metadata:` before validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from modelyard.schema.constraints import Constraints

__all__ = [
    "Constraints",
    "ModelOptions",
    "RuleSpec",
    "RuleWhen",
    "TokenBounds",
    "as_struct",
    "nest_metadata",
    "rule_data",
]

Seconds = Annotated[float, Meta(ge=0.0, le=86_400.0)]
#: A condition's accepted value: YAML scalars, compared as text with the request's (`tier: 1` matches "1").
Scalar = str | int | float | bool
OneOrMany = Scalar | list[Scalar]
Number = int | float


class ModelOptions(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A model's `options:`: the executor's retry settings for this model and its strategy's knobs.

    The retry fields override `routing:`'s defaults when set (None: the default applies).
    """

    backoff_base_s: Seconds | None = None
    max_backoff_s: Seconds | None = None
    retry_after_cap_s: Seconds | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] | None = None
    failover_on_content_filter: bool | None = None
    #: `priority`: share the first tier at random by `weight` even when every candidate is in one tier.
    weighted_tiers: bool = False
    #: `least-latency`: candidates within this fraction of the best latency share the load at random.
    latency_buffer: Annotated[float, Meta(ge=0.0, le=1000.0)] = 0.1
    #: `learned`: maximise predicted quality - λ·cost/max(cost) instead of meeting `min_quality`.
    lambda_: Annotated[float, Meta(ge=0.0, le=1e6)] | None = field(default=None, name="lambda")
    #: Keep a conversation on one deployment (prompt caches are per deployment): where the strategy would
    #: draw at random, rendezvous hashing of the session key chooses instead (routing/sticky.py).
    sticky: bool = True

    @property
    def overrides_retries(self) -> bool:
        """Whether any retry setting is set here, so the executor must build this model's own policy."""
        return (
            self.backoff_base_s is not None
            or self.max_backoff_s is not None
            or self.retry_after_cap_s is not None
            or self.max_attempts is not None
            or self.failover_on_content_filter is not None
        )


class TokenBounds(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`prompt_tokens: {gt: 8000}`: every bound given must hold."""

    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None


class RuleWhen(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A rule's conditions, all of which must hold. A list means "any of"; `tags` matches any shared tag."""

    task: OneOrMany | None = None
    complexity: OneOrMany | None = None
    key: OneOrMany | None = None
    tags: OneOrMany | None = None
    #: `metadata.<name>: value` in the YAML; request metadata field → accepted value(s).
    metadata: dict[str, OneOrMany] | None = None
    has_tools: bool | None = None
    has_images: bool | None = None
    json: bool | None = None
    stream: bool | None = None
    #: An exact count, or bounds.
    prompt_tokens: Number | TokenBounds | None = None


class RuleSpec(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One rule of the `rules` strategy as written: if `when` holds, `use` these deployments (ranked by
    `strategy`, default priority) or delegate to another model. No `when`: it always matches."""

    use: str | list[str]
    when: RuleWhen | None = None
    strategy: str | None = None


_S = TypeVar("_S", bound=Struct)


def nest_metadata(when: dict[str, Any]) -> dict[str, Any]:
    """`{metadata.tier: gold}` → `{metadata: {tier: gold}}` (other keys, and a non-dict, are left to validation)."""
    flat = [key for key in when if isinstance(key, str) and key.startswith("metadata.")]
    if not flat:
        return when
    metadata = when.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return when  # validation reports the bad `metadata:`
    nested = dict(when)
    merged: dict[str, Any] = dict(metadata or {})
    for key in flat:
        merged[key.removeprefix("metadata.")] = nested.pop(key)
    nested["metadata"] = merged
    return nested


def rule_data(raw: Any) -> Any:
    """A rule's plain data, with its `metadata.<name>` conditions nested, ready for `RuleSpec`."""
    if isinstance(raw, dict) and isinstance(raw.get("when"), dict):
        return {**raw, "when": nest_metadata(raw["when"])}
    return raw


def as_struct(value: Any, type_: type[_S]) -> _S:
    """`value` as `type_`: kept when it already is one, converted from plain data (a mapping) otherwise.

    For settings built in code (`ModelGroup(options={"lambda": 0.3})`); the loader converts the YAML itself,
    with line numbers in its errors.
    """
    if isinstance(value, type_):
        return value
    if isinstance(value, Mapping):
        value = rule_data(dict(value)) if type_ is RuleSpec else dict(value)
    return msgspec.convert(value, type_, strict=False)
