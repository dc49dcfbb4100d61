"""Before/after: modelyard at a git ref against the working tree, alternated in one run.

    python bench/ab_gateway.py --base 1bc281e                 # 5 rounds, c=16, plain and streaming
    python bench/ab_gateway.py --base HEAD~3 --rounds 7 --duration 6 --scenarios c16
    python bench/ab_gateway.py --base 3e52848 --scenarios c1     # the c=1 p99, before/after
    python bench/ab_gateway.py --base HEAD --head-src build/compiled   # pure Python vs the compiled hot path

The developers' guide's protocol for every "within X%" claim: both sides in the same run, alternating
(which side goes first alternates too), at least five rounds, the median ratio and its spread reported.
Each side is `modelyard serve` with every feature on (bench/configs/everything_on.yaml, the row chosen by
`--variant`: plain, guardrails or redis; each side self-checked before it is measured; a base older than a
field of that file refuses to start, naming it),
behind wrk with bench/chat.lua, against bench/upstream.py. The base side runs from a `git worktree` of
`--base` through PYTHONPATH, in the same virtual environment; `--head-src` runs the head side from another
source directory the same way (`scripts/compile`'s build/compiled: the same code with its hot path compiled).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import everything_on
import gateway_bench as gb

#: name: (connections, streamed). `c1` is the latency one: its p99 is compared too (issue #20's c=1 tail).
SCENARIOS = {"c1": (1, False), "c16": (16, False), "c64": (64, False), "stream-c16": (16, True)}


def worktree(ref: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(gb.ROOT), "worktree", "add", "--detach", str(into), ref], check=True, capture_output=True
    )
    return into / "src"


def measure(
    name: str, src: Path | None, upstream: str, tmp: Path, scenarios: list[str], duration: float, variant: str
) -> dict[str, float]:
    contender = gb.modelyard(upstream, tmp, src=src, name=name, variant=variant)
    try:
        gb.wrk(contender, 16, 2)  # warm-up
        out = {}
        for scenario in scenarios:
            gb.quiesce()
            connections, stream = SCENARIOS[scenario]
            pid = contender.proc.pid if contender.proc else 0
            cpu = gb.cpu_seconds(pid)
            result = gb.wrk(contender, connections, duration, stream)
            gb.quiesce()  # CPU per request includes what the run deferred (a spend backlog written after it)
            out[scenario] = float(result["rps"])
            out[scenario + " cpu_us"] = (gb.cpu_seconds(pid) - cpu) * 1e6 / max(1, result["requests"])
            out[scenario + " p99"] = float(result["p99_ms"])
        return out
    finally:
        contender.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the 'before' side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--scenarios", default="c16,stream-c16")
    parser.add_argument("--variant", default="plain", choices=everything_on.VARIANTS)
    parser.add_argument("--head-src", type=Path, default=None, help="head side from this directory (build/compiled)")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    head_src = args.head_src.resolve() if args.head_src else None
    if head_src is not None and not (head_src / "modelyard").is_dir():
        sys.exit(f"error: no modelyard package under {head_src} (scripts/compile builds build/compiled)")
    with tempfile.TemporaryDirectory(prefix="modelyard-ab-") as tmp_name:
        tmp = Path(tmp_name)
        base_src = worktree(args.base, tmp / "base")
        upstream, upstream_proc = gb.start_upstream(0)
        rows: dict[str, list[tuple[float, float]]] = {s: [] for s in scenarios}
        cpu: dict[str, list[tuple[float, float]]] = {s: [] for s in scenarios}
        p99: dict[str, list[tuple[float, float]]] = {s: [] for s in scenarios}
        try:
            for i in range(args.rounds):
                sides = [("base", base_src), ("head", head_src)]
                if i % 2:
                    sides.reverse()
                got = {
                    name: measure(name, src, upstream, tmp, scenarios, args.duration, args.variant)
                    for name, src in sides
                }
                for s in scenarios:
                    rows[s].append((got["base"][s], got["head"][s]))
                    cpu[s].append((got["base"][s + " cpu_us"], got["head"][s + " cpu_us"]))
                    p99[s].append((got["base"][s + " p99"], got["head"][s + " p99"]))
                    print(
                        f"round {i + 1} {s}: base {got['base'][s]:.0f} req/s, head {got['head'][s]:.0f} req/s "
                        f"({got['head'][s] / got['base'][s]:.3f}x)",
                        flush=True,
                    )
        finally:
            upstream_proc.terminate()
            subprocess.run(
                ["git", "-C", str(gb.ROOT), "worktree", "remove", "--force", str(tmp / "base")], capture_output=True
            )
    print(f"\nhead vs {args.base}, {args.rounds} rounds of {args.duration:.0f} s, alternating:")
    for s in scenarios:
        ratios = sorted(h / b for b, h in rows[s])
        cpu_ratios = sorted(h / b for b, h in cpu[s])
        print(
            f"  {s}: req/s ratio median {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f});"
            f" base median {statistics.median(b for b, _ in rows[s]):.0f}, head median "
            f"{statistics.median(h for _, h in rows[s]):.0f}; CPU/request ratio median "
            f"{statistics.median(cpu_ratios):.3f}"
        )
        if s == "c1":
            change = sorted(h - b for b, h in p99[s])
            print(
                f"  {s}: p99 ms base median {statistics.median(b for b, _ in p99[s]):.2f}, head median "
                f"{statistics.median(h for _, h in p99[s]):.2f}; head - base median {statistics.median(change):+.2f} "
                f"(min {change[0]:+.2f}, max {change[-1]:+.2f})"
            )


if __name__ == "__main__":
    main()
