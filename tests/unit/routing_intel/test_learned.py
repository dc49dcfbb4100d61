"""The learned router: training recovers a planted rule; the artifact round-trips; the default loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelyard.routing import learned
from modelyard.routing.evaluation import choose_batch
from modelyard.routing.learned import (
    KnnHead,
    LogisticHead,
    Router,
    choose,
    load_router,
    text_features,
    train_router,
)

from .conftest import HashEmbedder

EASY = ["hello", "thanks", "weather", "movie", "recipe", "holiday", "garden", "music", "friend", "coffee"]
HARD = [
    "integral",
    "eigenvalue",
    "theorem",
    "topology",
    "lemma",
    "manifold",
    "derivative",
    "tensor",
    "proof",
    "homology",
]
MODELS = ["cheap", "strong"]


def planted(n: int, seed: int, noise: float = 0.1) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Half easy prompts (both models right), half hard (only the strong one right), labels 10% flipped."""
    rng = np.random.default_rng(seed)
    prompts, scores = [], []
    for i in range(n):
        hard = i % 2 == 1
        words = rng.choice(HARD if hard else EASY, size=5)
        prompts.append(" ".join(words))
        truth = [0.0 if hard else 1.0, 1.0]
        scores.append([1.0 - t if rng.random() < noise else t for t in truth])
    costs = np.tile([0.1, 1.0], (n, 1))
    return prompts, np.array(scores), costs


@pytest.fixture(scope="module")
def trained() -> Router:
    emb = HashEmbedder()
    prompts, scores, costs = planted(240, seed=0)
    result = train_router(prompts, emb.embed(prompts), scores, costs, MODELS, folds=3, l2_grid=(1.0,), k_grid=(15,))
    result.router.embedder = emb
    return result.router


def test_recovers_planted_rule(trained: Router) -> None:
    prompts, _, _ = planted(60, seed=99, noise=0.0)  # unseen prompts
    pred = trained.predict_batch(prompts)
    easy, hard = pred[0::2], pred[1::2]
    assert easy[:, 0].mean() > 0.75 and hard[:, 0].mean() < 0.25  # P(cheap right)
    assert pred[:, 1].mean() > 0.75  # the strong model is right everywhere
    costs = {"cheap": 0.1, "strong": 1.0}
    picks = [choose(trained.predict(p), costs, lam=0.3) for p in prompts]
    assert picks[0::2] == ["cheap"] * 30
    assert picks[1::2] == ["strong"] * 30


def test_calibrated_threshold_reaches_target(trained: Router) -> None:
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


def test_candidates_compared_and_card_filled(trained: Router) -> None:
    kinds = {c["kind"] for c in trained.card["candidates"]}
    assert kinds == {"logistic", "knn"}
    assert trained.card["train_prompts"] == 240
    assert all(np.isfinite(c["cv_score"]) for c in trained.card["candidates"])


@pytest.mark.parametrize("suffix", ["router.npz", "dir"])
def test_artifact_round_trip(trained: Router, tmp_path: Path, suffix: str) -> None:
    path = trained.save(tmp_path / suffix)
    assert path.name == "router.npz" and path.is_file()
    again = Router.load(tmp_path / suffix, embedder=trained.embedder)
    assert again.models == MODELS
    assert again.calibration == trained.calibration
    prompts, _, _ = planted(20, seed=5)
    np.testing.assert_allclose(again.predict_batch(prompts), trained.predict_batch(prompts), atol=2e-3)
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert "meta" in z.files


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(ValueError):
        Router.load(tmp_path / "x.npz")


def test_logistic_fits_soft_labels_and_masks() -> None:
    x = np.array([[-1.0], [1.0]] * 50, dtype=np.float32)
    labels = np.array([[0.2, np.nan], [0.8, 1.0]] * 50)
    head = LogisticHead.fit(x, labels, l2=1e-6)
    p = head(x[:2], x[:2])
    assert p[0, 0] == pytest.approx(0.2, abs=0.01) and p[1, 0] == pytest.approx(0.8, abs=0.01)
    assert p[1, 1] > 0.9  # trained only on the rows where it is labelled


def test_knn_shrinks_towards_prior_and_respects_label_groups() -> None:
    bank = np.eye(4, dtype=np.float32)
    labels = np.array([[1.0, np.nan], [1.0, np.nan], [np.nan, 0.0], [np.nan, 0.0]])
    head = KnnHead(bank, labels, k=1, alpha=1.0)
    p = head(np.zeros((1, 0), np.float32), bank[:1])
    # model 0: nearest labelled row is row 0 (sim 1, y 1) -> (1 + 1 * prior 1) / 2 = 1
    # model 1: nearest among rows 2-3 has sim 0 -> the prior (0)
    assert p[0].tolist() == pytest.approx([1.0, 0.0])


def test_text_features_notice_code_maths_and_choices() -> None:
    f = text_features(["def f(x):\n    return x", "Solve $x^2 = 4$", "Pick one:\nA. red\nB. blue", "hi"])
    names = learned.TEXT_FEATURES
    assert f[0, names.index("code")] == 1 and f[3, names.index("code")] == 0
    assert f[1, names.index("math")] == 1 and f[3, names.index("math")] == 0
    assert f[2, names.index("choices")] == 1 and f[3, names.index("choices")] == 0
    assert f.shape == (4, len(names))


def test_quality_predictor_protocol(trained: Router) -> None:
    assert isinstance(trained, learned.QualityPredictor)
    out = trained.predict("hello coffee friend")
    assert set(out) == set(MODELS) and all(0.0 <= v <= 1.0 for v in out.values())


def test_default_router_ships_and_predicts(minilm) -> None:  # type: ignore[no-untyped-def]
    router = load_router(embedder=minilm)
    assert learned.DEFAULT_ROUTER.stat().st_size <= 5 * 1024 * 1024
    assert len(router.models) >= 2 and router.card.get("trained")
    pred = router.predict_batch(["What is 2 + 2?", "Prove the Riemann hypothesis."])
    assert pred.shape == (2, len(router.models))
    assert ((pred >= 0) & (pred <= 1)).all()
