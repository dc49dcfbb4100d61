"""Router training speed with a cold embedding cache, and the held-out quality it buys.

    python bench/router_train.py --data /tmp/r19/llmrouter.jsonl --max-tokens 64
    python bench/router_train.py --data /tmp/r19/llmrouter.jsonl --max-tokens 64,256 --before /tmp/r19/base256.npz

For each --max-tokens: point MODELYARD_CACHE_DIR at a fresh empty folder (no cached embeddings, no cached
ONNX graph), run `modelyard router train` on the train split as a subprocess (wall time, and the CPU time
of the process: on a shared machine the wall time depends on the neighbours, the CPU time much less), then
`modelyard router eval` on the test split (warm cache) and read the lambda sweep's hull area. `--before`
adds the hull area of an existing artifact on the same split, to check "no loss of held-out quality".
Prints one JSON object per line; the machine's load average is recorded beside each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _modelyard() -> list[str]:
    return [sys.executable, "-m", "modelyard.cli.main"]


def hull_area(router: Path, data: Path, split: str, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [*_modelyard(), "router", "eval", "--router", str(router), "--data", str(data), "--split", split]
        subprocess.run([*cmd, "--json", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
        figures = json.loads(out.read_text())
    return {f"hull_area_{k}": float(v) for k, v in figures["many"]["hull_area"].items()}


def train_once(data: Path, tokens: int, split: str, out: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MODELYARD_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        cmd = [*_modelyard(), "router", "train", "--data", str(data), "--split", split]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--max-tokens", str(tokens), "--out", str(out)], check=True, env=env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return {"max_tokens": tokens, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--max-tokens", default="64")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--before", type=Path, help="An existing artifact to compare held-out hull area with.")
    ap.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.before:
        print(json.dumps({"router": str(args.before), **hull_area(args.before, args.data, args.test_split, env)}))
    for tokens in (int(t) for t in args.max_tokens.split(",")):
        out = args.out_dir / f"router_train_t{tokens}.npz"
        row = train_once(args.data, tokens, args.train_split, out)
        row.update(hull_area(out, args.data, args.test_split, env))
        print(json.dumps({"router": str(out), **row}), flush=True)


if __name__ == "__main__":
    main()
