"""Train the default quality model that ships in the package, and measure it on the held-out splits.

    python scripts/train_default_router.py            # writes src/modelyard/routing/default_router/router.npz
    python scripts/train_default_router.py --data-dir /elsewhere/routing

Data: the train splits of the three shared datasets (../shared/data/routing beside the checkout, or
--data-dir, or $MODELYARD_ROUTING_DATA; read in place, never copied):
LLMRouter (9 open models), RouteLLM's MMLU/GSM8K/MT-Bench (GPT-4-1106 vs Mixtral-8x7B) and RouterArena
(Claude-3-Haiku vs Gemini-2.0-Flash). Head: logistic regression only (kilobytes, microseconds; a kNN
bank of 18k prompts would not fit the 5 MB budget), L2 chosen by 5-fold cross-fitting. Embedding: MiniLM
over the first 16 tokens, which keeps a decision under 5 ms on two CPU cores (see bench/router_latency.py).
The figures on each test split (with, per calibrated knob, its achieved quality ratio, 90% band and cost against
the cheapest knob reaching the target: `lab.calibration.knob_report`) are stored in the artifact's card and
printed for docs/router_model_card.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modelyard.lab import calibration as calib
from modelyard.lab import converters as cv
from modelyard.lab import datasets as ds
from modelyard.lab import evaluation as ev
from modelyard.lab.embedding_cache import EmbeddingStore
from modelyard.lab.training import train_quality_model
from modelyard.routing.embeddings import MiniLM
from modelyard.routing.learned import DEFAULT_QUALITY_MODEL, HeadKind, QualityModel


def load_all(root: Path) -> ds.LabelledSet:
    rows = []
    for name, convert in cv.CONVERTERS.items():
        for r in convert(root / cv.SOURCE_DIRS[name]):
            r["id"] = f"{name}|{r.get('id') or r['prompt']}"  # a prompt repeated across sources stays apart
            rows.append(r)
    return ds.build_set(rows)


def measure(model: QualityModel, test: ds.LabelledSet, emb: np.ndarray) -> dict[str, object]:
    """Figures on one held-out set, per label group (the three sources have disjoint model sets)."""
    pred_all = model.predict_embedded(emb, test.prompts)
    figures: dict[str, object] = {}
    for models in _groups(test):
        sub = test.with_models(models)
        wanted = set(sub.ids)
        rows = np.array([i for i, p in enumerate(test.ids) if p in wanted])
        cols = np.array([model.models.index(m) for m in models])
        pred = pred_all[np.ix_(rows, cols)]
        rep = ev.many_report(pred, sub.scores, sub.costs, models)
        best = next(p for p in rep.single if models[int(p.knob)] == rep.best_model)
        cal = model.operating_point(models)
        entry: dict[str, object] = {
            "prompts": len(sub),
            "best_model": rep.best_model,
            "best_quality": best.quality,
            "hull_area": rep.hull_area,
            "random_hull_area": rep.random_hull_area,
            "quality_at_best_cost": rep.quality_at_best_cost,
            "cost_for_95_vs_best": {k: v / best.cost for k, v in rep.cost_for_95.items()},
            "oracle_quality": rep.oracle.quality,
        }
        reports: dict[str, object] = {}
        for mode in ev.MODES:
            point = model.operating_point(models, mode)
            if point is not None and set(point["models"]) == set(models):
                got = calib.knob_report(pred, sub.scores, sub.costs, mode, point["knob"], point["target"])
                reports[mode] = got.as_dict()
        entry["calibration"] = reports
        if cal is not None:
            kw = {"threshold": cal["knob"]} if cal["mode"] == "threshold" else {"lam": cal["knob"]}
            o = ev.outcome(ev.choose_batch(pred, sub.costs, **kw), sub.scores, sub.costs)
            entry["calibrated"] = {
                "mode": cal["mode"],
                "knob": cal["knob"],
                "quality": o.quality,
                "cost_vs_best": o.cost / best.cost,
                "accuracy": o.accuracy,
                "decision_accuracy": o.decision_accuracy,
            }
        if len(models) == 2:
            s, w = (0, 1) if sub.scores[:, 0].mean() >= sub.scores[:, 1].mean() else (1, 0)
            for fam in sorted({t.split("/")[0] for t in sub.tasks}):
                keep = np.array([t.split("/")[0] == fam for t in sub.tasks])
                if keep.sum() >= 50:
                    sc = sub.scores[keep]
                    pr = ev.pair_report(pred[keep, s] - pred[keep, w], sc[:, s], sc[:, w])
                    entry[f"apgr/{fam}"] = {
                        "prompts": int(keep.sum()),
                        "apgr": pr.apgr,
                        "cpt50": pr.cpt50,
                        "cpt80": pr.cpt80,
                    }
        figures[" vs ".join(models)] = entry
    return figures


def _groups(data: ds.LabelledSet) -> list[list[str]]:
    seen: dict[tuple[str, ...], None] = {}
    for row in ~np.isnan(data.scores):
        seen[tuple(m for m, ok in zip(data.models, row, strict=True) if ok)] = None
    return [list(g) for g in seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_QUALITY_MODEL)
    where = f"${ds.DATA_ENV}, else ../shared/data/routing"
    ap.add_argument("--data-dir", type=Path, default=None, help=f"shared routing data (default: {where})")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--kind", default="logistic", choices=["logistic", "knn", "auto"])
    args = ap.parse_args()
    root = ds.shared_data_dir(args.data_dir)
    if root is None:
        sys.exit(f"shared routing data not found (--data-dir, ${ds.DATA_ENV} or ../shared/data/routing)")
    data = load_all(root)
    train, test = data.split("train"), data.split("test")
    embedder = MiniLM(max_tokens=args.max_tokens)
    store = EmbeddingStore(embedder.signature)
    t0 = time.perf_counter()
    e_train, e_test = store.embed(embedder, train.prompts), store.embed(embedder, test.prompts)
    kinds: tuple[HeadKind, ...] = ("logistic", "knn") if args.kind == "auto" else (args.kind,)
    result = train_quality_model(
        train.prompts, e_train, train.scores, train.costs, train.models, kinds=kinds, max_tokens=args.max_tokens
    )
    model = result.model
    model.card.update(
        {
            "data": "shared routing data, train splits: LLMRouter (5,608 prompts), RouteLLM MMLU/GSM8K/MT-Bench "
            "and RouterArena (80% by prompt hash)",
            "test": measure(model, test, e_test),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    path = model.save(args.out)
    print(
        f"saved {path} ({path.stat().st_size / 1e6:.2f} MB), head {model.card['head']} "
        f"params {model.card['params']}, trained in {result.seconds:.0f}s"
    )
    print(json.dumps(model.card["test"], indent=2, default=float))
    print(json.dumps(model.calibration, indent=2, default=float))


if __name__ == "__main__":
    main()
