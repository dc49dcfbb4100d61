"""Calibration that transfers: fit the router's knob so that its EXPECTED quality on new prompts meets the target.

The old rule took the cheapest knob whose in-sample (cross-fitted) quality reached `target` x the best
model. On a few hundred prompts the quality-vs-knob curve moves in noisy jumps, and "the first knob that
crosses the line" picks a point where the noise happened to help: on new prompts it falls short, or (one
step later on a flat stretch) overshoots at twice the cost. Here:

1. every knob of a fine grid is applied to the cross-fitted predictions, giving per-prompt quality and cost;
2. the quality ratio q_router / q_best is averaged over bootstrap resamples of the prompts (paired: the
   router and the best model on the same resample) - the expected ratio on a fresh sample, with its band;
3. that expected ratio is made monotone in the knob's cost (isotonic regression), which removes the
   jumps, and the cheapest knob whose smoothed ratio reaches the target is kept.

`knob_report` is the other half: what a stored knob achieves on labelled evaluation data, with a paired
bootstrap band, next to the cheapest cost any knob of the same family reaches the target with on that data.
Pure numpy; used by training and `router eval`, never by the gateway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.lab import evaluation as ev

Array = NDArray[np.float64]
#: Bootstrap resamples for fitting (cheap) and for the reported band (finer percentiles).
FIT_DRAWS = 200
REPORT_DRAWS = 2000
#: The reported band: 5th to 95th percentile of the bootstrap ratio (a 90% band).
BAND = (5.0, 95.0)
#: Pass criteria of issue 19: band half-width, and cost relative to the cheapest knob reaching the target.
MAX_HALF_WIDTH = 0.02
MAX_COST_FACTOR = 1.25


def fine_knobs(mode: ev.Mode) -> Array:
    """A finer grid than the curve's sweep, so the chosen knob does not jump between coarse steps."""
    if mode == "threshold":
        return np.linspace(0.0, 1.0, 401)
    return np.concatenate([[0.0], np.geomspace(1e-3, 100.0, 400)])


def knob_outcomes(pred: Array, scores: Array, costs: Array, mode: ev.Mode, knobs: Array) -> tuple[Array, Array]:
    """Per-prompt quality and cost, (knobs, prompts) each, of every knob."""
    rows = np.arange(len(pred))
    q = np.empty((len(knobs), len(pred)))
    c = np.empty_like(q)
    for i, k in enumerate(knobs):
        kw: dict[str, float] = {"threshold": float(k)} if mode == "threshold" else {"lam": float(k)}
        choice = ev.choose_batch(pred, costs, **kw)
        q[i], c[i] = scores[rows, choice], costs[rows, choice]
    return q, c


