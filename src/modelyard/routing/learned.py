"""The learned quality router: a prompt in, P(good answer) per known model out; and the pure choice rule.

Features are the prompt's MiniLM sentence embedding plus a few cheap text statistics (length, digits, code
and maths markers, multiple-choice layout). Two predictor heads, both numpy-only at run time:

- ``logistic``: one L2-regularised logistic regression per model on the features (soft labels allowed);
- ``knn``: a similarity-weighted mean of the nearest training prompts' scores, shrunk towards the model's
  overall mean.

`train_router` compares them by cross-fitted (out-of-fold) routing quality and keeps the better; the
threshold or lambda that reaches a target share of the strongest model's quality is calibrated on the
same out-of-fold predictions. The artifact is one `.npz` (no pickle: it is loaded by the gateway).

The seam for the routing engine: `QualityPredictor`, `load_router` and `choose`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from modelyard.routing import evaluation as ev
from modelyard.routing.embeddings import MAX_TOKENS, Embedder, EmbeddingStore, MiniLM

Array = NDArray[np.float64]
Floats = NDArray[np.float32]
HeadKind = Literal["logistic", "knn"]
FORMAT = "modelyard.router/v1"
DEFAULT_ROUTER = Path(__file__).resolve().parent / "default_router" / "router.npz"
TEXT_FEATURES = (
    "log_chars", "log_words", "mean_word_len", "digit_frac", "upper_frac", "log_lines",
    "questions", "code", "math", "choices", "log_numbers", "max_digits", "log_sentences",
)  # fmt: skip
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CODE_MARKS = ("```", "def ", "return ", "#include", "import ", "function ", "};", "=>", "print(")
_MATH_MARKS = ("$", "\\frac", "\\(", "^", "\\sqrt", " = ", "+", "%")
_CHOICE_MARKS = ("\nA.", "\nA)", "(A)", "\nB.", "\nB)", "(B)", "A. ", "Answer Choices")


@runtime_checkable
class QualityPredictor(Protocol):
    """What the `learned` strategy and `replay` need: per-model success probabilities for prompts."""

    models: list[str]

    def predict(self, prompt: str) -> dict[str, float]: ...

    def predict_batch(self, prompts: list[str]) -> NDArray[np.float64]: ...


def choose(
    predicted: Mapping[str, float],
    costs: Mapping[str, float],
    threshold: float | None = None,
    lam: float | None = None,
) -> str:
    """Pick one model from `predicted` (each needs a cost): pure, no I/O, microseconds.

    - `threshold` set: the cheapest model whose predicted quality >= threshold; when none clears it,
      fall through to the rule below.
    - otherwise: argmax of quality - lam * cost / max(cost) (lam None = 0: the most likely to succeed).
      Costs are divided by the largest candidate cost, so lam is unit-free: lam = 0.1 gives up 0.1 of
      P(correct) to avoid paying the most expensive candidate's full price.
    Ties go to the cheaper model, then to the earlier name in `predicted`.
    """
    names = [m for m in predicted if m in costs]
    if not names:
        raise ValueError("choose: no model has both a prediction and a cost")
    if threshold is not None:
        ok = [m for m in names if predicted[m] >= threshold]
        if ok:
            return min(ok, key=lambda m: (costs[m], -predicted[m], names.index(m)))
    top = max(costs[m] for m in names)
    scale = top if top > 0 else 1.0
    weight = lam or 0.0
    return min(names, key=lambda m: (weight * (costs[m] / scale) - predicted[m], costs[m], names.index(m)))


def text_features(prompts: Sequence[str]) -> Floats:
    """Cheap per-prompt statistics (see TEXT_FEATURES), unscaled."""
    out = np.zeros((len(prompts), len(TEXT_FEATURES)), np.float32)
    for i, p in enumerate(prompts):
        n = max(len(p), 1)
        words = p.split()
        numbers = _NUMBER.findall(p)
        out[i] = (
            math.log1p(len(p)),
            math.log1p(len(words)),
            sum(map(len, words)) / max(len(words), 1),
            sum(c.isdigit() for c in p) / n,
            sum(c.isupper() for c in p) / n,
            math.log1p(p.count("\n")),
            min(p.count("?"), 5),
            float(any(m in p for m in _CODE_MARKS)),
            float(any(m in p for m in _MATH_MARKS)),
            float(any(m in p for m in _CHOICE_MARKS)),
            math.log1p(len(numbers)),
            max(map(len, numbers), default=0),
            math.log1p(p.count(". ") + p.count("? ") + p.count("\n")),
        )
    return out


# --- heads ---------------------------------------------------------------------------------------------


def _sigmoid(z: Array) -> Array:
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


class LogisticHead:
    """P(good) = sigmoid(x . w_m + b_m), one column per model."""

    kind: HeadKind = "logistic"

    def __init__(self, weights: Array, bias: Array) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)

    def __call__(self, x: Floats, emb: Floats) -> Array:
        return _sigmoid((x @ self.weights + self.bias).astype(np.float64))

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {"weights": self.weights, "bias": self.bias}

    @classmethod
    def fit(cls, x: Floats, labels: Array, l2: float = 1.0) -> LogisticHead:
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
            err = np.where(seen, _sigmoid(z) - y, 0.0) / n
            value = float(nll.sum() + 0.5 * l2 * ((w * w).sum(0) / n).sum())
            return value, np.concatenate([(x64.T @ err + l2 * w / n).ravel(), err.sum(0)])

        theta0 = np.concatenate([np.zeros(d * m), np.log(rate / (1 - rate))])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 1000})
        return cls(res.x[: d * m].reshape(d, m), res.x[d * m :])


class KnnHead:
    """P(good) = (sum_k s_k y_k + alpha * prior) / (sum_k s_k + alpha) over the k most similar prompts.

    Neighbours are searched among the rows labelled for each model (datasets with different model sets
    can share one head); similarities are cosine, clipped at zero.
    """

    kind: HeadKind = "knn"

    def __init__(self, bank: NDArray[Any], labels: NDArray[Any], k: int = 40, alpha: float = 1.0) -> None:
        self.bank = np.asarray(bank, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.k = int(k)
        self.alpha = float(alpha)
        seen = ~np.isnan(self.labels)
        self.prior = np.where(seen, self.labels, 0.0).sum(0) / np.maximum(seen.sum(0), 1)
        # One sub-bank per set of rows labelled for the same models, split once here, not per call.
        self.groups = [
            (cols, np.ascontiguousarray(self.bank[rows].T), self.labels[np.ix_(rows, cols)])
            for rows, cols in label_groups(self.labels)
        ]

    def __call__(self, x: Floats, emb: Floats) -> Array:
        out = np.tile(self.prior.astype(np.float64), (len(emb), 1))
        for cols, bank_t, labels in self.groups:
            sims = emb @ bank_t
            k = min(self.k, bank_t.shape[1])
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            w = np.clip(np.take_along_axis(sims, top, axis=1), 0.0, None).astype(np.float64)
            y = labels[top].astype(np.float64)  # (n, k, models in group)
            num = (w[:, :, None] * y).sum(1) + self.alpha * self.prior[cols]
            out[:, cols] = num / (w.sum(1, keepdims=True) + self.alpha)
        return out

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {
            "bank": self.bank.astype(np.float16),
            "labels": self.labels.astype(np.float16),
            "k": np.array(self.k),
            "alpha": np.array(self.alpha),
        }


Part = LogisticHead | KnnHead


class Blend:
    """The predictor: a weighted mean of one or more heads (one head is the common case)."""

    def __init__(self, parts: Sequence[Part], weights: Sequence[float] | None = None) -> None:
        self.parts = list(parts)
        w = np.ones(len(self.parts)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()

    @property
    def kind(self) -> str:
        return "+".join(p.kind for p in self.parts)

    def __call__(self, x: Floats, emb: Floats) -> Array:
        total: Array = self.weights[0] * self.parts[0](x, emb)
        for part, w in zip(self.parts[1:], self.weights[1:], strict=True):
            total = total + w * part(x, emb)
        return total


def _part_from(kind: str, arrays: Mapping[str, NDArray[Any]]) -> Part:
    if kind == "logistic":
        return LogisticHead(arrays["weights"], arrays["bias"])
    if kind == "knn":
        labels = arrays["labels"].astype(np.float32)
        return KnnHead(arrays["bank"], labels, int(arrays["k"]), float(arrays["alpha"]))
    raise ValueError(f"unknown predictor head {kind!r}")


# --- the artifact ------------------------------------------------------------------------------------


@dataclass
class Router:
    """A trained quality router (implements `QualityPredictor`)."""

    models: list[str]
    head: Blend
    feature_mean: Floats
    feature_std: Floats
    max_tokens: int = MAX_TOKENS
    #: Calibrated operating points: [{"models": [...], "mode": "threshold"|"lambda", "knob": x, ...}].
    calibration: list[dict[str, Any]] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    embedder: Embedder | None = None
    embedder_factory: Callable[[int], Embedder] | None = None

    def _embedder(self) -> Embedder:
        if self.embedder is None:
            factory = self.embedder_factory or (lambda n: MiniLM(max_tokens=n))
            self.embedder = factory(self.max_tokens)
        return self.embedder

    def warm(self) -> None:
        """Load the embedding model now (a gateway calls this at start-up, not on the first request)."""
        self.predict("warm-up")

    def features(self, emb: NDArray[Any], prompts: Sequence[str]) -> Floats:
        # Clipped: a prompt unlike anything in training (say, far longer) must not push the head to extremes.
        text = np.clip((text_features(prompts) - self.feature_mean) / self.feature_std, -5.0, 5.0)
        return np.hstack([np.asarray(emb, np.float32), text.astype(np.float32)])

    def predict_embedded(self, emb: NDArray[Any], prompts: Sequence[str]) -> Array:
        """Predictions from precomputed embeddings (training, evaluation and replay use cached ones)."""
        e = np.asarray(emb, np.float32)
        return np.clip(self.head(self.features(e, prompts), e), 0.0, 1.0)

    def predict_batch(self, prompts: list[str]) -> Array:
        """(n, len(models)) P(good answer); the batch path for replay and evaluation."""
        return self.predict_embedded(self._embedder().embed(prompts), prompts)

    def predict_cached(self, prompts: Sequence[str], cache_dir: Path | None = None) -> Array:
        """`predict_batch` through the on-disk embedding cache: re-evaluating or replaying a file is fast."""
        embedder = self._embedder()
        vectors = EmbeddingStore(embedder.signature, cache_dir).embed(embedder, prompts)
        return self.predict_embedded(vectors, prompts)

    def predict(self, prompt: str) -> dict[str, float]:
        """P(good answer) per known model for one prompt: the hot path (one embedding, one matrix product)."""
        emb = self._embedder()
        one = getattr(emb, "embed_one", None)
        vec = one(prompt)[None, :] if callable(one) else emb.embed([prompt])
        row = self.predict_embedded(vec, [prompt])[0]
        return {m: float(p) for m, p in zip(self.models, row, strict=True)}

    def operating_point(self, models: Sequence[str], mode: str | None = None) -> dict[str, Any] | None:
        """The calibrated point (of `mode`, "lambda" first when None) whose models overlap `models` most.

        `{"mode", "knob", "target", "quality", "cost", ...}`; None when nothing overlaps.
        """
        wanted = set(models)
        points = [c for c in self.calibration if mode is None or c["mode"] == mode]
        best = max(points, key=lambda c: len(wanted & set(c["models"])), default=None)
        return best if best is not None and wanted & set(best["models"]) else None

    def save(self, path: str | Path) -> Path:
        """Write the artifact: one .npz (a directory gets `router.npz` inside)."""
        target = Path(path)
        if target.suffix != ".npz":
            target.mkdir(parents=True, exist_ok=True)
            target = target / "router.npz"
        parts = zip(self.head.parts, self.head.weights, strict=True)
        meta = {
            "format": FORMAT,
            "models": self.models,
            "max_tokens": self.max_tokens,
            "heads": [{"kind": p.kind, "weight": float(w)} for p, w in parts],
            "text_features": list(TEXT_FEATURES),
            "calibration": self.calibration,
            "card": self.card,
        }
        arrays: dict[str, Any] = {f"h{i}_{k}": v for i, p in enumerate(self.head.parts) for k, v in p.arrays().items()}
        arrays["feature_mean"], arrays["feature_std"] = self.feature_mean, self.feature_std
        np.savez_compressed(target, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return target

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> Router:
        source = Path(path)
        if source.is_dir():
            source = source / "router.npz"
        with np.load(source, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"{source}: not a {FORMAT} artifact")
            if meta.get("text_features") != list(TEXT_FEATURES):
                raise ValueError(f"{source}: trained with other text features; retrain it")
            parts = []
            for i, h in enumerate(meta["heads"]):
                own = {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"h{i}_")}
                parts.append(_part_from(h["kind"], own))
            head = Blend(parts, [h["weight"] for h in meta["heads"]])
            return cls(
                models=list(meta["models"]),
                head=head,
                feature_mean=z["feature_mean"],
                feature_std=z["feature_std"],
                max_tokens=int(meta["max_tokens"]),
                calibration=list(meta.get("calibration", [])),
                card=dict(meta.get("card", {})),
                embedder=embedder,
            )


def load_router(path: str | Path | None = None, embedder: Embedder | None = None) -> Router:
    """A trained router from `path` (an .npz or a directory holding router.npz); None: the shipped default.

    Cheap: the embedding model loads on the first prediction (or `Router.warm()`).
    """
    return Router.load(DEFAULT_ROUTER if path is None else path, embedder)


# --- training ----------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One head configuration tried during training, with its cross-fitted score."""

    kind: HeadKind
    param: float
    score: float = float("nan")
    oof: Array | None = None


