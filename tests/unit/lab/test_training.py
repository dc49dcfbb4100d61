"""Training the quality model: it recovers a planted rule, calibrates its knobs, compares its heads."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.lab.evaluation import choose, choose_batch
from modelyard.lab.training import fit_logistic
from modelyard.routing.learned import QualityModel
from tests.unit.routing_intel.planted import MODELS, planted, train_planted


@pytest.fixture(scope="module")
def trained() -> QualityModel:
    return train_planted()


def test_recovers_planted_rule(trained: QualityModel) -> None:
    prompts, _, _ = planted(60, seed=99, noise=0.0)  # unseen prompts
    pred = trained.predict_batch(prompts)
    easy, hard = pred[0::2], pred[1::2]
    assert easy[:, 0].mean() > 0.75 and hard[:, 0].mean() < 0.25  # P(cheap right)
    assert pred[:, 1].mean() > 0.75  # the strong model is right everywhere
    costs = {"cheap": 0.1, "strong": 1.0}
    picks = [choose(trained.predict(p), costs, lam=0.3) for p in prompts]
    assert picks[0::2] == ["cheap"] * 30
    assert picks[1::2] == ["strong"] * 30


def test_calibrated_threshold_reaches_target(trained: QualityModel) -> None:
    point = trained.operating_point(MODELS)
    assert point is not None and point["target"] == 0.95
    prompts, scores, costs = planted(200, seed=7, noise=0.0)
    pred = trained.predict_batch(prompts)
    for cal in trained.calibration:
        kw = {"threshold": cal["knob"]} if cal["mode"] == "threshold" else {"lam": cal["knob"]}
        choice = choose_batch(pred, costs, **kw)
        quality = scores[np.arange(len(choice)), choice].mean()
        assert quality >= 0.95 * scores.mean(0).max() - 0.02
        assert costs[np.arange(len(choice)), choice].mean() < 0.8  # well below always-strong (1.0)


def test_candidates_compared_and_card_filled(trained: QualityModel) -> None:
    kinds = {c["kind"] for c in trained.card["candidates"]}
    assert kinds == {"logistic", "knn"}
    assert trained.card["train_prompts"] == 240
    assert all(np.isfinite(c["cv_score"]) for c in trained.card["candidates"])


def test_logistic_fits_soft_labels_and_masks() -> None:
    x = np.array([[-1.0], [1.0]] * 50, dtype=np.float32)
    labels = np.array([[0.2, np.nan], [0.8, 1.0]] * 50)
    head = fit_logistic(x, labels, l2=1e-6)
    p = head(x[:2], x[:2])
    assert p[0, 0] == pytest.approx(0.2, abs=0.01) and p[1, 0] == pytest.approx(0.8, abs=0.01)
    assert p[1, 1] > 0.9  # trained only on the rows where it is labelled
