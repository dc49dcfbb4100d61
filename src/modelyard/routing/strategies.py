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
from operator import attrgetter
from types import MappingProxyType

from modelyard.accounting.prices import PER_TOKEN
from modelyard.config.model import Deployment
from modelyard.routing.context import DecisionContext, Skip

Strategy = Callable[[list[Deployment], DecisionContext], list[Deployment]]


def _draw(weights: list[float], rng_value: float) -> int:
    """Index drawn with probability proportional to its weight (`rng_value` uniform in [0, 1))."""
    total = sum(weights)
    if total <= 0:
        return 0
    pick = bisect_right(list(accumulate(weights)), rng_value * total)
    return min(pick, len(weights) - 1)


def _weighted_first(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """A weighted draw for the first place; the rest keep their listed order (they are only fallbacks)."""
    order = list(candidates)
    if len(order) > 1:
        pick = _draw([dep.weight if dep.weight > 0 else 0.0 for dep in order], ctx.rng.random())
        if pick:
            order.insert(0, order.pop(pick))
    return order


def weighted(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Weighted random over healthy candidates (`weight` per deployment, default 1)."""
    order = _weighted_first(candidates, ctx)
    if ctx.explain:
        total = sum(max(0.0, d.weight) for d in candidates) or 1.0
        for dep in order:
            ctx.note(dep, f"weight {dep.weight:g} ({100 * max(0.0, dep.weight) / total:.0f}% share)")
    return order


_tier = attrgetter("tier")


def priority(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Ordered tiers (`tier`, lowest first; ties keep the listed order); weighted within the first tier."""
    order = sorted(candidates, key=_tier)  # stable: one tier keeps the "primary, then backup" order
    if len(order) > 1 and (order[0].tier != order[-1].tier or ctx.options.get("weighted_tiers")):
        first_tier = order[0].tier
        end = 1
        while end < len(order) and order[end].tier == first_tier:
            end += 1
        if end > 1:
            order[:end] = _weighted_first(order[:end], ctx)
    if ctx.explain:
        for i, dep in enumerate(order):
            ctx.note(dep, f"tier {dep.tier}, position {i + 1}")
    return order


def _latencies(candidates: list[Deployment], ctx: DecisionContext) -> list[float | None]:
    healths = ctx.health.all()
    if ctx.features.stream:
        out: list[float | None] = []
        for dep in candidates:
            health = healths.get(dep.name)
            if health is None:
                out.append(None)
            else:
                out.append(health.ewma_ttft_ms if health.ewma_ttft_ms is not None else health.ewma_total_ms)
        return out
    return [health.ewma_total_ms if (health := healths.get(dep.name)) is not None else None
            for dep in candidates]


def least_latency(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Lowest observed latency (EWMA of TTFT when streaming, of total time otherwise).

    Candidates within `latency_buffer` (default 10%) of the best share the load at random; deployments
    with no observations yet go first so that they get measured.
    """
    latencies = _latencies(candidates, ctx)
    keyed = sorted((-1.0 if lat is None else lat, i) for i, lat in enumerate(latencies))
    order = [candidates[i] for _, i in keyed]
    best = keyed[0][0] if keyed else -1.0
    if best >= 0 and len(keyed) > 1:
        ceiling = best * (1 + float(ctx.options.get("latency_buffer", 0.1)))
        near = 1
        while near < len(keyed) and keyed[near][0] <= ceiling:
            near += 1
        if near > 1:
            pick = int(ctx.rng.random() * near)
            order.insert(0, order.pop(pick))
    if ctx.explain:
        for dep, latency in zip(candidates, latencies, strict=True):
            ctx.note(dep, "no latency observed yet" if latency is None else f"latency ewma {latency:.0f} ms")
    return order


def least_busy(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Fewest requests in flight; a tie for first place is broken at random."""
    healths = ctx.health.all()
    keyed = []
    for i, dep in enumerate(candidates):
        health = healths.get(dep.name)
        keyed.append((health.in_flight if health is not None else 0, i))
    keyed.sort()
    order = [candidates[i] for _, i in keyed]
    if len(keyed) > 1 and keyed[1][0] == keyed[0][0]:
        tied = 2
        while tied < len(keyed) and keyed[tied][0] == keyed[0][0]:
            tied += 1
        order.insert(0, order.pop(int(ctx.rng.random() * tied)))
    if ctx.explain:
        for dep in order:
            health = healths.get(dep.name)
            ctx.note(dep, f"{health.in_flight if health else 0} in flight")
    return order


def _quality_floor(candidates: list[Deployment], ctx: DecisionContext, min_quality: float | None,
                   ) -> tuple[list[tuple[int, Deployment]], list[Skip]]:
    """Candidates meeting `min_quality` (static unless a learned predictor is in play), and the skips."""
    if min_quality is None:
        return list(enumerate(candidates)), []
    cache = ctx.static_cache if ctx.quality is None else None
    key = ("quality-floor", ctx.features.task, min_quality)
    if cache is not None and key in cache:
        cached: tuple[list[tuple[int, Deployment]], list[Skip]] = cache[key]
        return cached
    passing: list[tuple[int, Deployment]] = []
    skips: list[Skip] = []
    for i, dep in enumerate(candidates):
        quality = ctx.quality_of(dep)
        if quality is None:
            skips.append(Skip(dep.name, "quality unknown < min_quality {}", (min_quality,)))
        elif quality < min_quality:
            skips.append(Skip(dep.name, "quality {:.3f} < min_quality {}", (quality, min_quality)))
        else:
            passing.append((i, dep))
    if cache is not None:
        cache[key] = (passing, skips)
    return passing, skips


def cheapest(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """The cheapest candidate whose constraints hold: observed p95, quality floor, cost cap.

    Constraints (`ctx.constraints`): `max_latency_ms` against the observed p95 (unmeasured passes),
    `min_quality` against the configured (or learned) quality for the task, `max_cost_per_request`
    against the estimate from prompt tokens and max_tokens. Infeasible candidates are skipped with the
    reason; a candidate with no quality score fails a `min_quality` constraint. The quality floor is
    static for configured scores, so its result is cached per model, task and floor.
    """
    constraints = ctx.constraints
    max_latency = constraints.get("max_latency_ms")
    max_cost = constraints.get("max_cost_per_request")
    passing, skips = _quality_floor(candidates, ctx, constraints.get("min_quality"))
    if skips:
        ctx.skipped.extend(skips)
    prompt_tokens = ctx.features.prompt_tokens * PER_TOKEN
    output_tokens = ctx.features.output_estimate() * PER_TOKEN
    prices = ctx.prices
    costed = []
    for i, dep in passing:
        price = prices.get(dep.name)
        costed.append((prompt_tokens * price.input + output_tokens * price.output if price else 0.0, i, dep))
    if max_cost is not None:
        for cost, _, dep in costed:
            if cost > max_cost:
                ctx.skip(dep, "estimated cost ${:.6f} > max_cost_per_request ${}", cost, max_cost)
        costed = [item for item in costed if item[0] <= max_cost]
    if max_latency is not None:
        costed = _within_latency(costed, ctx, max_latency)
    costed.sort()
    if ctx.explain:
        for cost, _, dep in costed:
            quality = ctx.quality_of(dep)
            extra = f", quality {quality:.3f}" if quality is not None else ""
            ctx.note(dep, f"estimated cost ${cost:.6f}{extra}")
    return [dep for _, _, dep in costed]


def _within_latency(costed: list[tuple[float, int, Deployment]], ctx: DecisionContext,
                    max_latency: float) -> list[tuple[float, int, Deployment]]:
    healths = ctx.health.all()
    kept = []
    for item in costed:
        health = healths.get(item[2].name)
        p95 = health.p95_ms if health is not None else None
        if p95 is not None and p95 > max_latency:
            ctx.skip(item[2], "p95 {:.0f} ms > max_latency_ms {}", p95, max_latency)
        else:
            kept.append(item)
    return kept


def learned(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Learned routing: the predicted P(good answer) per candidate (`ctx.quality`, from the trained router)
    stands in for the configured quality.

    With `options.lambda` it maximises predicted quality - λ·(estimated cost in USD); otherwise it is the
    `cost` strategy: the cheapest candidate whose predicted quality clears `min_quality` (by default the
    router's calibrated threshold) and, when none does, the candidate with the highest predicted quality.
    """
    lam = ctx.options.get("lambda")
    if lam is None:
        order = cheapest(candidates, ctx)
        if order or not candidates:
            return order
        # No candidate is predicted good enough: the one most likely to answer well, not a refusal.
        ranked = sorted(candidates, key=lambda dep: -(ctx.quality_of(dep) or 0.0))
        ctx.note(ranked[0], "no candidate clears min_quality: the highest predicted quality")
        return ranked
    scored = []
    for i, dep in enumerate(candidates):
        quality = ctx.quality_of(dep)
        cost = ctx.estimated_cost(dep)
        score = (quality if quality is not None else 0.0) - float(lam) * cost
        scored.append((-score, i, dep))
        if ctx.explain:
            shown = "unknown" if quality is None else f"{quality:.3f}"
            ctx.note(dep, f"predicted quality {shown} - {lam} x ${cost:.6f} = {score:.4f}")
    scored.sort()
    return [dep for _, _, dep in scored]


STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "priority": priority,
    "weighted": weighted,
    "least-latency": least_latency,
    "latency": least_latency,
    "least-busy": least_busy,
    "cost": cheapest,
    "learned": learned,
})
