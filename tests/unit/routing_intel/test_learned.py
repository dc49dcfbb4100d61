"""The learned quality model at request time: the artifact round-trips, heads predict, the default loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelyard.routing import learned
from modelyard.routing.learned import KnnHead, QualityModel, load_quality_model, text_features

from .planted import MODELS, planted, train_planted


@pytest.fixture(scope="module")
def trained() -> QualityModel:
    return train_planted()


@pytest.mark.parametrize("suffix", ["router.npz", "dir"])
def test_artifact_round_trip(trained: QualityModel, tmp_path: Path, suffix: str) -> None:
    path = trained.save(tmp_path / suffix)
    assert path.name == "router.npz" and path.is_file()
    again = QualityModel.load(tmp_path / suffix, embedder=trained.embedder)
    assert again.models == MODELS
    assert again.calibration == trained.calibration
    prompts, _, _ = planted(20, seed=5)
    np.testing.assert_allclose(again.predict_batch(prompts), trained.predict_batch(prompts), atol=2e-3)
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert "meta" in z.files


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(ValueError):
        QualityModel.load(tmp_path / "x.npz")


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


def test_quality_predictor_protocol(trained: QualityModel) -> None:
    assert isinstance(trained, learned.QualityPredictor)
    out = trained.predict("hello coffee friend")
    assert set(out) == set(MODELS) and all(0.0 <= v <= 1.0 for v in out.values())


def test_default_model_ships_and_predicts(minilm) -> None:  # type: ignore[no-untyped-def]
    router = load_quality_model(embedder=minilm)
    assert learned.DEFAULT_QUALITY_MODEL.stat().st_size <= 5 * 1024 * 1024
    assert len(router.models) >= 2 and router.card.get("trained")
    pred = router.predict_batch(["What is 2 + 2?", "Prove the Riemann hypothesis."])
    assert pred.shape == (2, len(router.models))
    assert ((pred >= 0) & (pred <= 1)).all()
