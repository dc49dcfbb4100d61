"""The learned quality model at request time: a prompt in, P(good answer) per known model out.

Features are the prompt's MiniLM sentence embedding plus a few cheap text statistics (length, digits, code
and maths markers, multiple-choice layout). Two predictor heads, both numpy-only:

- ``logistic``: one L2-regularised logistic regression per model on the features;
- ``knn``: a similarity-weighted mean of the nearest training prompts' scores, shrunk towards the model's
  overall mean.

This module loads, runs and writes the artifact (one `.npz`, no pickle: the gateway loads it); training,
calibration and evaluation live in `modelyard.lab`, which the gateway never imports.

The seam for the routing engine: `QualityPredictor` and `load_quality_model`.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from modelyard.routing.embeddings import MAX_TOKENS, Embedder, MiniLM
from modelyard.schema.errors import ModelyardError

Array = NDArray[np.float64]
Floats = NDArray[np.float32]
HeadKind = Literal["logistic", "knn"]
FORMAT = "modelyard.router/v1"
_ZIP_MAGIC = b"PK\x03\x04"  # how every .npz (a zip archive) starts
#: The quality model that ships in the package (trained by scripts/train_default_router.py).
DEFAULT_QUALITY_MODEL = Path(__file__).resolve().parent / "default_router" / "router.npz"
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
    """What the `learned` strategy and the lab's replay need: per-model success probabilities for prompts."""

    models: list[str]

    def predict(self, prompt: str) -> dict[str, float]: ...

    def predict_batch(self, prompts: list[str]) -> NDArray[np.float64]: ...


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


def sigmoid(z: Array) -> Array:
    """The logistic function, written with tanh so large |z| neither overflows nor warns."""
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


class LogisticHead:
    """P(good) = sigmoid(x . w_m + b_m), one column per model."""

    kind: HeadKind = "logistic"

    def __init__(self, weights: Array, bias: Array) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)

    def __call__(self, x: Floats, emb: Floats) -> Array:
        return sigmoid((x @ self.weights + self.bias).astype(np.float64))

    def arrays(self) -> dict[str, NDArray[Any]]:
        return {"weights": self.weights, "bias": self.bias}


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


@dataclass(frozen=True)
class AddedModel:
    """A model added after training (`modelyard router add-model`) without refitting the heads.

    Its P(good) is read off the trained models' predictions for the same prompt:
    ``sigmoid(coef . logit(P_trained) + bias)``. The trained models' logits are the prompt representation
    the heads learned, shared; a new model only fits its coordinates in that space (one per trained model,
    plus a bias), which a few dozen labelled rows can do and a per-model head over 397 features cannot.
    """

    name: str
    coef: tuple[float, ...]  # one per trained model, in `QualityModel.trained_models` order
    bias: float
    source: dict[str, Any] = field(default_factory=dict)  # how it was fitted, for the card

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "coef": list(self.coef), "bias": self.bias, "source": self.source}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AddedModel:
        coef = tuple(float(c) for c in raw["coef"])
        return cls(str(raw["name"]), coef, float(raw["bias"]), dict(raw.get("source", {})))


#: Probabilities are clipped this far from 0 and 1 before their logit is taken (added models' inputs).
LOGIT_EPS = 1e-3


def logit(p: Array) -> Array:
    """The inverse of `sigmoid`, on probabilities clipped to [LOGIT_EPS, 1 - LOGIT_EPS]."""
    q = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    out: Array = np.log(q / (1.0 - q))
    return out


def _part_from(kind: str, arrays: Mapping[str, NDArray[Any]]) -> Part:
    if kind == "logistic":
        return LogisticHead(arrays["weights"], arrays["bias"])
    if kind == "knn":
        labels = arrays["labels"].astype(np.float32)
        return KnnHead(arrays["bank"], labels, int(arrays["k"]), float(arrays["alpha"]))
    raise ValueError(f"unknown predictor head {kind!r}")


# --- the artifact ------------------------------------------------------------------------------------


