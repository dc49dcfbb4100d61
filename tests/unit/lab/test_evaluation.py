"""Router metrics against hand-worked examples (RouteLLM's APGR/CPT, RouterBench's hull area)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.lab import evaluation as ev
from modelyard.lab.evaluation import choose

# Four prompts: the strong model wins prompts 0 and 2, both models tie on 1 and 3.
STRONG = np.array([1.0, 1.0, 1.0, 0.0])
WEAK = np.array([0.0, 1.0, 0.0, 0.0])
GOOD_PREF = np.array([0.9, 0.1, 0.8, 0.2])  # ranks the two gains first


def test_exact_curve_by_hand() -> None:
    share, quality = ev.strong_share_curve(GOOD_PREF, STRONG, WEAK, bins=None)
    order = np.argsort(share)
    assert share[order].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert quality[order].tolist() == [0.25, 0.5, 0.75, 0.75, 0.75]


def test_apgr_by_hand() -> None:
    # AUC = .09375 + .15625 + .1875 + .1875 = .625; APGR = (.625 - .25) / (.75 - .25) = .75
    share, quality = ev.strong_share_curve(GOOD_PREF, STRONG, WEAK, bins=None)
    assert ev.apgr(share, quality, 0.25, 0.75) == pytest.approx(0.75)


def test_routellm_quantile_curve_by_hand() -> None:
    # bins=2: thresholds at the 0, .5, 1 quantiles = .1, .5, .9 -> shares 1, .5, 0 (last uses >).
    share, quality = ev.strong_share_curve(GOOD_PREF, STRONG, WEAK, bins=2)
    assert share.tolist() == [1.0, 0.5, 0.0]
    assert quality.tolist() == [0.75, 0.75, 0.25]
    assert ev.apgr(share, quality, 0.25, 0.75) == pytest.approx(0.75)


def test_cpt_interpolates_by_hand() -> None:
    share, quality = ev.strong_share_curve(GOOD_PREF, STRONG, WEAK, bins=None)
    assert ev.cpt(share, quality, 0.25, 0.75, 0.5) == pytest.approx(0.25)  # goal .5 reached at 25%
    assert ev.cpt(share, quality, 0.25, 0.75, 0.8) == pytest.approx(0.4)  # goal .65: 60% of the .25-.5 step


def test_pgr() -> None:
    assert ev.pgr(0.5, 0.25, 0.75) == pytest.approx(0.5)


def test_random_router_apgr_is_about_half() -> None:
    rng = np.random.default_rng(1)
    strong = (rng.random(20000) < 0.8).astype(float)
    weak = (rng.random(20000) < 0.6).astype(float)
    rep = ev.pair_report(rng.random(20000), strong, weak)
    assert rep.apgr == pytest.approx(0.5, abs=0.03)
    assert rep.cpt50 == pytest.approx(0.5, abs=0.05)


def test_perfect_preference_beats_reversed() -> None:
    good = ev.pair_report(GOOD_PREF, STRONG, WEAK, bins=4)
    bad = ev.pair_report(-GOOD_PREF, STRONG, WEAK, bins=4)
    assert good.apgr > 0.7 > 0.5 > bad.apgr


# Hull: (1, .5) -> (3, .9) is the upper hull; (2, .6) lies under it; (4, .8) is past the peak (flat .9).
COSTS = [1.0, 2.0, 3.0, 4.0]
QUALS = [0.5, 0.6, 0.9, 0.8]


def test_upper_hull_by_hand() -> None:
    hc, hq = ev.upper_hull(COSTS, QUALS)
    assert hc.tolist() == [1.0, 3.0]
    assert hq.tolist() == [0.5, 0.9]


def test_hull_area_by_hand() -> None:
    # integral 1..3 of the line .5 -> .9 = 1.4, then flat .9 over 3..4; mean height 2.3 / 3
    assert ev.hull_area(COSTS, QUALS) == pytest.approx(2.3 / 3)
    assert ev.hull_area(COSTS, QUALS, 3.0, 4.0) == pytest.approx(0.9)


def test_cost_to_reach_by_hand() -> None:
    assert ev.cost_to_reach(COSTS, QUALS, 0.8) == pytest.approx(2.5)
    assert ev.cost_to_reach(COSTS, QUALS, 0.4) == pytest.approx(1.0)
    assert np.isnan(ev.cost_to_reach(COSTS, QUALS, 0.95))


def test_outcome_totals_are_the_recorded_costs() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    costs = np.array([[0.1, 2.0], [0.2, 3.0], [0.3, 4.0]])
    choice = np.array([0, 1, 1])
    out = ev.outcome(choice, scores, costs)
    assert out.cost * 3 == pytest.approx(0.1 + 3.0 + 4.0)
    assert out.quality == pytest.approx(1.0)
    assert out.shares == pytest.approx([1 / 3, 2 / 3])


def test_calibrate_finds_cheapest_knob_reaching_target() -> None:
    # cheap is right on prompts 0-1, strong on all; a perfect predictor needs strong only for 2-3.
    scores = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    costs = np.tile([1.0, 10.0], (4, 1))
    point = ev.calibrate(scores.copy(), scores, costs, target=1.0, mode="threshold")
    assert point is not None
    assert point.quality == pytest.approx(1.0)
    assert point.cost == pytest.approx((1 + 1 + 10 + 10) / 4)
    assert ev.calibrate(scores * 0.0, scores, costs, target=2.0, mode="lambda") is None


def test_many_report_single_models_and_oracle() -> None:
    scores = np.array([[1.0, 1.0], [0.0, 1.0]])
    costs = np.tile([1.0, 3.0], (2, 1))
    rep = ev.many_report(scores, scores, costs, ["cheap", "strong"])
    assert rep.best_model == "strong"
    assert [p.quality for p in rep.single] == [0.5, 1.0]
    assert rep.oracle.quality == 1.0 and rep.oracle.cost == pytest.approx(2.0)
    # a perfect predictor reaches the strong model's quality at 2/3 of its cost
    assert rep.cost_for_95["lambda"] <= 2.0 + 1e-9


def test_choose_by_hand() -> None:
    pred = {"cheap": 0.6, "mid": 0.8, "strong": 0.9}
    cost = {"cheap": 1.0, "mid": 5.0, "strong": 20.0}
    assert choose(pred, cost, threshold=0.7) == "mid"
    assert choose(pred, cost, threshold=0.5) == "cheap"
    assert choose(pred, cost, threshold=0.95) == "strong"  # nobody clears it: most likely to succeed
    assert choose(pred, cost) == "strong"
    assert choose(pred, cost, lam=0.5) == "mid"  # .575, .675, .4
    assert choose(pred, cost, lam=10.0) == "cheap"
    assert choose({"a": 0.5, "b": 0.5}, {"a": 2.0, "b": 1.0}) == "b"  # tie: the cheaper
    assert choose({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 1.0}) == "a"  # full tie: the first
    with pytest.raises(ValueError):
        choose({"a": 0.5}, {"b": 1.0})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.data(),
)
def test_choose_matches_vectorised_rule(models: int, rows: int, data: st.DataObject) -> None:
    probs = st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 2))
    prices = st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 30.0])

    def matrix(values: st.SearchStrategy[float]) -> np.ndarray:
        row = st.lists(values, min_size=models, max_size=models)
        return np.array(data.draw(st.lists(row, min_size=rows, max_size=rows)))

    pred, cost = matrix(probs), matrix(prices)
    threshold = data.draw(st.one_of(st.none(), probs))
    lam = data.draw(st.one_of(st.none(), st.sampled_from([0.0, 0.2, 1.0, 5.0])))
    names = [f"m{j}" for j in range(models)]
    batch = ev.choose_batch(pred, cost, threshold=threshold, lam=lam)
    for i in range(rows):
        one = choose(dict(zip(names, pred[i], strict=True)), dict(zip(names, cost[i], strict=True)), threshold, lam)
        assert one == names[batch[i]]


def test_no_gap_gives_nan_not_an_error() -> None:
    same = np.array([1.0, 0.0, 1.0])
    rep = ev.pair_report(np.array([0.1, 0.2, 0.3]), same, same)
    assert np.isnan(rep.apgr) and np.isnan(ev.pgr(0.5, 0.5, 0.5))
