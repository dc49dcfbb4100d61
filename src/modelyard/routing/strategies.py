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
from modelyard.routing.sticky import choose

#: `least-busy` with a session: deployments within this many requests in flight of the least busy one
#: count as tied, so a session is not moved by one other request's arrival.
STICKY_BUSY_SLACK = 1
#: `learned` (with λ) with a session: candidates within this score of the best one count as tied.
STICKY_SCORE_SLACK = 0.01

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
        session = ctx.session
        if session is not None:
            pick = choose(session, order)  # weighted rendezvous: the same split by weight, per session
            ctx.sticky = order[pick].name
        else:
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
    if len(order) > 1 and (order[0].tier != order[-1].tier or ctx.options.weighted_tiers):
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


def _latencies(candidates: list[Deployment], ctx: DecisionContext) -> list[float]:
    """EWMA latency per candidate (TTFT when streaming), -1 where none was observed yet."""
    get = ctx.health.all().get
    if ctx.features.stream:
        return [
            -1.0
            if h is None
            else (
                h.ewma_ttft_ms
                if h.ewma_ttft_ms is not None
                else (h.ewma_total_ms if h.ewma_total_ms is not None else -1.0)
            )
            for h in map(get, [dep.name for dep in candidates])
        ]
    return [-1.0 if (h := get(dep.name)) is None or h.ewma_total_ms is None else h.ewma_total_ms for dep in candidates]


def _random_among_first(order: list[Deployment], tied: int, ctx: DecisionContext) -> None:
    """Put one of the first `tied` (equally good) candidates first, at random: they share the load
    (a session's rendezvous choice among them instead of the draw, so it keeps its prompt cache)."""
    if tied > 1:
        session = ctx.session
        if session is not None:
            pick = choose(session, order[:tied])
            ctx.sticky = order[pick].name
        else:
            pick = int(ctx.rng.random() * tied)
        order.insert(0, order.pop(pick))


