"""Training the learned quality model: cross-fitted head choice, calibration of the operating points.

`train_quality_model` fits every candidate head (logistic regressions over an L2 grid, kNN over a k grid)
with k-fold cross-fitting, keeps the one with the best out-of-fold routing quality (or the blend of the
best of each kind when that scores higher), calibrates the threshold and lambda that reach a target share
of the strongest model's quality on the same out-of-fold predictions, and refits on all rows. The result
is a `routing.learned.QualityModel`, which the gateway loads from its `.npz`; this module (and scipy) is
never needed at request time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.lab import evaluation as ev
from modelyard.routing.embeddings import MAX_TOKENS
from modelyard.routing.learned import (
    Array,
    Blend,
    Floats,
    HeadKind,
    KnnHead,
    LogisticHead,
    Part,
    QualityModel,
    label_groups,
    sigmoid,
    text_features,
)


def fit_logistic(x: Floats, labels: Array, l2: float = 1.0) -> LogisticHead:
    """Minimise, per model over its labelled rows, mean soft-label cross-entropy + l2/(2n) |w|^2.

    The models' losses are independent; they are solved as one L-BFGS problem so each step is a
    single matrix product over all models.
    """
    from scipy.optimize import minimize

    d, m = x.shape[1], labels.shape[1]
    x64 = x.astype(np.float64)
    seen = ~np.isnan(labels)
    y = np.where(seen, labels, 0.0)
    n = np.maximum(seen.sum(0), 1).astype(np.float64)
    rate = np.clip(y.sum(0) / n, 1e-3, 1 - 1e-3)

    def loss(theta: Array) -> tuple[float, Array]:
        w, b = theta[: d * m].reshape(d, m), theta[d * m :]
        z = x64 @ w + b
        nll = np.where(seen, np.logaddexp(0.0, z) - y * z, 0.0).sum(0) / n
        err = np.where(seen, sigmoid(z) - y, 0.0) / n
        value = float(nll.sum() + 0.5 * l2 * ((w * w).sum(0) / n).sum())
        return value, np.concatenate([(x64.T @ err + l2 * w / n).ravel(), err.sum(0)])

    theta0 = np.concatenate([np.zeros(d * m), np.log(rate / (1 - rate))])
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    return LogisticHead(res.x[: d * m].reshape(d, m), res.x[d * m :])


# --- cross-fitting -----------------------------------------------------------------------------------


@dataclass
class HeadTrial:
    """One head configuration tried during training, with its cross-fitted score."""

    kind: HeadKind
    param: float
    score: float = float("nan")
    oof: Array | None = None


@dataclass
class TrainResult:
    """The trained model, every head configuration tried (with its score), and the wall time."""

    model: QualityModel
    trials: list[HeadTrial]
    seconds: float


def _fit_head(kind: HeadKind, param: float, x: Floats, emb: Floats, labels: Array) -> Part:
    if kind == "logistic":
        return fit_logistic(x, labels, l2=param)
    return KnnHead(emb, labels, k=int(param))


def _folds(n: int, folds: int, seed: int) -> NDArray[np.intp]:
    return np.random.default_rng(seed).permutation(n) % folds


def routing_score(pred: Array, scores: Array, costs: Array) -> float:
    """Selection metric: hull area of the lambda curve (AIQ) per label group, weighted by rows.

    Falls back to minus the Brier score where costs are missing or only one model is labelled.
    """
    total, weight = 0.0, 0
    for rows, cols in label_groups(scores):
        s, c, p = scores[np.ix_(rows, cols)], costs[np.ix_(rows, cols)], pred[np.ix_(rows, cols)]
        if len(cols) >= 2 and not np.isnan(c).any():
            pts = ev.policy_curve(p, s, c, "lambda")
            lo, hi = float(c.mean(0).min()), float(c.mean(0).max())
            value = ev.hull_area([q.cost for q in pts], [q.quality for q in pts], lo, hi)
        else:
            value = -float(np.mean((p - s) ** 2))
        total += value * len(rows)
        weight += len(rows)
    return total / max(weight, 1)


def calibrate_groups(
    pred: Array, scores: Array, costs: Array, models: Sequence[str], target: float
) -> list[dict[str, Any]]:
    """For each label group, the cheapest threshold and lambda reaching `target` x the best model."""
    points = []
    for rows, cols in label_groups(scores):
        s, c, p = scores[np.ix_(rows, cols)], costs[np.ix_(rows, cols)], pred[np.ix_(rows, cols)]
        if len(cols) < 2 or np.isnan(c).any():
            continue
        best = float(s.mean(0).max())
        for mode in ev.MODES:
            pt = ev.calibrate(p, s, c, target, mode)
            if pt is not None:
                points.append(
                    {
                        "models": [models[j] for j in cols],
                        "mode": mode,
                        "knob": pt.knob,
                        "target": target,
                        "quality": pt.quality,
                        "best_quality": best,
                        "cost": pt.cost,
                        "best_cost": float(c.mean(0)[int(np.argmax(s.mean(0)))]),
                        "rows": len(rows),
                    }
                )
    return points


def _select(trials: Sequence[HeadTrial], scores: Array, costs: Array) -> tuple[list[HeadTrial], Array, float]:
    """The best candidate, or the equal blend of the best of each kind when that scores higher."""
    best = max(trials, key=lambda c: c.score)
    kinds = dict.fromkeys(c.kind for c in trials)
    picks = [max((c for c in trials if c.kind == k), key=lambda c: c.score) for k in kinds]
    oofs = [c.oof for c in picks if c.oof is not None]
    assert best.oof is not None and len(oofs) == len(picks)
    if len(picks) > 1:
        blend: Array = np.mean(oofs, axis=0)
        blend_score = routing_score(blend, scores, costs)
        if blend_score > best.score:
            return picks, blend, blend_score
    return [best], best.oof, best.score


def train_quality_model(
    prompts: Sequence[str],
    emb: NDArray[Any],
    scores: Array,
    costs: Array,
    models: Sequence[str],
    *,
    kinds: Sequence[HeadKind] = ("logistic", "knn"),
    l2_grid: Sequence[float] = (1.0, 10.0, 100.0),
    k_grid: Sequence[int] = (20, 50, 100),
    folds: int = 5,
    target: float = 0.95,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
) -> TrainResult:
    """Fit every head configuration with `folds`-fold cross-fitting, keep the best, calibrate, refit on all."""
    t0 = time.perf_counter()
    e = np.asarray(emb, np.float32)
    raw = text_features(prompts)
    mean, std = raw.mean(0), raw.std(0) + 1e-6
    x = np.hstack([e, ((raw - mean) / std).astype(np.float32)])
    fold = _folds(len(prompts), folds, seed)
    trials = [HeadTrial("logistic", float(v)) for v in l2_grid if "logistic" in kinds]
    trials += [HeadTrial("knn", float(v)) for v in k_grid if "knn" in kinds]
    for trial in trials:
        oof = np.zeros_like(scores)
        for f in range(folds):
            tr, te = fold != f, fold == f
            part = _fit_head(trial.kind, trial.param, x[tr], e[tr], scores[tr])
            oof[te] = part(x[te], e[te])
        trial.oof = np.clip(oof, 0.0, 1.0)
        trial.score = routing_score(trial.oof, scores, costs)
    chosen, oof, score = _select(trials, scores, costs)
    head = Blend([_fit_head(c.kind, c.param, x, e, scores) for c in chosen])
    model = QualityModel(
        list(models), head, mean, std, max_tokens, calibration=calibrate_groups(oof, scores, costs, models, target)
    )
    model.card = {
        "head": head.kind,
        "params": [c.param for c in chosen],
        "cv_folds": folds,
        "cv_score": score,
        "candidates": [{"kind": c.kind, "param": c.param, "cv_score": c.score} for c in trials],
        "train_prompts": len(prompts),
        "embedding": f"minilm-l6-v2/t{max_tokens}",
        "trained": time.strftime("%Y-%m-%d"),
    }
    return TrainResult(model, trials, time.perf_counter() - t0)