def bootstrap_weights(n: int, draws: int, seed: int) -> Array:
    """(draws, n) resampling weights (multinomial counts / n): each row is one bootstrap sample's mean."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=draws)
    out: Array = counts / float(n)
    return out


def isotonic(y: Array, weight: Array | None = None) -> Array:
    """Pool-adjacent-violators: the non-decreasing sequence closest to `y` in weighted least squares."""
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    level: list[float] = []
    mass: list[float] = []
    size: list[int] = []
    for v, wt in zip(np.asarray(y, np.float64), w, strict=True):
        level.append(float(v))
        mass.append(float(wt))
        size.append(1)
        while len(level) > 1 and level[-2] > level[-1]:
            m = mass[-2] + mass[-1]
            level[-2] = (level[-2] * mass[-2] + level[-1] * mass[-1]) / m
            mass[-2], size[-2] = m, size[-2] + size[-1]
            level.pop(), mass.pop(), size.pop()
    return np.repeat(level, size)


@dataclass
class KnobFit:
    """A calibrated knob and what it is expected to deliver on new prompts like the calibration set."""

    mode: ev.Mode
    knob: float
    target: float
    expected_ratio: float
    band: tuple[float, float]
    quality: float
    best_quality: float
    cost: float
    best_cost: float


def fit_knob(
    pred: Array,
    scores: Array,
    costs: Array,
    target: float,
    mode: ev.Mode,
    *,
    draws: int = FIT_DRAWS,
    seed: int = 0,
) -> KnobFit | None:
    """The cheapest knob whose bootstrap-expected, cost-monotone quality ratio reaches `target`.

    `pred` must be out-of-sample (cross-fitted) predictions. None when no knob reaches the target.
    """
    knobs = fine_knobs(mode)
    q, c = knob_outcomes(pred, scores, costs, mode, knobs)
    w = bootstrap_weights(len(pred), draws, seed)
    best = int(np.argmax(scores.mean(0)))
    ratio = (w @ q.T) / np.maximum(w @ scores[:, best], 1e-12)[:, None]  # (draws, knobs), paired
    mean_cost = c.mean(1)
    order = np.lexsort((-ratio.mean(0), mean_cost))  # by cost, then the better knob first
    smooth = np.empty(len(knobs))
    smooth[order] = isotonic(ratio.mean(0)[order])
    ok = np.flatnonzero(smooth >= target - 1e-12)
    if not len(ok):
        return None
    i = int(ok[np.lexsort((-smooth[ok], mean_cost[ok]))[0]])
    lo, hi = np.percentile(ratio[:, i], BAND)
    return KnobFit(
        mode=mode,
        knob=float(knobs[i]),
        target=target,
        expected_ratio=float(smooth[i]),
        band=(float(lo), float(hi)),
        quality=float(q[i].mean()),
        best_quality=float(scores[:, best].mean()),
        cost=float(mean_cost[i]),
        best_cost=float(costs[:, best].mean()),
    )


def in_sample_knob(pred: Array, scores: Array, costs: Array, target: float, mode: ev.Mode) -> float | None:
    """The old rule, kept to compare against: the cheapest grid knob whose in-sample quality reaches target."""
    point = ev.calibrate(pred, scores, costs, target, mode)
    return None if point is None else point.knob


@dataclass
class KnobReport:
    """What one knob achieves on labelled evaluation data, against the issue's pass criteria."""

    mode: str
    knob: float
    target: float
    prompts: int
    quality_ratio: float
    band: tuple[float, float]
    half_width: float
    cost_ratio: float
    cheapest_cost_ratio: float | None
    cost_vs_cheapest: float | None
    best_is_cheapest: bool
    target_in_band: bool
    band_ok: bool
    cost_ok: bool
    passes: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def knob_report(
    pred: Array,
    scores: Array,
    costs: Array,
    mode: ev.Mode,
    knob: float,
    target: float,
    *,
    draws: int = REPORT_DRAWS,
    seed: int = 0,
) -> KnobReport:
    """The knob's quality ratio with a 90% paired-bootstrap band, its cost, and the cheapest cost to target.

    Passes when the target lies inside the band and the cost is within 1.25x of the cheapest knob (same
    policy family, fine grid) that reaches the target on this data; where the best model is also the
    cheapest, the cost criterion alone applies. `band_ok` (half-width <= 2 points) is reported, not
    required: a small split cannot give it.
    """
    q, c = knob_outcomes(pred, scores, costs, mode, np.array([knob]))
    w = bootstrap_weights(len(pred), draws, seed)
    best = int(np.argmax(scores.mean(0)))
    q_best, c_best = float(scores[:, best].mean()), float(costs[:, best].mean())
    ratio = (w @ q[0]) / np.maximum(w @ scores[:, best], 1e-12)
    lo, hi = (float(v) for v in np.percentile(ratio, BAND))
    achieved, cost = float(q[0].mean()) / q_best, float(c[0].mean())
    qs, cs = knob_outcomes(pred, scores, costs, mode, fine_knobs(mode))
    reach = cs.mean(1)[qs.mean(1) >= target * q_best - 1e-12]
    cheapest = float(reach.min()) if len(reach) else None
    best_is_cheapest = bool(c_best <= costs.mean(0).min() + 1e-15)
    vs = None if cheapest is None else cost / max(cheapest, 1e-15)
    cost_ok = vs is not None and vs <= MAX_COST_FACTOR + 1e-9
    in_band = lo - 1e-12 <= target <= hi + 1e-12
    return KnobReport(
        mode=mode,
        knob=float(knob),
        target=target,
        prompts=len(pred),
        quality_ratio=achieved,
        band=(lo, hi),
        half_width=(hi - lo) / 2,
        cost_ratio=cost / c_best if c_best > 0 else float("nan"),
        cheapest_cost_ratio=None if cheapest is None or c_best <= 0 else cheapest / c_best,
        cost_vs_cheapest=vs,
        best_is_cheapest=best_is_cheapest,
        target_in_band=in_band,
        band_ok=(hi - lo) / 2 <= MAX_HALF_WIDTH,
        cost_ok=cost_ok,
        passes=cost_ok if best_is_cheapest else (in_band and cost_ok),
    )