def least_latency(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Lowest observed latency (EWMA of TTFT when streaming, of total time otherwise).

    Candidates within `latency_buffer` (default 10%) of the best share the load at random; deployments
    with no observations yet go first so that they get measured.
    """
    latencies = _latencies(candidates, ctx)
    ranked = sorted(range(len(candidates)), key=latencies.__getitem__)
    order = list(map(candidates.__getitem__, ranked))
    if order and latencies[ranked[0]] >= 0:
        ceiling = latencies[ranked[0]] * (1 + ctx.options.latency_buffer)
        _random_among_first(order, bisect_right(ranked, ceiling, key=latencies.__getitem__), ctx)
    if ctx.explain:
        for dep, latency in zip(candidates, latencies, strict=True):
            ctx.note(dep, "no latency observed yet" if latency < 0 else f"latency ewma {latency:.0f} ms")
    return order


def least_busy(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Fewest requests in flight; a tie for first place is broken at random."""
    get = ctx.health.all().get
    busy = [0 if (h := get(dep.name)) is None else h.in_flight for dep in candidates]
    ranked = sorted(range(len(candidates)), key=busy.__getitem__)
    order = list(map(candidates.__getitem__, ranked))
    if order:
        least = busy[ranked[0]]
        if ctx.session is not None:
            tied = bisect_right(ranked, least + STICKY_BUSY_SLACK, key=busy.__getitem__)
        else:
            tied = busy.count(least)  # sorted: the ties for first lead
        _random_among_first(order, tied, ctx)
    if ctx.explain:
        for dep, n in zip(candidates, busy, strict=True):
            ctx.note(dep, f"{n} in flight")
    return order


_Floor = tuple[list[Deployment], list[tuple[float, float]], list[Skip]]


def _quality_floor(candidates: list[Deployment], ctx: DecisionContext, min_quality: float | None) -> _Floor:
    """The candidates meeting `min_quality`, their (input, output) prices per token, and the skips.

    Static unless a learned predictor is in play, so cached per model, task and floor."""
    cache = ctx.static_cache if ctx.quality is None else None
    key = ("quality-floor", ctx.features.task, min_quality)
    if cache is not None:
        cached: _Floor | None = cache.get(key)
        if cached is not None:
            return cached
    passing: list[Deployment] = []
    skips: list[Skip] = []
    for dep in candidates:
        if min_quality is not None:
            quality = ctx.quality_of(dep)
            if quality is None:
                skips.append(Skip(dep.name, "quality unknown < min_quality {}", (min_quality,)))
                continue
            if quality < min_quality:
                skips.append(Skip(dep.name, "quality {:.3f} < min_quality {}", (quality, min_quality)))
                continue
        passing.append(dep)
    prices = ctx.prices
    rates = [
        (p.input * PER_TOKEN, p.output * PER_TOKEN) if (p := prices.get(dep.name)) is not None else (0.0, 0.0)
        for dep in passing
    ]
    result = (passing, rates, skips)
    if cache is not None:
        cache[key] = result
    return result


def cheapest(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """The cheapest candidate whose constraints hold: observed p95, quality floor, cost cap.

    Constraints (`ctx.constraints`): `max_latency_ms` against the observed p95 (unmeasured passes),
    `min_quality` against the configured (or learned) quality for the task, `max_cost_per_request`
    against the estimate from prompt tokens and max_tokens. Infeasible candidates are skipped with the
    reason; a candidate with no quality score fails a `min_quality` constraint.
    """
    constraints = ctx.constraints
    max_latency = constraints.max_latency_ms
    max_cost = constraints.max_cost_per_request
    passing, rates, skips = _quality_floor(candidates, ctx, constraints.min_quality)
    if skips:
        ctx.skipped.extend(skips)
    prompt_tokens = ctx.features.prompt_tokens
    output_tokens = ctx.features.output_estimate()
    costs = [prompt_tokens * per_in + output_tokens * per_out for per_in, per_out in rates]
    ranked = sorted(range(len(passing)), key=costs.__getitem__)
    if max_cost is not None or max_latency is not None:
        ranked = _feasible(ranked, passing, costs, ctx, max_cost, max_latency)
    order = list(map(passing.__getitem__, ranked))
    if ctx.explain:
        for i in ranked:
            quality = ctx.quality_of(passing[i])
            extra = f", quality {quality:.3f}" if quality is not None else ""
            ctx.note(passing[i], f"estimated cost ${costs[i]:.6f}{extra}")
    return order


def _feasible(
    ranked: list[int],
    passing: list[Deployment],
    costs: list[float],
    ctx: DecisionContext,
    max_cost: float | None,
    max_latency: float | None,
) -> list[int]:
    """The ranked candidates within the cost cap and the observed-p95 bound (unmeasured ones pass)."""
    if max_cost is not None:
        for i in ranked:
            if costs[i] > max_cost:
                ctx.skip(passing[i], "estimated cost ${:.6f} > max_cost_per_request ${}", costs[i], max_cost)
        ranked = [i for i in ranked if costs[i] <= max_cost]
    if max_latency is not None:
        watched = ctx.health.slow_over(max_latency)
        if watched is not None and not watched:
            return ranked  # the common case: nobody is slower than this (configured) bound
        get = ctx.health.all().get
        p95s = [None if (h := get(passing[i].name)) is None else h.p95_ms for i in ranked]
        slow = [(i, p95) for i, p95 in zip(ranked, p95s, strict=True) if p95 is not None and p95 > max_latency]
        if slow:
            for i, p95 in slow:
                ctx.skip(passing[i], "p95 {:.0f} ms > max_latency_ms {}", p95, max_latency)
            excluded = {i for i, _ in slow}
            ranked = [i for i in ranked if i not in excluded]
    return ranked


def learned(candidates: list[Deployment], ctx: DecisionContext) -> list[Deployment]:
    """Learned routing: the predicted P(good answer) per candidate (`ctx.quality`, from the trained router)
    stands in for the configured quality.

    With `options.lambda` it maximises predicted quality - λ·cost/max(cost) (costs divided by the dearest
    candidate's, so λ is unit-free and matches `modelyard router eval`'s knob: λ = 0.1 gives up 0.1 of
    P(good) to avoid the dearest candidate's full price); otherwise it is the `cost` strategy: the cheapest
    candidate whose predicted quality clears `min_quality` and, when none does, the most likely one.
    Without either, the router's calibrated knob applies (see `intelligence.py`).
    """
    lam = ctx.options.lambda_
    if lam is None:
        order = cheapest(candidates, ctx)
        if order or not candidates:
            return order
        # No candidate is predicted good enough: the one most likely to answer well, not a refusal.
        ranked = sorted(candidates, key=lambda dep: -(ctx.quality_of(dep) or 0.0))
        ctx.note(ranked[0], "no candidate clears min_quality: the highest predicted quality")
        return ranked
    costs = [ctx.estimated_cost(dep) for dep in candidates]
    scale = max(costs, default=0.0) or 1.0
    scored = []
    for i, dep in enumerate(candidates):
        quality = ctx.quality_of(dep)
        score = (quality if quality is not None else 0.0) - lam * costs[i] / scale
        scored.append((-score, costs[i], i))
        if ctx.explain:
            shown = "unknown" if quality is None else f"{quality:.3f}"
            ctx.note(dep, f"predicted quality {shown} - {lam} x {costs[i] / scale:.3f} (cost share) = {score:.4f}")
    scored.sort()
    order = [candidates[i] for _, _, i in scored]
    if ctx.session is not None and len(order) > 1:
        best = scored[0][0]
        _random_among_first(order, sum(1 for s, _, _ in scored if s - best <= STICKY_SCORE_SLACK), ctx)
    return order


STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        "priority": priority,
        "weighted": weighted,
        "least-latency": least_latency,
        "latency": least_latency,
        "least-busy": least_busy,
        "cost": cheapest,
        "learned": learned,
    }
)
