"""Cold start for a new model: N labelled rows through the shared representation vs its own head alone.

    python bench/router_cold_start.py --data /tmp/r19/llmrouter.jsonl      # LLMRouter, 9 models, 3 seeds

For each model M of the data: the router of the other models (logistic head, L2 10 as the shipped one, on
the train split), M given N in {10, 25, 50} random train rows, M's predictions on the test split compared:

- `stacked`: lab.cold_start.fit_from_rows (the other models' logits, prior towards their mean);
- `alone`: a logistic head on M's N rows alone, over the same 397 features, the best of L2 in {1, 10, 100}
  ON THE TEST SPLIT (an optimistic baseline: nobody can pick that with N rows);
- `mean prior`: the stacked model with no row (the other models' mean logit);
- `full`: M's column of the router trained with all train rows of all models.

Metrics on the test split: M's Brier score and AUC (score >= 0.5 as positive), and the hull area (AIQ, as
router train selects by) of the whole model set, M's column replaced. Mean over models and seeds; the
standard deviation over the (model, seed) cells in brackets. Results also go to
bench/results/router_cold_start.json.

The heads are independent per model (one logistic regression per column), so "the router of the other
models" is the full router with M's column dropped: one training instead of one per held-out model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modelyard.lab import cold_start as cs
from modelyard.lab import datasets as ds
from modelyard.lab.embedding_cache import EmbeddingStore
from modelyard.lab.training import fit_logistic, routing_score, train_quality_model
from modelyard.routing.embeddings import MiniLM
from modelyard.routing.learned import Blend, LogisticHead, QualityModel, sigmoid


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC (ties counted half); NaN when one class is missing."""
    pos, neg = p[y >= 0.5], p[y < 0.5]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def without(model: QualityModel, j: int) -> QualityModel:
    """The router with column j dropped (logistic heads only: columns are independent)."""
    parts = []
    for part in model.head.parts:
        assert isinstance(part, LogisticHead)
        keep = [c for c in range(part.weights.shape[1]) if c != j]
        parts.append(LogisticHead(part.weights[:, keep].astype(np.float64), part.bias[keep].astype(np.float64)))
    models = [m for i, m in enumerate(model.models) if i != j]
    return QualityModel(models, Blend(parts, model.head.weights), model.feature_mean, model.feature_std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="labelled JSONL with train/test splits")
    ap.add_argument("--sizes", default="10,25,50")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prior-rows", default=f"{cs.PRIOR_ROWS:g}", help="comma list: report each")
    ap.add_argument("--bias-rows", default="same", help="comma list: prior on the bias (same = prior-rows, 0 = free)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "router_cold_start.json")
    args = ap.parse_args()

    data = ds.drop_train_duplicates(ds.load_labelled(args.data)).complete()
    train, test = data.split("train"), data.split("test")
    embedder = MiniLM(max_tokens=args.max_tokens)
    store = EmbeddingStore(embedder.signature)
    e_tr, e_te = store.embed(embedder, train.prompts), store.embed(embedder, test.prompts)
    t0 = time.perf_counter()
    full = train_quality_model(
        train.prompts, e_tr, train.scores, train.costs, train.models, kinds=("logistic",), l2_grid=(10.0,), folds=2
    ).model
    print(f"full router: {len(train)} train prompts x {len(train.models)} models in {time.perf_counter() - t0:.1f}s")
    p_full = full.predict_embedded(e_te, test.prompts)
    x_tr = full.features(e_tr, train.prompts)
    x_te = full.features(e_te, test.prompts)
    sizes = [int(s) for s in args.sizes.split(",")]
    priors = [float(v) for v in args.prior_rows.split(",")]
    bias_rows = [None if v == "same" else float(v) for v in args.bias_rows.split(",")]
    cells: dict[str, list[tuple[float, float, float]]] = {}

    def record(key: str, p_col: np.ndarray, j: int) -> None:
        y = test.scores[:, j]
        pred = p_full.copy()
        pred[:, j] = p_col
        cells.setdefault(key, []).append(
            (float(np.mean((p_col - y) ** 2)), auc(p_col, y), routing_score(pred, test.scores, test.costs))
        )

    for j in range(len(train.models)):
        base = without(full, j)
        z_tr = cs.trained_logits(base, e_tr, train.prompts)
        z_te = cs.trained_logits(base, e_te, test.prompts)
        record("full (all rows)", p_full[:, j], j)
        coef0, b0 = cs.fit_stacked(z_tr[:0], np.zeros(0))
        record("mean prior (0 rows)", np.asarray(sigmoid(z_te @ coef0 + b0)), j)
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + j)
            order = rng.permutation(len(train))
            for n in sizes:
                rows = order[:n]
                y = train.scores[rows, j]
                for prior in priors:
                    for bias in bias_rows:
                        coef, b = cs.fit_stacked(z_tr[rows], y, prior_rows=prior, bias_rows=bias)
                        label = f"stacked prior={prior:g}" + ("" if bias is None else f" bias={bias:g}")
                        record(f"{label} N={n}", np.asarray(sigmoid(z_te @ coef + b)), j)
                best: tuple[float, np.ndarray] | None = None
                for l2 in (1.0, 10.0, 100.0):
                    head = fit_logistic(x_tr[rows], y[:, None], l2=l2)
                    p = head(x_te, e_te)[:, 0]
                    brier = float(np.mean((p - test.scores[:, j]) ** 2))
                    if best is None or brier < best[0]:
                        best = (brier, p)
                assert best is not None
                record(f"alone (best L2 on test) N={n}", best[1], j)

    print(f"{'method':42} {'Brier':>16} {'AUC':>16} {'hull area':>16}   cells")
    summary: dict[str, Any] = {}
    for key, vals in cells.items():
        arr = np.array(vals)
        mean, sd = np.nanmean(arr, 0), np.nanstd(arr, 0)
        summary[key] = {"brier": mean[0], "auc": mean[1], "hull_area": mean[2], "sd": sd.tolist(), "cells": len(arr)}
        cols = " ".join(f"{m:.4f} ({s:.4f})" for m, s in zip(mean, sd, strict=True))
        print(f"{key:42} {cols}   {len(arr)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"data": args.data.name, "train": len(train), "test": len(test), "models": train.models}
    args.out.write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
