"""Feedback samples (the store's `feedback_samples`) as labelled rows that `router retrain` merges with its data.

Each sample is one verdict on one answer: the deployment that answered, a score in [0, 1], and what the spend
row kept of the prompt: its embedding in the learned router's space (always, when the request was analysed)
and its text (only with `log_content`). So:

- the model is the deployment's `router_model` (from a gateway config when one is given), else the
  deployment's name, else the route's;
- the prompt is its text when logged, else only its embedding, used directly;
- an embedding of another space than the artifact's (another MiniLM length, another model) cannot be
  compared with the training rows: the sample is skipped and counted, as are samples with neither text nor
  embedding and samples for models the training data does not have;
- several verdicts on the same prompt and model are averaged into one label.

Rows known only by their embedding have no text, and the router's features include a few text statistics
(length, digits, code markers...). `merge_feedback` gives such a row the text features of the most similar
training prompt (by embedding cosine): the statistics of a prompt that the embedding says is alike, rather
than the training mean, which describes no prompt. This is an imputation and the summary says how many
rows got it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.state.feedback import FeedbackSample, decode_embedding

Vectors = NDArray[np.float32]


@dataclass
class FeedbackRows:
    """Labelled rows from feedback: one per (prompt, model), the mean of its verdicts."""

    prompts: list[str | None]  # None: known by its embedding only
    embeddings: list[Vectors | None]  # the stored vector; None: text only (the caller embeds it)
    models: list[str]
    scores: list[float]
    verdicts: list[int]  # how many feedbacks each row averages
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


def feedback_rows(
    samples: Sequence[FeedbackSample],
    *,
    space: str,
    known_models: Sequence[str],
    router_models: Mapping[str, str] | None = None,
    dim: int = 384,
) -> FeedbackRows:
    """Turn samples into averaged labelled rows for the models in `known_models` (see the module doc)."""
    known = set(known_models)
    skipped: dict[str, int] = {}
    groups: dict[tuple[str, str], list[Any]] = {}  # (prompt key, model) -> [prompt, emb, sum, count]

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for s in samples:
        dep = s.deployment or s.model
        model = (router_models or {}).get(dep, dep) if dep else None
        if model is None or model not in known:
            skip("model unknown to the training data")
            continue
        if not 0.0 <= s.score <= 1.0:  # NaN fails this too
            skip("score outside [0, 1]")
            continue
        vec = _vector(s.embedding, space, dim) if s.embedding else None
        if s.embedding and vec is None and s.content is None:
            skip("embedding of another space (or unreadable)")
            continue
        if s.content is None and vec is None:
            skip("neither prompt text nor embedding kept")
            continue
        if s.content is not None:
            key = "t:" + s.content
        else:
            assert vec is not None
            key = "e:" + hashlib.blake2b(vec.tobytes(), digest_size=16).hexdigest()
        entry = groups.setdefault((key, model), [s.content, vec, 0.0, 0])
        entry[2] += s.score
        entry[3] += 1
    rows = FeedbackRows([], [], [], [], [], skipped)
    for (_, model), (text, vec, total, count) in groups.items():
        rows.prompts.append(text)
        rows.embeddings.append(vec)
        rows.models.append(model)
        rows.scores.append(total / count)
        rows.verdicts.append(count)
    return rows


def _vector(value: str, space: str, dim: int) -> Vectors | None:
    try:
        got, raw = decode_embedding(value)
    except ValueError:
        return None
    vec = np.frombuffer(raw, dtype=np.float32)
    if got != space or len(vec) != dim or not np.isfinite(vec).all():
        return None
    return vec.copy()


@dataclass
class Merged:
    """Training data with the feedback rows appended (NaN where a row has no label for a model)."""

    prompts: list[str]  # an embedding-only row carries its nearest training prompt (text features only)
    emb: Vectors
    scores: NDArray[np.float64]
    costs: NDArray[np.float64]
    models: list[str]
    added_rows: int
    imputed_rows: int


def merge_feedback(
    prompts: Sequence[str],
    emb: NDArray[Any],
    scores: NDArray[np.float64],
    costs: NDArray[np.float64],
    models: Sequence[str],
    rows: FeedbackRows,
    text_emb: Vectors | None = None,
) -> Merged:
    """Append `rows` to the training matrices. A row's stored vector is used as it is; `text_emb` holds the
    embeddings of the rows with text and no vector, in order. Embedding-only rows get the text features of
    the nearest training prompt. Feedback rows have no cost (NaN): they teach quality, not price, and the
    calibration skips them."""
    col = {m: j for j, m in enumerate(models)}
    base = np.asarray(emb, np.float32)
    n = len(rows)
    new_emb = np.zeros((n, base.shape[1]), np.float32)
    new_prompts: list[str] = []
    texts = iter(text_emb if text_emb is not None else np.zeros((0, base.shape[1]), np.float32))
    imputed = 0
    for i, (text, vec) in enumerate(zip(rows.prompts, rows.embeddings, strict=True)):
        if vec is None:
            vec = next(texts, None)
            if vec is None:
                raise ValueError("no embedding for a feedback row known by its text only (pass text_emb)")
        new_emb[i] = vec
        if text is not None:
            new_prompts.append(text)
        else:
            new_prompts.append(prompts[int(np.argmax(base @ new_emb[i]))] if len(prompts) else "")
            imputed += 1
    new_scores = np.full((n, len(models)), np.nan)
    for i, (m, s) in enumerate(zip(rows.models, rows.scores, strict=True)):
        new_scores[i, col[m]] = s
    return Merged(
        prompts=[*prompts, *new_prompts],
        emb=np.vstack([base, new_emb]),
        scores=np.vstack([scores, new_scores]),
        costs=np.vstack([costs, np.full((n, len(models)), np.nan)]),
        models=list(models),
        added_rows=n,
        imputed_rows=imputed,
    )
