"""Calibration that transfers: knobs fitted on one sample judged on fresh samples where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.lab import calibration as cal
from modelyard.lab import evaluation as ev

COSTS = np.array([0.1, 0.3, 1.0])


def world(n: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three models whose success probability falls with a prompt's difficulty, the cheap one fastest."""
    rng = np.random.default_rng(seed)
    d = rng.random(n)
    p = np.clip(np.stack([0.9 - 0.8 * d, 0.95 - 0.6 * d, 0.97 - 0.35 * d], 1), 0.0, 1.0)
    pred = np.clip(p + rng.normal(0.0, noise, p.shape), 0.0, 1.0)
    return pred, (rng.random(p.shape) < p).astype(float), np.tile(COSTS, (n, 1))


def true_ratio(mode: ev.Mode, knob: float, seed: int) -> float:
    """The knob's quality ratio on a large fresh sample: its expectation, up to +-0.3 points."""
    pred, scores, costs = world(20_000, 10_000 + seed)
    q, _ = cal.knob_outcomes(pred, scores, costs, mode, np.array([knob]))
    return float(q[0].mean() / scores[:, 2].mean())


@pytest.mark.parametrize("mode", ["lambda", "threshold"])
def test_knob_fitted_on_a_sample_meets_the_target_within_its_band(mode: ev.Mode) -> None:
    hits, fits = 0, 0
    for seed in range(12):
        pred, scores, costs = world(400, seed)
        fit = cal.fit_knob(pred, scores, costs, 0.95, mode)
        if fit is None:
            continue
        fits += 1
        lo, hi = fit.band
        assert lo <= fit.expected_ratio <= hi and fit.cost < fit.best_cost
        hits += lo <= true_ratio(mode, fit.knob, seed) <= hi
    assert fits >= 10 and hits / fits >= 0.75  # a 90% band, over a dozen seeds


def test_band_narrows_with_more_prompts() -> None:
    widths = []
    for n in (200, 800, 3200):
        pred, scores, costs = world(n, 3)
        fit = cal.fit_knob(pred, scores, costs, 0.95, "lambda")
        assert fit is not None
        widths.append(fit.band[1] - fit.band[0])
        rep = cal.knob_report(pred, scores, costs, "lambda", fit.knob, 0.95, draws=500)
        assert rep.half_width == pytest.approx((rep.band[1] - rep.band[0]) / 2)
    assert widths[0] > 1.5 * widths[1] > 1.5 * 1.5 * widths[2]  # ~ 1/sqrt(n): halves per 4x prompts


def test_isotonic_is_monotone_and_keeps_sorted_input() -> None:
    assert cal.isotonic(np.array([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert cal.isotonic(np.array([0.1, 0.2, 0.3])).tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_report_fields_and_verdicts() -> None:
    pred, scores, costs = world(2000, 5)
    fit = cal.fit_knob(pred, scores, costs, 0.95, "lambda")
    assert fit is not None
    rep = cal.knob_report(pred, scores, costs, "lambda", fit.knob, 0.95)
    assert rep.target_in_band and rep.passes and not rep.best_is_cheapest
    assert rep.cost_vs_cheapest is not None and rep.cost_vs_cheapest <= 1.25
    assert rep.cheapest_cost_ratio is not None and rep.cheapest_cost_ratio <= rep.cost_ratio + 1e-12
    d = rep.as_dict()
    assert {"quality_ratio", "band", "half_width", "cost_ratio", "cost_vs_cheapest", "passes"} <= set(d)
    # Lambda 0 routes to the predicted-best model everywhere: well above the target, so it fails the band.
    dear = cal.knob_report(pred, scores, costs, "lambda", 0.0, 0.95)
    assert dear.band[0] > 0.95 and not dear.target_in_band and not dear.passes
    # A knob that sends everything to the cheap model misses the target: the target is outside its band.
    cheap = cal.knob_report(pred, scores, costs, "lambda", 100.0, 0.95)
    assert cheap.band[1] < 0.95 and not cheap.target_in_band and not cheap.passes


def test_best_model_also_cheapest_judged_on_cost_alone() -> None:
    pred, scores, _ = world(500, 2)
    costs = np.tile(np.array([1.0, 0.5, 0.1]), (500, 1))  # the strong model is now the cheapest
    rep = cal.knob_report(pred, scores, costs, "lambda", 100.0, 0.95)
    assert rep.best_is_cheapest and rep.passes == rep.cost_ok and rep.passes
