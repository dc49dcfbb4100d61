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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.lab import calibration as cal
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
    """Minimise, per model over its labelled rows, mean soft-label cross-entropy + l2/(2n) |w|^2."""
    return fit_logistic_many(x, labels, [np.ones(len(x), bool)], [l2])[0]


def lbfgs(
    fun: Callable[[Array], tuple[float, Array]],
    x0: Array,
    *,
    memory: int = 10,
    maxiter: int = 1000,
    gtol: float = 1e-5,
    ftol: float = 2.2e-9,
) -> Array:
    """Unconstrained L-BFGS (two-loop recursion, backtracking Armijo steps); stops like scipy's L-BFGS-B.

    Why not scipy's: its bound-handling core took ~0.1 s per step on the stacked 60k-parameter problem on a
    busy two-core machine, more than the loss itself; these are a few numpy vector operations per step.
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    hist: list[tuple[Array, Array, float]] = []
    for it in range(maxiter):
        if np.abs(g).max() <= gtol:
            break
        q = g.copy()
        alphas = []
        for sv, yv, rho in reversed(hist):
            a = rho * float(sv @ q)
            alphas.append(a)
            q -= a * yv
        if hist:
            sv, yv, _ = hist[-1]
            q *= float(sv @ yv) / float(yv @ yv)
        for (sv, yv, rho), a in zip(hist, reversed(alphas), strict=True):
            q += sv * (a - rho * float(yv @ q))
        direction, slope = -q, -float(g @ q)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            hist.clear()
            direction, slope = -g, -float(g @ g)
        step = 1.0 if it else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-12))
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        sv, yv = x_new - x, g_new - g
        sy = float(sv @ yv)
        if sy > 1e-12:
            hist = [*hist[-(memory - 1) :], (sv, yv, 1.0 / sy)]
        done = (f - f_new) <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x


def fit_logistic_many(
    x: Floats, labels: Array, rows: Sequence[NDArray[np.bool_]], l2s: Sequence[float]
) -> list[LogisticHead]:
    """One logistic head per (row subset, l2) pair, all solved as ONE L-BFGS problem.

    Why: the losses are independent, so stacking every fold and every L2 value side by side turns many
    thin (n x d) @ (d x models) products, which BLAS runs at a few GFLOP/s, into one wide product per
    step; the whole cross-fitting grid then costs about as many steps as one fit did.
    """
    d, m, c = x.shape[1], labels.shape[1], len(rows)
    x64 = np.asarray(x, np.float64)
    centre = x64.mean(0)
    xc = x64 - centre
    # Preconditioning: solve in the eigenbasis of the features' covariance, each direction scaled by the
    # loss's approximate curvature there (0.25 s^2/n + l2/n); same optimum, far fewer L-BFGS steps.
    eig, basis = np.linalg.eigh(xc.T @ xc)
    a_mat = np.ascontiguousarray((xc @ basis).astype(np.float32))
    a_t = np.ascontiguousarray(a_mat.T)
    # Every configuration's copy of the labels, NaN outside its rows: a column is one model of one config.
    stacked = np.hstack([np.where(r[:, None], labels, np.nan) for r in rows])
    seen = ~np.isnan(stacked)
    y = np.where(seen, stacked, 0.0)
    n = np.maximum(seen.sum(0), 1).astype(np.float64)
    reg = np.repeat(np.asarray(l2s, np.float64), m) / n
    share = n / len(x)
    gain = 1.0 / np.sqrt(0.25 * np.clip(eig, 0.0, None)[:, None] * share / n + reg + 1e-12)
    rate = np.clip(y.sum(0) / n, 1e-3, 1 - 1e-3)
    k = d * m * c

    def loss(theta: Array) -> tuple[float, Array]:
        v = theta[:k].reshape(d, m * c) * gain
        z = (a_mat @ v.astype(np.float32)).astype(np.float64) + theta[k:]
        nll = np.where(seen, np.logaddexp(0.0, z) - y * z, 0.0).sum(0) / n
        err = np.where(seen, sigmoid(z) - y, 0.0) / n
        value = float(nll.sum() + 0.5 * (reg * (v * v).sum(0)).sum())
        grad_v = (a_t @ err.astype(np.float32)).astype(np.float64) + reg * v
        return value, np.concatenate([(grad_v * gain).ravel(), err.sum(0)])

    theta = lbfgs(loss, np.concatenate([np.zeros(k), np.log(rate / (1 - rate))]))
    w = basis @ (theta[:k].reshape(d, m * c) * gain)
    b = theta[k:] - centre @ w
    return [LogisticHead(w[:, i * m : (i + 1) * m], b[i * m : (i + 1) * m]) for i in range(c)]


def knn_oof_many(emb: Floats, labels: Array, fold: NDArray[np.intp], k_grid: Sequence[int]) -> list[Array]:
    """Out-of-fold kNN predictions for every k at once: one similarity matrix and one sort per fold.

    Same arithmetic as `KnnHead` (the prior, alpha, the label groups come from a KnnHead built on the fold's
    training rows); the k nearest are a prefix of the largest k's neighbours sorted by similarity.
    """
    out = [np.zeros_like(labels, dtype=np.float64) for _ in k_grid]
    top_k = max(k_grid)
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        ref = KnnHead(emb[tr], labels[tr], k=top_k)
        q = np.asarray(emb[te], np.float32)
        for o in out:
            o[te] = ref.prior
        for cols, bank_t, group_labels in ref.groups:
            sims = q @ bank_t
            kk = min(top_k, bank_t.shape[1])
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            s_top = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-s_top, axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            w = np.clip(np.take_along_axis(s_top, order, axis=1), 0.0, None).astype(np.float64)
            wy = np.cumsum(w[:, :, None] * group_labels[top].astype(np.float64), axis=1)
            ws = np.cumsum(w, axis=1)
            for o, k in zip(out, k_grid, strict=True):
                j = min(int(k), kk) - 1
                num = wy[:, j] + ref.alpha * ref.prior[cols]
                o[np.ix_(np.flatnonzero(te), cols)] = num / (ws[:, j, None] + ref.alpha)
    return out


# --- cross-fitting -----------------------------------------------------------------------------------


#: Progress callback: (what is being done, steps done, steps in all).
Progress = Callable[[str, int, int], None]


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
    """For each label group, the threshold and lambda whose EXPECTED quality on new prompts is `target` x best.

    `pred` are cross-fitted predictions; see `lab.calibration.fit_knob` for why not the in-sample crossing.
    """
    points = []
    for rows, cols in label_groups(scores):
        s, c, p = scores[np.ix_(rows, cols)], costs[np.ix_(rows, cols)], pred[np.ix_(rows, cols)]
        if len(cols) < 2 or np.isnan(c).any():
            continue
        for mode in ev.MODES:
            fit = cal.fit_knob(p, s, c, target, mode)
            if fit is not None:
                points.append(
                    {
                        "models": [models[j] for j in cols],
                        "mode": mode,
                        "knob": fit.knob,
                        "target": target,
                        "quality": fit.quality,
                        "best_quality": fit.best_quality,
                        "cost": fit.cost,
                        "best_cost": fit.best_cost,
                        "rows": len(rows),
                        "expected_ratio": fit.expected_ratio,
                        "band": list(fit.band),
                        "method": "bootstrap-isotonic",
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
    progress: Progress | None = None,
) -> TrainResult:
    """Fit every head configuration with `folds`-fold cross-fitting, keep the best, calibrate, refit on all.

    Every logistic configuration (each fold and the full data, each L2) is one stacked L-BFGS problem and
    every k of the kNN head shares one similarity matrix per fold, so the grid costs little more than one fit.
    """
    t0 = time.perf_counter()
    say = progress or (lambda step, done, total: None)
    e = np.asarray(emb, np.float32)
    raw = text_features(prompts)
    mean, std = raw.mean(0), raw.std(0) + 1e-6
    x = np.hstack([e, ((raw - mean) / std).astype(np.float32)])
    fold = _folds(len(prompts), folds, seed)
    trials = [HeadTrial("logistic", float(v)) for v in l2_grid if "logistic" in kinds]
    trials += [HeadTrial("knn", float(v)) for v in k_grid if "knn" in kinds]
    full: dict[tuple[str, float], Part] = {}
    logistic = [t for t in trials if t.kind == "logistic"]
    steps = 2 + bool(logistic) + any(t.kind == "knn" for t in trials)
    if logistic:
        say("logistic heads: all folds and L2 values as one problem", 0, steps)
        subsets = [fold != f for f in range(folds)] + [np.ones(len(x), bool)]
        configs = [(t, r) for t in logistic for r in range(folds + 1)]
        heads = fit_logistic_many(x, scores, [subsets[r] for _, r in configs], [t.param for t, _ in configs])
        for t in logistic:
            own = [h for (c, _), h in zip(configs, heads, strict=True) if c is t]
            oof = np.zeros_like(scores)
            for f in range(folds):
                oof[fold == f] = own[f](x[fold == f], e[fold == f])
            t.oof, full[("logistic", t.param)] = oof, own[folds]
    knn = [t for t in trials if t.kind == "knn"]
    if knn:
        say("kNN heads: one similarity matrix per fold", 1, steps)
        for t, oof in zip(knn, knn_oof_many(e, scores, fold, [int(t.param) for t in knn]), strict=True):
            t.oof = oof
    for t in trials:
        assert t.oof is not None
        t.oof = np.clip(t.oof, 0.0, 1.0)
        t.score = routing_score(t.oof, scores, costs)
    say("choosing the head and calibrating", steps - 2, steps)
    chosen, oof, score = _select(trials, scores, costs)
    head = Blend([full.get((c.kind, c.param)) or _fit_head(c.kind, c.param, x, e, scores) for c in chosen])
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