@dataclass
class QualityModel:
    """A trained quality model (implements `QualityPredictor`): the `learned` strategy's predictor.

    `models` lists the head's columns, then the `added` models (router add-model) in order.
    """

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
    #: Models added after training; their names end `models` (see AddedModel).
    added: list[AddedModel] = field(default_factory=list)

    @property
    def trained_models(self) -> list[str]:
        """The models the heads predict (the artifact's own columns, before any added model)."""
        return self.models[: len(self.models) - len(self.added)]

    def with_added(self, extra: AddedModel) -> QualityModel:
        """A copy that also predicts `extra` (the heads, calibration and embedder are shared, not copied)."""
        if extra.name in self.models:
            raise ValueError(f"{extra.name!r} is already one of the router's models")
        if len(extra.coef) != len(self.trained_models):
            raise ValueError(f"{extra.name!r}: {len(extra.coef)} coefficients for {len(self.trained_models)} models")
        return replace(self, models=[*self.models, extra.name], added=[*self.added, extra])

    def ready_embedder(self) -> Embedder:
        """The embedder, loaded on first use (the configured one, else MiniLM at `max_tokens`)."""
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
        base: Array = np.clip(self.head(self.features(e, prompts), e), 0.0, 1.0)
        if not self.added:
            return base
        coef = np.array([a.coef for a in self.added], dtype=np.float64).T  # (trained, added)
        bias = np.array([a.bias for a in self.added], dtype=np.float64)
        return np.hstack([base, sigmoid(logit(base) @ coef + bias)])

    def predict_batch(self, prompts: list[str]) -> Array:
        """(n, len(models)) P(good answer); the batch path for replay and evaluation."""
        return self.predict_embedded(self.ready_embedder().embed(prompts), prompts)

    def predict(self, prompt: str) -> dict[str, float]:
        """P(good answer) per known model for one prompt: the hot path (one embedding, one matrix product)."""
        return self.predict_with_vector(prompt)[0]

    def predict_with_vector(self, prompt: str) -> tuple[dict[str, float], NDArray[Any]]:
        """`predict`, and the prompt's embedding it was made from (the gateway keeps it for learning)."""
        emb = self.ready_embedder()
        one = getattr(emb, "embed_one", None)
        vec = one(prompt)[None, :] if callable(one) else emb.embed([prompt])
        row = self.predict_embedded(vec, [prompt])[0]
        return {m: float(p) for m, p in zip(self.models, row, strict=True)}, vec

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
            "models": self.trained_models,
            "max_tokens": self.max_tokens,
            "heads": [{"kind": p.kind, "weight": float(w)} for p, w in parts],
            "text_features": list(TEXT_FEATURES),
            "calibration": self.calibration,
            "card": self.card,
        }
        if self.added:  # absent otherwise: an artifact without added models is byte-for-byte what it was
            meta["added"] = [a.to_json() for a in self.added]
        arrays: dict[str, Any] = {f"h{i}_{k}": v for i, p in enumerate(self.head.parts) for k, v in p.arrays().items()}
        arrays["feature_mean"], arrays["feature_std"] = self.feature_mean, self.feature_std
        np.savez_compressed(target, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return target

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> QualityModel:
        """The artifact at `path` (an .npz, or a directory holding router.npz).

        Raises OSError when the file cannot be read (missing, a permission) and `RouterFileError` for a file
        that is not a usable router (empty, truncated, another npz, wrong shapes): one message each, because
        operators meet these in a CLI line or a gateway's start-up error, never in a traceback.
        """
        source = Path(path)
        if source.is_dir():
            source = source / "router.npz"
        with source.open("rb") as f:  # OSError (missing, a folder, a permission) goes out as it is
            magic = f.read(4)
        if magic != _ZIP_MAGIC:  # np.load would try a pickle here and suggest allow_pickle: never for a router
            why = "the file is empty" if not magic else "not an npz archive (it does not start like a zip file)"
            raise RouterFileError(f"{source} is not a modelyard router: {why}")
        try:
            with np.load(source, allow_pickle=False) as z:
                model = cls._from_npz(z, embedder)
            _check_shapes(model)
        except RouterFileError as exc:
            raise RouterFileError(f"{source} {exc}") from None
        except OSError:
            raise
        except (EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise RouterFileError(f"{source} is not a modelyard router: not a whole npz archive ({exc})") from None
        except KeyError as exc:
            raise RouterFileError(f"{source} is not a modelyard router: no {exc} in it") from None
        except (ValueError, TypeError, AttributeError, IndexError) as exc:  # JSON and decode errors included
            raise RouterFileError(f"{source} is not a modelyard router: {type(exc).__name__}: {exc}") from None
        return model

    @classmethod
    def _from_npz(cls, z: Any, embedder: Embedder | None) -> QualityModel:
        if "meta" not in z.files:
            raise RouterFileError("is not a modelyard router: it has no `meta` array (another npz?)")
        meta = json.loads(bytes(z["meta"]).decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RouterFileError(f"is not a modelyard router: its meta does not say format {FORMAT}")
        if meta.get("text_features") != list(TEXT_FEATURES):
            raise RouterFileError("was trained with other text features; retrain it")
        parts = []
        for i, h in enumerate(meta["heads"]):
            own = {k.split("_", 1)[1]: z[k] for k in z.files if k.startswith(f"h{i}_")}
            parts.append(_part_from(h["kind"], own))
        if not parts:
            raise RouterFileError("is not a modelyard router: it has no predictor head")
        head = Blend(parts, [float(h["weight"]) for h in meta["heads"]])
        added = [AddedModel.from_json(a) for a in meta.get("added", [])]
        return cls(
            models=[*(str(m) for m in meta["models"]), *(a.name for a in added)],
            head=head,
            feature_mean=z["feature_mean"],
            feature_std=z["feature_std"],
            max_tokens=int(meta["max_tokens"]),
            calibration=list(meta.get("calibration", [])),
            card=dict(meta.get("card", {})),
            embedder=embedder,
            added=added,
        )


def _embedding_length(part: Part, n_text: int) -> int:
    """The embedding length a head was trained on (0 when its arrays have the wrong number of axes)."""
    if isinstance(part, LogisticHead):
        return int(part.weights.shape[0]) - n_text if part.weights.ndim == 2 else 0
    return int(part.bank.shape[1]) if part.bank.ndim == 2 else 0


class RouterFileError(ModelyardError, ValueError):
    """A file that is not a usable router artifact (its message names the file and what is wrong)."""


def _check_shapes(model: QualityModel) -> None:
    """Raise `RouterFileError` unless the arrays fit together: one prediction of a zero embedding runs and
    gives one finite probability per model. Cheap (one row), and it turns a hand-edited or mixed-up artifact
    into a load-time error instead of a shape error on the first request."""
    if len(set(model.models)) != len(model.models) or not model.trained_models:
        raise RouterFileError("is not a modelyard router: its model list is empty or repeats a name")
    n_text = len(TEXT_FEATURES)
    if np.shape(model.feature_mean) != (n_text,) or np.shape(model.feature_std) != (n_text,):
        raise RouterFileError(f"is not a modelyard router: the text feature scaling is not {n_text} numbers")
    dims = {_embedding_length(p, n_text) for p in model.head.parts}
    if len(dims) != 1 or min(dims) <= 0 or model.max_tokens <= 0:
        raise RouterFileError("is not a modelyard router: its heads disagree on the embedding's length")
    try:
        row = model.predict_embedded(np.zeros((1, dims.pop()), np.float32), [""])
    except (ValueError, IndexError) as exc:
        raise RouterFileError(f"is not a modelyard router: its arrays do not fit together ({exc})") from None
    if row.shape != (1, len(model.models)) or not np.isfinite(row).all():
        raise RouterFileError("is not a modelyard router: its heads do not give one probability per model")


def load_quality_model(path: str | Path | None = None, embedder: Embedder | None = None) -> QualityModel:
    """A trained model from `path` (an .npz or a directory holding router.npz); None: the shipped default.

    Cheap: the embedding model loads on the first prediction (or `QualityModel.warm()`).
    """
    return QualityModel.load(DEFAULT_QUALITY_MODEL if path is None else path, embedder)


# --- label groups (the kNN head searches each separately; training scores each) -------------------------


def label_groups(scores: NDArray[Any]) -> list[tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """(rows, model columns) for each set of prompts labelled for the same models."""
    patterns: dict[bytes, list[int]] = {}
    for i, row in enumerate(~np.isnan(scores)):
        patterns.setdefault(row.tobytes(), []).append(i)
    return [(np.array(rows), np.flatnonzero(np.frombuffer(k, dtype=bool))) for k, rows in patterns.items()]
