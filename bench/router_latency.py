"""Decision latency of the learned router on this CPU: embedding, prediction and choice, one prompt at a time.

    python bench/router_latency.py                       # the shipped default router, 300 prompts
    python bench/router_latency.py --router r.npz --max-tokens 16,32,256 --backend onnx,numpy

Prompts are a fixed sample of the shared routing data (LLMRouter test, MMLU, GSM8K) when it is found
(--data-dir, $MODELYARD_ROUTING_DATA or ../shared/data/routing), else synthetic prompts of similar lengths.
Each prompt is timed once after a warm-up; the batch path (`predict_batch`, used by replay and eval) is
timed for throughput. Results print as a table and go to bench/results/router_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modelyard.lab import converters as cv
from modelyard.lab import datasets as ds
from modelyard.lab.evaluation import choose
from modelyard.routing.embeddings import MiniLM
from modelyard.routing.learned import load_quality_model


def sample_prompts(n: int, seed: int = 0, data_dir: Path | None = None) -> list[str]:
    root = ds.shared_data_dir(data_dir)
    rng = random.Random(seed)
    if root is None:
        words = "route this prompt to a model that can answer the question about maths code or facts".split()  # noqa: SIM905
        return [" ".join(rng.choices(words, k=rng.randint(5, 120))) for _ in range(n)]
    pools = [
        ds.build_set(cv.convert_llmrouter(root / cv.SOURCE_DIRS["llmrouter"])).split("test").prompts,
        ds.build_set(cv.convert_routellm(root / cv.SOURCE_DIRS["routellm"], ("mmlu",))).prompts,
        ds.build_set(cv.convert_routellm(root / cv.SOURCE_DIRS["routellm"], ("gsm8k",))).prompts,
    ]
    per = n // len(pools)
    return [p for pool in pools for p in rng.sample(pool, per)]


def percentiles(ms: list[float]) -> dict[str, float]:
    q = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(q[0]), "p90_ms": float(q[1]), "p99_ms": float(q[2]), "mean_ms": statistics.fmean(ms)}


def time_each(fn: Any, prompts: list[str]) -> list[float]:
    for p in prompts[:10]:
        fn(p)
    out = []
    for p in prompts:
        t = time.perf_counter()
        fn(p)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def run(
    router_path: str | None, prompts: list[str], max_tokens: int, backend: str, threads: int | None
) -> dict[str, Any]:
    embedder = MiniLM(max_tokens=max_tokens, backend=backend, threads=threads)  # type: ignore[arg-type]
    model = load_quality_model(router_path, embedder=embedder)
    model.max_tokens = max_tokens
    costs = {m: float(i + 1) for i, m in enumerate(model.models)}
    embed_ms = time_each(embedder.embed_one, prompts)
    decide_ms = time_each(lambda p: choose(model.predict(p), costs, lam=0.3), prompts)
    t = time.perf_counter()
    model.predict_batch(prompts)
    batch_s = time.perf_counter() - t
    lengths = [len(x.ids) for x in embedder.tokenizer.encode_batch(prompts)]
    return {
        "backend": embedder.backend,
        "max_tokens": max_tokens,
        "threads": threads or "default",
        "tokens_p50": float(np.median(lengths)),
        "embed": percentiles(embed_ms),
        "decision": percentiles(decide_ms),
        "batch_prompts_per_s": len(prompts) / batch_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", default=None, help="artifact (default: the shipped router)")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--max-tokens", default=None, help="comma list (default: the router's own)")
    ap.add_argument("--backend", default="auto", help="comma list of auto, onnx, numpy")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results/router_latency.json")
    ap.add_argument("--data-dir", type=Path, default=None, help="shared routing data folder (default: found)")
    args = ap.parse_args()
    prompts = sample_prompts(args.prompts, data_dir=args.data_dir)
    own = load_quality_model(args.router).max_tokens
    sizes = [int(x) for x in args.max_tokens.split(",")] if args.max_tokens else [own]
    rows = [run(args.router, prompts, n, b, args.threads) for b in args.backend.split(",") for n in sizes]
    print(f"{len(prompts)} prompts, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(
        f"{'backend':8} {'max_tok':>7} {'tok p50':>7} {'embed p50':>10} {'decide p50':>11} {'p90':>7} {'p99':>7} "
        f"{'batch/s':>8}"
    )
    for r in rows:
        d = r["decision"]
        print(
            f"{r['backend']:8} {r['max_tokens']:7d} {r['tokens_p50']:7.0f} {r['embed']['p50_ms']:8.2f}ms "
            f"{d['p50_ms']:9.2f}ms {d['p90_ms']:5.1f}ms {d['p99_ms']:5.1f}ms {r['batch_prompts_per_s']:8.0f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"prompts": len(prompts), "cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
