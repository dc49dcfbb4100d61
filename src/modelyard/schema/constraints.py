"""Routing constraints: the one definition of their names and ranges, shared by the config and the requests.

A model's `constraints:` in the YAML and a request's `extra_body.modelyard.constraints` are the same Struct, so
a name the strategies do not read (`min_qualty`) is an unknown-field error in both, and every number is
checked finite and in range once, when it is decoded: the strategies compare these with costs and latencies
and must never meet a string, a NaN or an infinity. It lives in `schema/` because requests are decoded
there and the config layer may import the schema, not the other way round.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct
from msgspec.structs import replace

#: Bounds far above any real value that keep every comparison finite (msgspec refuses NaN and ±inf outside them).
LatencyMs = Annotated[float, Meta(ge=0.0, le=1e9)]
CostUsd = Annotated[float, Meta(ge=0.0, le=1e6)]
Quality = Annotated[float, Meta(ge=-1e6, le=1e6)]


class Constraints(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the `cost` and `learned` strategies require of a candidate; unset (None) means no bound.

    - `max_latency_ms`: the observed p95 latency (a deployment not yet measured passes).
    - `max_cost_per_request`: the estimated cost in USD, from prompt tokens and the expected output.
    - `min_quality`: the configured (or learned) quality for the request's task; a `learned` route also
      filters out a deployment whose acceptance-suite pass rate for the task (`quality_from:`) is below it.
    - `accepted`: `true` keeps only deployments an acceptance suite did not reject for the request's task
      (`quality_from:`; untested deployments and requests without a task pass, and explain says so); any
      strategy.
    """

    max_latency_ms: LatencyMs | None = None
    max_cost_per_request: CostUsd | None = None
    min_quality: Quality | None = None
    accepted: bool | None = None

    def overridden_by(self, other: Constraints | None) -> Constraints:
        """These constraints with each bound `other` sets replacing ours (a request's overrides onto a model's)."""
        if other is None:
            return self
        changes = {name: value for name in other.__struct_fields__ if (value := getattr(other, name)) is not None}
        return replace(self, **changes) if changes else self


#: The constraint names, for messages (`Unknown routing constraint ... (known: ...)`).
CONSTRAINT_NAMES: tuple[str, ...] = Constraints.__struct_fields__
