"""A model added after training: the artifact keeps it, old artifacts are unchanged, the fits do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.lab import cold_start as cs
from modelyard.routing.learned import (
    DEFAULT_QUALITY_MODEL,
    TEXT_FEATURES,
    AddedModel,
    Blend,
    LogisticHead,
    QualityModel,
    logit,
    sigmoid,
)

DIM = 384


def tiny_router(models: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> QualityModel:
    rng = np.random.default_rng(seed)
    d = DIM + len(TEXT_FEATURES)
    head = LogisticHead(rng.normal(0, 0.3, (d, len(models))), rng.normal(0, 0.5, len(models)))
    mean, std = np.zeros(len(TEXT_FEATURES), np.float32), np.ones(len(TEXT_FEATURES), np.float32)
    return QualityModel(list(models), Blend([head]), mean, std, max_tokens=32)


def vectors(n: int, seed: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def prompts(n: int) -> list[str]:
    return [f"prompt number {i}" for i in range(n)]


def test_added_model_round_trips_and_leaves_trained_columns_alone(tmp_path: Path) -> None:
    r = tiny_router()
    extra = AddedModel("new", (0.5, -0.25, 1.0), 0.3, {"method": "rows"})
    r2 = r.with_added(extra)
    emb, ps = vectors(20), prompts(20)
    before, after = r.predict_embedded(emb, ps), r2.predict_embedded(emb, ps)
    assert r2.models == ["a", "b", "c", "new"] and r2.trained_models == ["a", "b", "c"]
    np.testing.assert_array_equal(after[:, :3], before)
    np.testing.assert_allclose(after[:, 3], sigmoid(logit(before) @ np.array([0.5, -0.25, 1.0]) + 0.3))
    loaded = QualityModel.load(r2.save(tmp_path / "r2.npz"))
    assert loaded.models == r2.models and loaded.added == [extra]
    np.testing.assert_allclose(loaded.predict_embedded(emb, ps), after, rtol=1e-6)
    assert r.models == ["a", "b", "c"] and not r.added  # with_added copied


def test_artifact_without_added_models_keeps_its_format(tmp_path: Path) -> None:
    path = tiny_router().save(tmp_path / "r.npz")
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
    assert "added" not in meta and meta["models"] == ["a", "b", "c"]


def test_shipped_default_router_loads_and_predicts_as_its_head_says() -> None:
    r = QualityModel.load(DEFAULT_QUALITY_MODEL)
    assert not r.added and r.trained_models == r.models and len(r.models) >= 9
    emb, ps = vectors(5), prompts(5)
    expected = np.clip(r.head(r.features(emb, ps), emb), 0.0, 1.0)
    np.testing.assert_array_equal(r.predict_embedded(emb, ps), expected)


def test_with_added_refuses_a_known_name_and_a_wrong_width() -> None:
    r = tiny_router()
    with pytest.raises(ValueError, match="already"):
        r.with_added(AddedModel("b", (1.0, 0.0, 0.0), 0.0))
    with pytest.raises(ValueError, match="coefficients"):
        r.with_added(AddedModel("new", (1.0, 0.0), 0.0))


def test_fit_stacked_without_rows_is_the_mean_model() -> None:
    coef, bias = cs.fit_stacked(np.zeros((0, 4)), np.zeros(0))
    np.testing.assert_allclose(coef, 0.25)
    assert bias == 0.0


def test_fit_stacked_recovers_a_relation_given_many_rows_and_stays_near_the_prior_given_few() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 3))
    truth = np.array([2.0, 0.0, -1.0])
    y = (rng.random(4000) < sigmoid(z @ truth - 0.5)).astype(float)
    coef, bias = cs.fit_stacked(z, y, prior_rows=1.0)
    np.testing.assert_allclose(coef, truth, atol=0.15)
    assert bias == pytest.approx(-0.5, abs=0.15)
    few, _ = cs.fit_stacked(z[:5], y[:5], prior_rows=30.0)
    assert np.abs(few - 1 / 3).max() < 0.3  # five rows barely move it off the mean model


def test_rows_from_a_copy_of_a_trained_model_weight_that_model_and_beat_the_prior() -> None:
    r = tiny_router(("a", "b", "c", "d", "e"))
    emb, ps = vectors(400, seed=2), prompts(400)
    p = r.predict_embedded(emb, ps)
    y = (np.random.default_rng(3).random(400) < p[:, 2]).astype(float)  # the new model behaves like "c"
    added = cs.fit_from_rows(r, "c2", emb[:50], ps[:50], y[:50])
    assert int(np.argmax(added.coef)) == 2 and added.source["rows"] == 50
    pred = r.with_added(added).predict_embedded(emb[50:], ps[50:])[:, -1]
    prior = sigmoid(logit(p[50:]).mean(1))
    assert np.mean((pred - y[50:]) ** 2) < np.mean((prior - y[50:]) ** 2)
    with pytest.raises(ValueError, match="no labelled rows"):
        cs.fit_from_rows(r, "x", emb[:0], [], np.zeros(0))


RESULTS = {
    "new@sim": {"classification": {"pass_rate": 0.9, "cases": 50}, "extraction": {"pass_rate": 0.5, "cases": 50}},
    "a": {"classification": {"pass_rate": 0.95, "cases": 50}, "extraction": {"pass_rate": 0.6, "cases": 50}},
    "b": {"classification": {"pass_rate": 0.5, "cases": 50}, "extraction": {"pass_rate": 0.1, "cases": 50}},
    "c": {"summary": {"pass_rate": 0.9, "cases": 10}},
}


def test_choose_like_takes_the_nearest_profile_and_the_logit_gap() -> None:
    prof = cs.profiles(RESULTS)
    known = {m: prof[m] for m in ("a", "b", "c")}
    got = cs.choose_like(prof["new@sim"], known)
    assert got.model == "a" and got.tasks == ("classification", "extraction")
    expected = np.log(0.7 / 0.3) - np.log(0.775 / 0.225)
    assert got.shift == pytest.approx(expected)
    forced = cs.choose_like(prof["new@sim"], known, like="b")
    assert forced.model == "b" and forced.shift > 0  # the new one passes more than b: shifted up
    with pytest.raises(ValueError, match="no task"):
        cs.choose_like(prof["new@sim"], {"c": prof["c"]})
    with pytest.raises(ValueError, match="no results"):
        cs.choose_like(prof["new@sim"], known, like="zzz")


def test_cells_that_were_not_run_do_not_count() -> None:
    prof = cs.profiles({"d": {"t": {"pass_rate": 0.0, "cases": 0}, "u": {"pass_rate": 0.5, "cases": 4}}})
    assert prof["d"].tasks == {"u": (0.5, 4)}


def test_from_acceptance_is_the_like_model_shifted() -> None:
    r = tiny_router()
    choice = cs.LikeChoice("b", "b", -0.7, 0.05, ("t",))
    added = cs.from_acceptance(r, "new", choice)
    emb, ps = vectors(30), prompts(30)
    p = r.with_added(added).predict_embedded(emb, ps)
    np.testing.assert_allclose(p[:, 3], sigmoid(logit(p[:, 1]) - 0.7))
    assert added.source["like"] == "b"
