"""Semantic cache precision: false hits and paraphrase hits over a threshold sweep, with and without the guard.

Each labelled pair (src/modelyard/lab/cache_pairs.py: the full set of 4,900, rebuilt from the shared routing
data with its fixed seed, or a file given with --pairs) is one stored
prompt and one new prompt. Without the guard a pair hits when the embeddings' cosine reaches the threshold;
with it, when the normalised texts are equal or the cosine reaches the threshold and the guard accepts.
Also measured: the guard's cost per candidate (fingerprint of the new prompt + check), which is what a
candidate hit pays on top of the lookup.

    python bench/semantic_cache_precision.py [--data-dir ../shared/data/routing | --pairs pairs.jsonl] [--show 20]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modelyard.lab.cache_pairs import read_pairs, shared_pairs
from modelyard.lab.embedding_cache import EmbeddingStore
from modelyard.routing.cache_guard import PrecisionGuard, fingerprint
from modelyard.routing.embeddings import MiniLM
from modelyard.routing.intelligence import FULL_TOKENS

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98)


def embed_all(texts: list[str], embedder: MiniLM, cache: Path) -> np.ndarray:
    """Unit vectors of `texts`, through the lab's disk cache (the sweep is re-run, the embedding is not)."""
    vecs = np.asarray(EmbeddingStore(embedder.signature, cache).embed(embedder, texts), np.float32)
    unit: np.ndarray = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return unit


#: Antonyms none of the guard's word lists holds: what the synonym check alone lets through.
UNSEEN_ANTONYMS = str.split(
    "rent accept:decline arrive:depart asleep:awake attack:defend borrow:lend bright:dark brave:cowardly "
    "victory:defeat friend:enemy generous:stingy guilty:innocent heaven:hell hero:villain honest:dishonest "
    "humble:proud inhale:exhale justice:injustice knowledge:ignorance lead:follow loud:quiet major:minor "
    "maximize:minimize mortal:immortal optimist:pessimist ordinary:extraordinary partial:complete "
    "permanent:temporary plural:singular polite:impolite predator:prey private:public rural:urban sink:float "
    "sober:drunk solid:liquid sweet:sour teach:learn thin:fat tight:loose vertical:horizontal "
    "visible:invisible wet:dry wild:tame wise:foolish ascending:descending upload:download client:server "
    "sender:receiver buyer:seller parent:child employer:employee landlord:tenant push:pull send:receive "
    "synchronous:asynchronous mutable:immutable static:dynamic inner:outer vowel:consonant acid:base "
    "cation:anion oxidation:reduction numerator:denominator prime:composite convex:concave union:intersection "
    "debit:credit asset:liability supply:demand inflation:deflation bullish:bearish"
)[1:]