@dataclass
class TrainResult:
    router: Router
    candidates: list[Candidate]
    seconds: float


def _fit_head(kind: HeadKind, param: float, x: Floats, emb: Floats, labels: Array) -> Part:
    if kind == "logistic":
        return LogisticHead.fit(x, labels, l2=param)
    return KnnHead(emb, labels, k=int(param))


def _folds(n: int, folds: int, seed: int) -> NDArray[np.intp]:
    return np.random.default_rng(seed).permutation(n) % folds


def label_groups(scores: NDArray[Any]) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """(rows, model columns) for each set of prompts labelled for the same models."""
    patterns: dict[bytes, list[int]] = {}
    for i, row in enumerate(~np.isnan(scores)):
        patterns.setdefault(row.tobytes(), []).append(i)
    return [(np.array(rows), np.flatnonzero(np.frombuffer(k, dtype=bool))) for k, rows in patterns.items()]


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


def _select(cands: Sequence[Candidate], scores: Array, costs: Array) -> tuple[list[Candidate], Array, float]:
    """The best candidate, or the equal blend of the best of each kind when that scores higher."""
    best = max(cands, key=lambda c: c.score)
    kinds = dict.fromkeys(c.kind for c in cands)
    picks = [max((c for c in cands if c.kind == k), key=lambda c: c.score) for k in kinds]
    oofs = [c.oof for c in picks if c.oof is not None]
    assert best.oof is not None and len(oofs) == len(picks)
    if len(picks) > 1:
        blend: Array = np.mean(oofs, axis=0)
        blend_score = routing_score(blend, scores, costs)
        if blend_score > best.score:
            return picks, blend, blend_score
    return [best], best.oof, best.score


