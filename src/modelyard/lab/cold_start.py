"""A new model on day one: its predictor from a few labelled rows, or from acceptance results alone.

Both build a `routing.learned.AddedModel`: P(good) = sigmoid(coef . logit(P_trained) + bias), where P_trained
are the trained models' predictions for the same prompt. That is the low-rank factorisation of a logistic
head (the new model's weights constrained to the span of the trained models' weights) written over the
heads' outputs, so it works for any head kind (logistic, kNN, a blend).

- `fit_from_rows`: N labelled rows (N <= 50 is the case it is for). The coefficients are pulled towards the
  mean model (every trained model's logit weighted 1/m, bias 0) by an L2 prior; the bias is free. With no
  rows it is the mean model; with many it becomes a stacking regression.
- `from_acceptance`: no prompts, only per-task pass rates. The new model is a model the router knows
  (`like`: chosen, or the nearest by pass-rate profile in the same file) shifted in logit space by the
  difference between their pass rates: it inherits that model's ranking of prompts, only its level moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.routing.learned import AddedModel, Array, QualityModel, logit, sigmoid

#: Strength of the prior towards the mean model, in units of labelled rows (the penalty is
#: PRIOR_ROWS/2 * |coef - 1/m|^2 against the summed cross-entropy). Chosen on the shared data by
#: bench/router_cold_start.py (see docs/routing.md, "A new model on day one").
PRIOR_ROWS = 30.0


def trained_logits(model: QualityModel, emb: NDArray[Any], prompts: Sequence[str]) -> Array:
    """(n, trained models) logits of the trained heads' predictions: the shared prompt representation."""
    base = model.predict_embedded(emb, prompts)[:, : len(model.trained_models)]
    return logit(base)


def fit_stacked(
    z: Array, y: Array, *, prior_rows: float = PRIOR_ROWS, bias_rows: float | None = None, weight: Array | None = None
) -> tuple[Array, float]:
    """(coef, bias) minimising weighted soft-label cross-entropy of sigmoid(z . coef + bias) against `y`
    plus prior_rows/2 * |coef - 1/m|^2 + bias_rows/2 * bias^2 (bias_rows None: the same as prior_rows).

    The bias is pulled to 0 too: with ten rows its estimate alone moves the model's level more than the
    mean model is off (measured: an unpenalised bias lost to the bare prior on Brier and hull area)."""
    from scipy.optimize import minimize

    n, m = z.shape
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    prior = np.full(m, 1.0 / m)
    bias_pull = prior_rows if bias_rows is None else bias_rows
    if n == 0:
        return prior, 0.0

    def loss(theta: Array) -> tuple[float, Array]:
        a, b = theta[:m], float(theta[m])
        s = z @ a + b
        nll = float((w * (np.logaddexp(0.0, s) - y * s)).sum())
        err = w * (sigmoid(s) - y)
        d = a - prior
        value: float = nll + 0.5 * prior_rows * float(d @ d) + 0.5 * bias_pull * b * b
        return value, np.concatenate([z.T @ err + prior_rows * d, [err.sum() + bias_pull * b]])

    res = minimize(loss, np.concatenate([prior, [0.0]]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:m], float(res.x[m])


def fit_from_rows(
    model: QualityModel,
    name: str,
    emb: NDArray[Any],
    prompts: Sequence[str],
    scores: Array,
    *,
    prior_rows: float = PRIOR_ROWS,
) -> AddedModel:
    """The added model `name` fitted on its labelled rows (prompts, their embeddings, scores in [0, 1])."""
    y = np.asarray(scores, np.float64)
    if not len(y):
        raise ValueError(f"no labelled rows for {name!r}")
    coef, bias = fit_stacked(trained_logits(model, emb, prompts), y, prior_rows=prior_rows)
    source = {"method": "rows", "rows": len(y), "mean_score": float(y.mean()), "prior_rows": prior_rows}
    return AddedModel(name, tuple(float(c) for c in coef), bias, source)


# --- acceptance results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One deployment's acceptance results: task -> (pass rate, cases)."""

    deployment: str
    tasks: dict[str, tuple[float, int]]

    def rate(self, tasks: Sequence[str]) -> float:
        """Case-weighted pass rate over `tasks` (plain mean where no cases are counted)."""
        cells = [self.tasks[t] for t in tasks]
        cases = sum(c for _, c in cells)
        if cases:
            return sum(r * c for r, c in cells) / cases
        return sum(r for r, _ in cells) / len(cells)


def profiles(deployments: Mapping[str, Mapping[str, Any]]) -> dict[str, Profile]:
    """Profiles from the results file's `deployments` (cells with no cases are left out: nothing was run)."""
    out = {}
    for dep, tasks in deployments.items():
        cells = {
            t: (float(_get(c, "pass_rate")), int(_get(c, "cases") or 0))
            for t, c in tasks.items()
            if (_get(c, "cases") or 0) > 0
        }
        out[dep] = Profile(dep, cells)
    return out


def _get(cell: Any, key: str) -> Any:
    return cell[key] if isinstance(cell, Mapping) else getattr(cell, key, None)


@dataclass(frozen=True)
class LikeChoice:
    """The known model the new one is read off, and why."""

    model: str
    deployment: str
    shift: float  # logit(new pass rate) - logit(its pass rate), over their common tasks
    distance: float  # mean absolute pass-rate difference over the common tasks
    tasks: tuple[str, ...]


#: Pass rates are clipped this far from 0 and 1 before their logit (a 50/50 suite is not certainty).
RATE_EPS = 0.02


def _logit_rate(rate: float) -> float:
    r = min(max(rate, RATE_EPS), 1.0 - RATE_EPS)
    return math.log(r / (1.0 - r))


def choose_like(new: Profile, known: Mapping[str, Profile], like: str | None = None) -> LikeChoice:
    """The router model (`known`: router model -> its deployment's profile) nearest to `new` by pass-rate
    profile over the tasks both were run on, or `like` when given. ValueError when none shares a task."""
    candidates = {like: known[like]} if like is not None and like in known else dict(known)
    if like is not None and like not in known:
        raise ValueError(f"--like {like!r} has no results in the file (known there: {', '.join(known) or 'none'})")
    best: LikeChoice | None = None
    for model, prof in sorted(candidates.items()):
        common = tuple(sorted(set(new.tasks) & set(prof.tasks)))
        if not common:
            continue
        dist = sum(abs(new.tasks[t][0] - prof.tasks[t][0]) for t in common) / len(common)
        shift = _logit_rate(new.rate(common)) - _logit_rate(prof.rate(common))
        choice = LikeChoice(model, prof.deployment, shift, dist, common)
        if best is None or (dist, -len(common)) < (best.distance, -len(best.tasks)):
            best = choice
    if best is None:
        raise ValueError(f"{new.deployment!r} shares no task with a deployment the router knows")
    return best


def from_acceptance(model: QualityModel, name: str, choice: LikeChoice) -> AddedModel:
    """The added model: `choice.model`'s prediction shifted by `choice.shift` in logit space."""
    trained = model.trained_models
    if choice.model not in trained:
        raise ValueError(f"{choice.model!r} is not a trained model of this router")
    coef = tuple(1.0 if m == choice.model else 0.0 for m in trained)
    source = {
        "method": "acceptance",
        "like": choice.model,
        "like_deployment": choice.deployment,
        "tasks": list(choice.tasks),
        "profile_distance": choice.distance,
        "logit_shift": choice.shift,
    }
    return AddedModel(name, coef, choice.shift, source)
