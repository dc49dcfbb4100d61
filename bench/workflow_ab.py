"""The workflow engine before/after: bench/workflow_overhead.py from a git ref and from this checkout, alternated.

    python bench/workflow_ab.py --base a2e2557 [--rounds 5] [--steps 200]

The guide's protocol for "within X%": both sides in one run, the side that goes first alternating, at least
five rounds, the median ratio head/base and its spread, per figure: per-step overhead (chain and wide graphs,
in-memory and SQLite stores) and the 100-way fan-out's engine overhead. The base side runs from a `git worktree`
of `--base` through PYTHONPATH, in the same virtual environment (and with this checkout's script, so both
sides are measured the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb
from ab_gateway import worktree

SCRIPT = Path(__file__).resolve().parent / "workflow_overhead.py"


def figures(src: Path, steps: int) -> dict[str, float]:
    """One run of workflow_overhead.py with `src` first on the path: its figures by name."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", str(steps)], env=env, capture_output=True, text=True
    ).stdout
    found: dict[str, float] = {}
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if row["bench"] == "per_step_overhead":
            found[f"{row['shape']}/{row['store']} ms/step"] = row["ms_per_step"]
        else:
            found["fan-out engine overhead ms"] = row["engine_overhead_ms"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the 'before' side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-wfab-") as tmp_name:
        base_tree = Path(tmp_name) / "base"
        sides = {"base": worktree(args.base, base_tree), "head": gb.ROOT / "src"}
        runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        try:
            for round_no in range(args.rounds):
                order = ["base", "head"] if round_no % 2 == 0 else ["head", "base"]
                for side in order:
                    runs[side].append(figures(sides[side], args.steps))
                print(f"round {round_no + 1}: {runs['head'][-1]}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(gb.ROOT), "worktree", "remove", "--force", str(base_tree)], capture_output=True
            )
    print(f"\nhead vs {args.base}, {args.rounds} rounds alternating (median, ratio head/base median (min-max)):")
    for name in runs["head"][0]:
        base = [run[name] for run in runs["base"]]
        head = [run[name] for run in runs["head"]]
        ratios = sorted(h / b for h, b in zip(head, base, strict=True) if b)
        print(
            f"  {name:28s} base {statistics.median(base):.3f}  head {statistics.median(head):.3f}  "
            f"ratio {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
        )


if __name__ == "__main__":
    main()