def train_router(
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
    """Fit every candidate head with `folds`-fold cross-fitting, keep the best, calibrate, refit on all."""
    t0 = time.perf_counter()
    e = np.asarray(emb, np.float32)
    raw = text_features(prompts)
    mean, std = raw.mean(0), raw.std(0) + 1e-6
    x = np.hstack([e, ((raw - mean) / std).astype(np.float32)])
    fold = _folds(len(prompts), folds, seed)
    cands = [Candidate("logistic", float(v)) for v in l2_grid if "logistic" in kinds]
    cands += [Candidate("knn", float(v)) for v in k_grid if "knn" in kinds]
    for cand in cands:
        oof = np.zeros_like(scores)
        for f in range(folds):
            tr, te = fold != f, fold == f
            part = _fit_head(cand.kind, cand.param, x[tr], e[tr], scores[tr])
            oof[te] = part(x[te], e[te])
        cand.oof = np.clip(oof, 0.0, 1.0)
        cand.score = routing_score(cand.oof, scores, costs)
    chosen, oof, score = _select(cands, scores, costs)
    head = Blend([_fit_head(c.kind, c.param, x, e, scores) for c in chosen])
    router = Router(
        list(models), head, mean, std, max_tokens, calibration=calibrate_groups(oof, scores, costs, models, target)
    )
    router.card = {
        "head": head.kind,
        "params": [c.param for c in chosen],
        "cv_folds": folds,
        "cv_score": score,
        "candidates": [{"kind": c.kind, "param": c.param, "cv_score": c.score} for c in cands],
        "train_prompts": len(prompts),
        "embedding": f"minilm-l6-v2/t{max_tokens}",
        "trained": time.strftime("%Y-%m-%d"),
    }
    return TrainResult(router, cands, time.perf_counter() - t0)
