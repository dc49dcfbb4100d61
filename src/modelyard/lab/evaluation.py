"""Router metrics: RouteLLM's PGR/APGR/CPT for two models, cost-quality curves and their hull area for many.

Definitions follow the papers so figures can be set side by side:

- PGR (performance gap recovered) = (q_router - q_weak) / (q_strong - q_weak).
- The strong-share curve (RouteLLM `evaluate.py`): thresholds at the 0, 1/k, ..., 1 quantiles of the
  router's strong-preference score (k = 10); prompts scoring >= the threshold go to the strong model
  (> for the last one, so the curve ends at 0%); each threshold gives (share of strong calls, quality).
- APGR = (AUC - q_weak * span) / ((q_strong - q_weak) * span), AUC the trapezoid area under quality
  over the share axis. Random routing scores about 0.5.
- CPT(x%) = the smallest share of strong calls at which the (linearly interpolated) curve reaches PGR x.
- Many models: each policy setting gives (mean cost, mean quality); the curve's non-decreasing convex
  hull, integrated over a cost range and divided by its width, is RouterBench's AIQ.

Everything is pure numpy on arrays: `predicted`, `scores`, `costs` are (prompts, models) matrices; `choose`
is the same choice rule for one prompt (the gateway's `learned` strategy applies it to deployments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Mode = Literal["threshold", "lambda"]
MODES: tuple[Mode, ...] = ("lambda", "threshold")
#: A prompt counts as answered correctly when the chosen model's score reaches this.
CORRECT_AT = 0.5


# --- two models (RouteLLM) --------------------------------------------------------------------------


def pgr(q_router: float, q_weak: float, q_strong: float) -> float:
    """Share of the weak-to-strong quality gap that the router recovers (NaN when there is no gap)."""
    return (q_router - q_weak) / (q_strong - q_weak) if q_strong != q_weak else float("nan")


def strong_share_curve(preference: Array, strong: Array, weak: Array, bins: int | None = 10) -> tuple[Array, Array]:
    """(share of strong calls, mean quality) for threshold sweeps over the strong-preference score.

    `bins` quantile thresholds as RouteLLM computes them; `None` for every distinct cut (the exact curve).
    """
    pref = np.asarray(preference, dtype=np.float64)
    s, w = np.asarray(strong, dtype=np.float64), np.asarray(weak, dtype=np.float64)
    if bins is None:
        order = np.argsort(-pref, kind="stable")
        gain = np.concatenate([[0.0], np.cumsum((s - w)[order])])
        share = np.arange(len(pref) + 1) / len(pref)
        return share[::-1].copy(), ((w.sum() + gain) / len(pref))[::-1].copy()
    edges = np.quantile(pref, np.linspace(0.0, 1.0, bins + 1))
    shares, quals = [], []
    for i, t in enumerate(edges):
        pick = pref > t if i == len(edges) - 1 else pref >= t
        shares.append(pick.mean())
        quals.append(np.where(pick, s, w).mean())
    return np.array(shares), np.array(quals)


def apgr(share: Array, quality: Array, q_weak: float, q_strong: float) -> float:
    """Average performance gap recovered: normalised area under the quality-vs-strong-share curve."""
    order = np.argsort(share, kind="stable")
    x, y = np.asarray(share)[order], np.asarray(quality)[order]
    span = float(x[-1] - x[0])
    if span == 0 or q_strong == q_weak:
        return float("nan")
    auc = float(np.trapezoid(y, x))
    return (auc - q_weak * span) / ((q_strong - q_weak) * span)


def cpt(share: Array, quality: Array, q_weak: float, q_strong: float, target_pgr: float) -> float:
    """Call-performance threshold: least share of strong calls whose quality reaches `target_pgr`."""
    goal = q_weak + target_pgr * (q_strong - q_weak)
    order = np.argsort(share, kind="stable")
    x, y = np.asarray(share)[order], np.asarray(quality)[order]
    if y[0] >= goal:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= goal:
            frac = (goal - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + frac * (x[i] - x[i - 1]))
    return float("nan")


@dataclass
class PairReport:
    """RouteLLM's figures for one benchmark."""

    q_weak: float
    q_strong: float
    apgr: float
    apgr_exact: float
    cpt50: float
    cpt80: float
    share: list[float]
    quality: list[float]


def pair_report(preference: Array, strong: Array, weak: Array, bins: int = 10) -> PairReport:
    """APGR (RouteLLM's 10-quantile curve and the exact one), CPT(50%) and CPT(80%)."""
    qs, qw = float(np.mean(strong)), float(np.mean(weak))
    share, quality = strong_share_curve(preference, strong, weak, bins)
    ex_share, ex_quality = strong_share_curve(preference, strong, weak, None)
    return PairReport(
        q_weak=qw,
        q_strong=qs,
        apgr=apgr(share, quality, qw, qs),
        apgr_exact=apgr(ex_share, ex_quality, qw, qs),
        cpt50=cpt(share, quality, qw, qs, 0.5),
        cpt80=cpt(share, quality, qw, qs, 0.8),
        share=share.tolist(),
        quality=quality.tolist(),
    )


