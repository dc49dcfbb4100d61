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


def test_stacked_logistic_fits_equal_separate_fits() -> None:
    """The speed lever (every fold and L2 in one L-BFGS problem) finds the same heads as one fit at a time."""
    from modelyard.lab.training import fit_logistic_many

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 6)).astype(np.float32) + 2.0  # off-centre features: the intercept matters
    p = 1 / (1 + np.exp(-(x[:, :2] @ np.array([[1.5, -1.0], [-0.5, 2.0]]) - 3.0)))
    labels = (rng.random(p.shape) < p).astype(float)
    labels[::7, 1] = np.nan
    rows = [np.arange(300) % 3 != f for f in range(3)] + [np.ones(300, bool)]
    l2s = [1.0, 10.0, 0.1, 3.0]
    stacked = fit_logistic_many(x, labels, rows, l2s)
    for r, l2, head in zip(rows, l2s, stacked, strict=True):
        alone = fit_logistic(x[r], labels[r], l2=l2)
        assert np.abs(head(x, x) - alone(x, x)).max() < 2e-3


def test_knn_all_k_at_once_equals_one_head_per_k() -> None:
    """One similarity matrix per fold for every k gives KnnHead's own out-of-fold predictions."""
    from modelyard.lab.training import _folds, knn_oof_many
    from modelyard.routing.learned import KnnHead

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.random((200, 3))
    labels[:50, 2] = np.nan  # two label groups
    fold = _folds(200, 4, 0)
    fast = knn_oof_many(emb, labels, fold, [5, 20])
    for k, got in zip([5, 20], fast, strict=True):
        slow = np.zeros_like(labels)
        for f in range(4):
            tr, te = fold != f, fold == f
            slow[te] = KnnHead(emb[tr], labels[tr], k=k)(emb[te], emb[te])
        assert np.abs(got - slow).max() < 1e-5


def test_lbfgs_matches_scipy_on_the_plain_logistic_loss() -> None:
    """The hand-written L-BFGS behind the stacked fit reaches scipy L-BFGS-B's optimum."""
    from scipy.optimize import minimize

    from modelyard.lab.training import lbfgs
    from modelyard.routing.learned import sigmoid

    rng = np.random.default_rng(8)
    x = rng.normal(size=(400, 5)) * np.array([1.0, 10.0, 0.1, 3.0, 1.0])  # badly scaled on purpose
    y = (rng.random(400) < sigmoid(x @ np.array([1.0, 0.1, 5.0, -0.3, 0.0]) + 0.5)).astype(float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:5] + theta[5]
        err = (sigmoid(z) - y) / len(y)
        value = float((np.logaddexp(0.0, z) - y * z).mean() + 0.005 * theta[:5] @ theta[:5])
        return value, np.concatenate([x.T @ err + 0.01 * theta[:5], [err.sum()]])

    ours = lbfgs(loss, np.zeros(6), gtol=1e-8, ftol=1e-14)
    ref = minimize(loss, np.zeros(6), jac=True, method="L-BFGS-B", options={"gtol": 1e-8, "ftol": 1e-14}).x
    assert loss(ours)[0] == pytest.approx(loss(ref)[0], abs=1e-9)
    assert np.abs(ours - ref).max() < 1e-3
