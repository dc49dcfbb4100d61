"""Routing strategies: pure rankers over already-filtered candidates.

Each takes the candidates and the decision context and returns them best first. No I/O, no clock, no
global state: randomness comes from `ctx.rng`, time from `ctx.now`, live numbers from the health view.
Only the head of the order matters much (the executor rarely goes past the second), so strategies choose
the first pick carefully and keep the rest in a cheap, deterministic order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from itertools import accumulate
from types import MappingProxyType

from modelyard.config.model import Deployment
from modelyard.routing.context import DecisionContext

Strategy = Callable[[list[Deployment], DecisionContext], list[Deployment]]


def _weighted_first(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """A weighted draw for the first place; the rest by weight, heaviest first."""
    if len(candidates) <= 1:
        return list(candidates)
    weights = [max(0.0, dep.weight) for dep in candidates]
    total = sum(weights)
    if total <= 0:
        return list(candidates)
    pick = bisect_right(list(accumulate(weights)), ctx.rng.random() * total)
    pick = min(pick, len(candidates) - 1)
    first = candidates[pick]
    rest = sorted((d for i, d in enumerate(candidates) if i != pick), key=lambda d: -d.weight)
    return [first, *rest]


def weighted(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Weighted random over healthy candidates (`weight` per deployment, default 1)."""
    order = _weighted_first(candidates, ctx)
    if ctx.explain:
        total = sum(max(0.0, d.weight) for d in candidates) or 1.0
        for dep in order:
            ctx.note(dep, f"weight {dep.weight:g} ({100 * max(0.0, dep.weight) / total:.0f}% share)")
    return order


def priority(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Ordered tiers (`tier`, lowest first; else the candidates' order); weighted within a tier."""
    if all(dep.tier == candidates[0].tier for dep in candidates) and not ctx.options.get("weighted_tiers"):
        order = list(candidates)  # one tier, listed order: the common "primary, then backup" config
    else:
        tiers: dict[int, list[Deployment]] = {}
        for dep in candidates:
            tiers.setdefault(dep.tier, []).append(dep)
        order = []
        for tier in sorted(tiers):
            order.extend(_weighted_first(tiers[tier], ctx) if len(tiers[tier]) > 1 else tiers[tier])
    if ctx.explain:
        for i, dep in enumerate(order):
            ctx.note(dep, f"tier {dep.tier}, position {i + 1}")
    return order


def _latency_of(dep: Deployment, ctx: DecisionContext) -> float | None:
    health = ctx.health.get(dep.name)
    if ctx.features.stream and health.ewma_ttft_ms is not None:
        return health.ewma_ttft_ms
    return health.ewma_total_ms


def least_latency(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Lowest observed latency (EWMA of TTFT when streaming, of total time otherwise).

    Candidates within `latency_buffer` (default 10%) of the best share the load at random; deployments
    with no observations yet go first so that they get measured.
    """
    buffer = float(ctx.options.get("latency_buffer", 0.1))
    scored = [(_latency_of(dep, ctx), i, dep) for i, dep in enumerate(candidates)]
    unmeasured = [dep for latency, _, dep in scored if latency is None]
    measured = sorted((item for item in scored if item[0] is not None), key=lambda item: (item[0], item[1]))
    order = unmeasured + [dep for _, _, dep in measured]
    if not unmeasured and len(measured) > 1:
        best = measured[0][0]
        assert best is not None
        near = [dep for latency, _, dep in measured if latency is not None and latency <= best * (1 + buffer)]
        if len(near) > 1:
            first = near[int(ctx.rng.random() * len(near))]
            order.remove(first)
            order.insert(0, first)
    if ctx.explain:
        for dep in order:
            latency = _latency_of(dep, ctx)
            ctx.note(dep, "no latency observed yet" if latency is None else f"latency ewma {latency:.0f} ms")
    return order


def least_busy(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Fewest requests in flight; ties broken at random."""
    health = ctx.health
    rng = ctx.rng
    order = sorted(candidates, key=lambda dep: (health.get(dep.name).in_flight, rng.random()))
    if ctx.explain:
        for dep in order:
            ctx.note(dep, f"{health.get(dep.name).in_flight} in flight")
    return order


def cheapest(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """The cheapest candidate whose constraints hold: observed p95, quality floor, cost cap.

    Constraints (`ctx.constraints`): `max_latency_ms` against the observed p95 (unmeasured passes),
    `min_quality` against the configured (or learned) quality for the task, `max_cost_per_request`
    against the estimate from prompt tokens and max_tokens. Infeasible candidates are skipped with the
    reason; a candidate with no quality score fails a `min_quality` constraint.
    """
    constraints = ctx.constraints
    max_latency = constraints.get("max_latency_ms")
    min_quality = constraints.get("min_quality")
    max_cost = constraints.get("max_cost_per_request")
    feasible: list[tuple[float, int, Deployment]] = []
    for i, dep in enumerate(candidates):
        cost = ctx.estimated_cost(dep)
        if max_cost is not None and cost > max_cost:
            ctx.skip(dep, f"estimated cost ${cost:.6f} > max_cost_per_request ${max_cost}")
            continue
        if max_latency is not None:
            p95 = ctx.health.get(dep.name).p95_ms
            if p95 is not None and p95 > max_latency:
                ctx.skip(dep, f"p95 {p95:.0f} ms > max_latency_ms {max_latency}")
                continue
        if min_quality is not None:
            quality = ctx.quality_of(dep)
            if quality is None or quality < min_quality:
                shown = "unknown" if quality is None else f"{quality:.3f}"
                ctx.skip(dep, f"quality {shown} < min_quality {min_quality}")
                continue
        feasible.append((cost, i, dep))
    feasible.sort(key=lambda item: (item[0], item[1]))
    if ctx.explain:
        for cost, _, dep in feasible:
            quality = ctx.quality_of(dep)
            extra = f", quality {quality:.3f}" if quality is not None else ""
            ctx.note(dep, f"estimated cost ${cost:.6f}{extra}")
    return [dep for _, _, dep in feasible]


STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "priority": priority,
    "weighted": weighted,
    "least-latency": least_latency,
    "latency": least_latency,
    "least-busy": least_busy,
    "cost": cheapest,
})