# --- many models: policies, curves, hull area --------------------------------------------------------


def choose(
    predicted: Mapping[str, float],
    costs: Mapping[str, float],
    threshold: float | None = None,
    lam: float | None = None,
) -> str:
    """Pick one model from `predicted` (each needs a cost): pure, no I/O, microseconds.

    - `threshold` set: the cheapest model whose predicted quality >= threshold; when none clears it,
      fall through to the rule below.
    - otherwise: argmax of quality - lam * cost / max(cost) (lam None = 0: the most likely to succeed).
      Costs are divided by the largest candidate cost, so lam is unit-free: lam = 0.1 gives up 0.1 of
      P(correct) to avoid paying the most expensive candidate's full price.
    Ties go to the cheaper model, then to the earlier name in `predicted`.
    """
    names = [m for m in predicted if m in costs]
    if not names:
        raise ValueError("choose: no model has both a prediction and a cost")
    if threshold is not None:
        ok = [m for m in names if predicted[m] >= threshold]
        if ok:
            return min(ok, key=lambda m: (costs[m], -predicted[m], names.index(m)))
    top = max(costs[m] for m in names)
    scale = top if top > 0 else 1.0
    weight = lam or 0.0
    return min(names, key=lambda m: (weight * (costs[m] / scale) - predicted[m], costs[m], names.index(m)))


def choose_batch(
    predicted: Array, costs: Array, threshold: float | None = None, lam: float | None = None
) -> NDArray[np.intp]:
    """Vectorised `choose`: the chosen column per row (see that function for the rule)."""
    pred = np.asarray(predicted, dtype=np.float64)
    cost = np.asarray(costs, dtype=np.float64)
    top = cost.max(axis=1, keepdims=True)
    norm = cost / np.where(top > 0, top, 1.0)
    column = np.broadcast_to(np.arange(pred.shape[1]), pred.shape)
    # Ties go to the cheaper model, then to the earlier column: lexsort keys, last is primary.
    utility = pred - (lam or 0.0) * norm
    by_utility = np.lexsort((column, cost, -utility), axis=1)[:, 0]
    if threshold is None:
        return by_utility
    clears = pred >= threshold
    cheapest_ok = np.lexsort((column, -pred, np.where(clears, cost, np.inf)), axis=1)
    return np.where(clears.any(axis=1), cheapest_ok[:, 0], by_utility)


@dataclass
class CurvePoint:
    """One policy setting's outcome on labelled data.

    `accuracy`: share of prompts whose chosen model answered correctly (score >= 0.5);
    `decision_accuracy`: the same among prompts that at least one model answered correctly.
    """

    knob: float
    cost: float
    quality: float
    accuracy: float
    decision_accuracy: float = float("nan")
    shares: list[float] = field(default_factory=list)


def outcome(choice: NDArray[np.intp], scores: Array, costs: Array, knob: float = 0.0) -> CurvePoint:
    """Mean cost and quality, accuracies and traffic share per model of one set of choices."""
    rows = np.arange(len(choice))
    got, paid = scores[rows, choice], costs[rows, choice]
    right = got >= CORRECT_AT
    answerable = (scores >= CORRECT_AT).any(axis=1)
    decision = float(right[answerable].mean()) if answerable.any() else float("nan")
    shares = np.bincount(choice, minlength=scores.shape[1]) / max(len(choice), 1)
    quality, accuracy = float(got.mean()), float(right.mean())
    return CurvePoint(knob, float(paid.mean()), quality, accuracy, decision, shares.tolist())


def default_knobs(mode: Mode) -> Array:
    """The sweep: thresholds over [0, 1], or lambdas from 0 (best predicted) to 100 (cheapest)."""
    if mode == "threshold":
        return np.linspace(0.0, 1.0, 101)
    return np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 120)])


def policy_curve(
    predicted: Array, scores: Array, costs: Array, mode: Mode = "lambda", knobs: Sequence[float] | None = None
) -> list[CurvePoint]:
    """The cost-quality curve of one policy family over its knob."""
    grid = default_knobs(mode) if knobs is None else np.asarray(knobs, dtype=np.float64)
    points = []
    for k in grid:
        choice = (
            choose_batch(predicted, costs, threshold=float(k))
            if mode == "threshold"
            else choose_batch(predicted, costs, lam=float(k))
        )
        points.append(outcome(choice, scores, costs, float(k)))
    return points


