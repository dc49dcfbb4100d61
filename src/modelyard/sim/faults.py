"""Fault and latency draws: which failure (if any) hits a request, and how long it takes.

One uniform draw per request picks at most one fault: fault *k* hits when the draw falls in its slice of
[0, 1), so each fault's observed rate is its configured rate. A request can force a fault (or none) with
the `x-sim-fault` header, and its time to first token with `x-sim-ttft-ms`.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum

from modelyard.sim.fleet import FAULT_NAMES, Faults, Latency, SimModel

#: z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722
#: A lognormal draw is capped at this multiple of p95, so a rare tail draw cannot stall a test.
_TAIL_CAP = 4.0


class Fault(StrEnum):
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    UNAVAILABLE = "unavailable"
    HANG = "hang"
    RESET = "reset"
    MALFORMED = "malformed"
    CUT_STREAM = "cut_stream"


_ORDER: tuple[Fault, ...] = tuple(Fault(name) for name in FAULT_NAMES)
#: Values the `x-sim-fault` header accepts; "none" forces a clean answer.
OVERRIDES: frozenset[str] = frozenset({*FAULT_NAMES, "none"})


def fault_edges(faults: Faults) -> tuple[float, ...]:
    """The upper edge of each fault's slice of [0, 1), in `Fault` order (precomputed per model)."""
    edges = []
    edge = 0.0
    for rate in faults.rates():
        edge += rate
        edges.append(edge)
    return tuple(edges)


def draw_fault(edges: tuple[float, ...], u: float) -> Fault | None:
    """The fault whose slice of [0, 1) holds `u` (see `fault_edges`), or None (no fault)."""
    if not edges or u >= edges[-1]:
        return None
    for fault, edge in zip(_ORDER, edges, strict=True):
        if u < edge:
            return fault
    return None


def ttft_seconds(model: SimModel, rng: random.Random) -> float:
    """A time-to-first-token draw for `model` (always consumes one draw, so sequences stay aligned)."""
    spec = model.ttft_ms
    z = rng.gauss(0.0, 1.0)
    if not isinstance(spec, Latency):
        return float(spec) / 1000.0
    return lognormal_ms(spec, z) / 1000.0


def lognormal_ms(spec: Latency, z: float) -> float:
    """The lognormal quantile at standard-normal `z` with the given p50 and p95, capped in the tail."""
    p50 = spec.p50
    p95 = spec.p95 if spec.p95 is not None else p50
    if p50 <= 0.0:
        return 0.0
    sigma = (math.log(p95) - math.log(p50)) / _Z95 if p95 > p50 else 0.0
    return min(p50 * math.exp(sigma * z), p95 * _TAIL_CAP)


def generation_seconds(tokens: float, model: SimModel) -> float:
    tps = model.tokens_per_second
    return tokens / tps if tps > 0 else 0.0
