"""The spend log with no `spend.store` (in memory, the default), before/after: this tree against a git ref,
alternated rounds, with the pass-through as the floor.

    python bench/memory_log.py --base ee8ab92              # 5 rounds of 4 s at c=16 after a 40 s fill

Both sides run the everything-on config with `spend:` emptied (so the log is an in-memory SQLite database)
and no virtual key (a virtual key needs a store the CLI can reach; the master key calls). Before any round,
each side serves `--fill` seconds of load, so an in-memory log bounded by `spend.memory_rows` (100,000 by
default) is already at its bound and trimming, as it is in a gateway that has run a while. Per round and
side: req/s as a ratio to the pass-through of the same round and CPU µs a request of the process tree; then
the median (min-max) of the per-round ratio after/before, and each side's RSS at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb
from ab_gateway import worktree
from feature_costs import measure, without_virtual_key


def in_memory(config: dict[str, Any]) -> None:
    config["spend"] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the git ref to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--fill", type=float, default=40.0, help="seconds of load on each side before round 1")
    args = parser.parse_args()
    upstream, upstream_proc = gb.start_upstream(0)
    contenders: list[gb.Contender] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-memory-log-") as tmp_name:
        tmp = Path(tmp_name)
        base_src = worktree(args.base, tmp / "base")
        try:
            contenders.append(gb.passthrough(upstream, tmp))
            contenders.append(without_virtual_key(upstream, tmp, "before", in_memory, gb.BENCH_KEY_MASTER, base_src))
            contenders.append(without_virtual_key(upstream, tmp, "after", in_memory, gb.BENCH_KEY_MASTER))
            for contender in contenders[1:]:
                gb.wrk(contender, 16, args.fill)
            results = measure(contenders, args.rounds, args.duration, 16, False)
            report(results, contenders)
        finally:
            for contender in contenders:
                contender.stop()
            upstream_proc.terminate()
            subprocess.run(["git", "-C", str(gb.ROOT), "worktree", "remove", "--force", str(tmp / "base")])


def report(results: dict[str, list[tuple[float, float]]], contenders: list[gb.Contender]) -> None:
    floor = results["passthrough"]
    for name in ("before", "after"):
        ratios = [rps / base for (rps, _), (base, _) in zip(results[name], floor, strict=True)]
        cpu = statistics.median(us for _, us in results[name])
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
        print(f"{name}: {statistics.median(ratios):.3f}x the pass-through ({spread}), {cpu:.0f} µs CPU a request")
    change = [a / b for (a, _), (b, _) in zip(results["after"], results["before"], strict=True)]
    print(f"after/before req/s: {statistics.median(change):.3f} ({min(change):.3f}-{max(change):.3f})")
    for contender in contenders[1:]:
        if contender.proc is not None:
            print(f"{contender.name}: RSS {gb.rss_mb(contender.proc.pid, peak=False):.0f} MB at the end")


if __name__ == "__main__":
    main()