def upper_hull(costs: Sequence[float], qualities: Sequence[float]) -> tuple[Array, Array]:
    """The non-decreasing upper convex hull of (cost, quality) points, left to right."""
    pts = sorted(zip(costs, qualities, strict=True), key=lambda p: (p[0], -p[1]))
    hull: list[tuple[float, float]] = []
    for c, q in pts:
        if hull and c == hull[-1][0]:
            continue  # same cost, lower quality (sorted so)
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], (c, q)) >= 0:
            hull.pop()
        hull.append((c, q))
    best = int(np.argmax([q for _, q in hull]))
    kept = hull[: best + 1]
    return np.array([c for c, _ in kept]), np.array([q for _, q in kept])


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_value(hull_c: Array, hull_q: Array, cost: float) -> float:
    """Quality reachable at `cost` on the hull (flat beyond its ends)."""
    return float(np.interp(cost, hull_c, hull_q))


def hull_area(
    costs: Sequence[float], qualities: Sequence[float], lo: float | None = None, hi: float | None = None
) -> float:
    """RouterBench's AIQ: mean height of the non-decreasing convex hull over the cost range [lo, hi]."""
    hc, hq = upper_hull(costs, qualities)
    lo = float(min(costs)) if lo is None else lo
    hi = float(max(costs)) if hi is None else hi
    if hi <= lo:
        return float(hq[-1])
    xs = np.unique(np.clip(np.concatenate([[lo, hi], hc]), lo, hi))
    return float(np.trapezoid(np.interp(xs, hc, hq), xs) / (hi - lo))


def cost_to_reach(costs: Sequence[float], qualities: Sequence[float], goal: float) -> float:
    """Least cost at which the hull reaches `goal` quality (NaN when it never does)."""
    hc, hq = upper_hull(costs, qualities)
    if hq[-1] < goal:
        return float("nan")
    if hq[0] >= goal:
        return float(hc[0])
    i = int(np.argmax(hq >= goal))
    frac = (goal - hq[i - 1]) / (hq[i] - hq[i - 1])
    return float(hc[i - 1] + frac * (hc[i] - hc[i - 1]))


def calibrate(
    predicted: Array, scores: Array, costs: Array, target: float = 0.95, mode: Mode = "threshold"
) -> CurvePoint | None:
    """The cheapest knob whose mean quality reaches `target` x the best single model's mean quality.

    Run on held-out data; the returned point carries the knob to configure and what it achieved.
    """
    goal = target * float(scores.mean(axis=0).max())
    ok = [p for p in policy_curve(predicted, scores, costs, mode) if p.quality >= goal - 1e-12]
    return min(ok, key=lambda p: (p.cost, -p.quality)) if ok else None


@dataclass
class ManyReport:
    """The many-model figures for one router on one labelled set."""

    models: list[str]
    single: list[CurvePoint]
    curves: dict[Mode, list[CurvePoint]]
    hull_area: dict[Mode, float]
    random_hull_area: float
    cost_range: tuple[float, float]
    best_model: str
    quality_at_best_cost: dict[Mode, float]
    cost_for_95: dict[Mode, float]
    calibrated: dict[Mode, CurvePoint | None]
    oracle: CurvePoint
    extra: dict[str, Any] = field(default_factory=dict)


def many_report(
    predicted: Array, scores: Array, costs: Array, models: Sequence[str], target: float = 0.95
) -> ManyReport:
    """Curves for both policies, hull areas against random mixing, and the 95%-of-best operating points."""
    m = scores.shape[1]
    single = [outcome(np.full(len(scores), j, dtype=np.intp), scores, costs, float(j)) for j in range(m)]
    best = int(np.argmax([p.quality for p in single]))
    lo, hi = min(p.cost for p in single), max(p.cost for p in single)
    curves = {mode: policy_curve(predicted, scores, costs, mode) for mode in MODES}
    area: dict[Mode, float] = {}
    at_best: dict[Mode, float] = {}
    for95: dict[Mode, float] = {}
    calib: dict[Mode, CurvePoint | None] = {}
    for mode, pts in curves.items():
        c, q = [p.cost for p in pts], [p.quality for p in pts]
        area[mode] = hull_area(c, q, lo, hi)
        hc, hq = upper_hull(c, q)
        at_best[mode] = hull_value(hc, hq, single[best].cost)
        for95[mode] = cost_to_reach(c, q, target * single[best].quality)
        calib[mode] = calibrate(predicted, scores, costs, target, mode)
    oracle_choice = choose_batch(scores, costs, lam=0.0)
    return ManyReport(
        models=list(models),
        single=single,
        curves=curves,
        hull_area=area,
        random_hull_area=hull_area([p.cost for p in single], [p.quality for p in single], lo, hi),
        cost_range=(lo, hi),
        best_model=models[best],
        quality_at_best_cost=at_best,
        cost_for_95=for95,
        calibrated=calib,
        oracle=outcome(oracle_choice, scores, costs),
    )