def antonym_probe(embedder: MiniLM, synonym_similarity: float) -> None:
    pairs = [tuple(p.split(":")) for p in UNSEEN_ANTONYMS]
    words = sorted({w for p in pairs for w in p})
    vecs = np.asarray(embedder.embed(words), np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    at = {w: vecs[i] for i, w in enumerate(words)}
    sims = np.array([float(at[a] @ at[b]) for a, b in pairs])
    print(f"\nunseen antonyms ({len(pairs)} pairs in no word list) the synonym check would pass:")
    for cut in sorted({0.6, 0.7, 0.75, 0.8, 0.85, synonym_similarity}):
        print(f"  synonym_similarity {cut:.2f}: {int((sims >= cut).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=None, help="a pair file (default: the full set, rebuilt)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the shared routing data (default: found)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/modelyard-bench"))
    parser.add_argument("--default", type=float, default=None, help="the threshold to break down by kind")
    parser.add_argument("--synonym", type=float, default=None, help="the guard's synonym_similarity")
    parser.add_argument("--show", type=int, default=10, help="false hits with the guard to print")
    args = parser.parse_args()

    pairs = read_pairs(args.pairs) if args.pairs is not None else shared_pairs(args.data_dir)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    index = {t: i for i, t in enumerate(texts)}
    embedder = MiniLM(max_tokens=FULL_TOKENS)
    t0 = time.perf_counter()
    vecs = embed_all(texts, embedder, args.cache)
    print(f"{len(pairs)} pairs, {len(texts)} texts embedded in {time.perf_counter() - t0:.1f}s")
    sims = np.array([float(vecs[index[p.a]] @ vecs[index[p.b]]) for p in pairs])
    label = np.array([p.hit for p in pairs])

    guard = (
        PrecisionGuard(embedder) if args.synonym is None else PrecisionGuard(embedder, synonym_similarity=args.synonym)
    )
    t0 = time.perf_counter()
    prints = {t: fingerprint(t) for t in texts}
    fp_us = (time.perf_counter() - t0) / len(texts) * 1e6
    same = np.zeros(len(pairs), bool)
    agree = np.zeros(len(pairs), bool)
    reasons: Counter[str] = Counter()
    check_us = []
    for i, p in enumerate(pairs):
        fa, fb = prints[p.a], prints[p.b]
        if fa is None or fb is None:
            continue
        t = time.perf_counter()
        verdict = guard.check(fb, fa)
        check_us.append((time.perf_counter() - t) * 1e6)
        same[i] = fa.key == fb.key
        agree[i] = verdict.agree
        if not verdict.agree:
            reasons[verdict.reason.split(":")[0].split(" (")[0]] += 1
    # a check's cost again, with the word vectors warm (what a busy cache pays)
    warm = []
    for p in pairs:
        fa, fb = prints[p.a], prints[p.b]
        if fa is not None and fb is not None:
            t = time.perf_counter()
            guard.check(fb, fa)
            warm.append((time.perf_counter() - t) * 1e6)

    n_pos, n_neg = int(label.sum()), int((~label).sum())
    print(f"\n{n_pos} paraphrases, {n_neg} near misses\n")
    print(
        "| threshold | no guard: false hits | no guard: paraphrase hits | guard: false hits "
        "| guard: paraphrase hits | guard: precision |"
    )
    print("|---|---|---|---|---|---|")
    sweep: list[tuple[float, float, float]] = []
    for thr in THRESHOLDS:
        raw = sims >= thr
        guarded = same | (raw & agree)
        fp_raw, fp_g = int((raw & ~label).sum()), int((guarded & ~label).sum())
        tp_raw, tp_g = int((raw & label).sum()), int((guarded & label).sum())
        precision = tp_g / max(tp_g + fp_g, 1)
        print(
            f"| {thr:.2f} | {fp_raw / n_neg:.2%} ({fp_raw}) | {tp_raw / n_pos:.1%} | {fp_g / n_neg:.2%} ({fp_g}) | "
            f"{tp_g / n_pos:.1%} | {precision:.2%} |"
        )
        sweep.append((thr, fp_g / n_neg, tp_g / n_pos))
    # The default: the highest threshold within half a point of the best paraphrase hit rate among those
    # with false hits <= 0.1% (a higher one offers the guard fewer candidates: less work, less exposure).
    fine = [r for r in sweep if r[1] <= 0.001]
    best = max((r[2] for r in fine), default=None)
    pick = max((r[0] for r in fine if best is not None and r[2] >= best - 0.005), default=0.95)
    default = args.default if args.default is not None else pick
    guarded = same | ((sims >= default) & agree)
    print(f"\nby kind at threshold {default:.2f} (guard on; no guard in brackets):")
    for kind in dict.fromkeys(p.kind for p in pairs):
        rows = np.array([p.kind == kind for p in pairs])
        pos = bool(label[rows][0])
        rate = guarded[rows].mean()
        raw_rate = (sims[rows] >= default).mean()
        what = "paraphrase" if pos else "near miss"
        print(f"  {kind:16s} {what:10s} n={int(rows.sum()):4d} hits {rate:6.1%} ({raw_rate:6.1%})")
    print("\nguard refusals by reason (all pairs):", dict(reasons.most_common()))
    cold = np.array(check_us)
    hot = np.array(warm)
    print(
        f"\nguard cost: fingerprint {fp_us:.0f} us per prompt (mean over {len(texts)}); check: cold mean "
        f"{cold.mean():.0f} us p99 {np.percentile(cold, 99):.0f} us, warm word vectors mean {hot.mean():.0f} us "
        f"p99 {np.percentile(hot, 99):.0f} us"
    )
    sample = texts[:: max(len(texts) // 100, 1)][:100]
    embedder.embed_one(sample[0])
    spent = []
    for text in sample:
        t = time.perf_counter()
        embedder.embed_one(text)
        spent.append((time.perf_counter() - t) * 1e3)
    print(
        f"for scale, the embedding the request already pays: median {np.median(spent):.1f} ms "
        f"over {len(sample)} prompts"
    )
    antonym_probe(embedder, guard.synonym_similarity)
    shown = 0
    for i, p in enumerate(pairs):
        if guarded[i] and not p.hit and shown < args.show:
            shown += 1
            print(f"\nFALSE HIT ({p.kind}, {sims[i]:.3f}): {p.a[:200]!r}\n  vs {p.b[:200]!r}")


if __name__ == "__main__":
    main()
