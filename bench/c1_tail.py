"""The c=1 p99 tail, hunted (issue #20): the pass-through and modelyard at c=1, alternated, with a stand-in
for the spend log's store write and, optionally, another process burning the CPU in bursts.

    python bench/c1_tail.py                              # the real write, 6 rounds of 6 s
    python bench/c1_tail.py --standin none               # no store write at all
    python bench/c1_tail.py --standin burn               # a CPU burst as long as the write, the GIL released
    python bench/c1_tail.py --standin none --burner 0.008,0.25          # another process: 8 ms every 250 ms
    python bench/c1_tail.py --standin none --burner 0.008,0.25,0.0002   # ... cut in 0.2 ms pieces + sched_yield
    python bench/c1_tail.py --batch-size 2000            # spend.batch_size

Prints each round's p50/p99 of both and the added p99 (modelyard - pass-through): median and spread. The
stand-ins are in bench/c1_tail_standin/sitecustomize.py. Both servers stay up; each round starts on a quiet
machine (gateway_bench.quiesce).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import everything_on
import gateway_bench as gb

HERE = Path(__file__).resolve().parent

BURNER = """
import os, sys, time
burn, period, piece = (float(x) for x in sys.argv[1:4])
while True:
    end = time.perf_counter() + burn
    while time.perf_counter() < end:
        stop = min(end, time.perf_counter() + piece)
        while time.perf_counter() < stop:
            pass
        if piece < burn:
            os.sched_yield()
    time.sleep(period)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standin", default="real", choices=["real", "none", "sleep", "burn", "burn-idle", "prepare"])
    parser.add_argument("--burner", default=None, help="BURN_S,PERIOD_S[,PIECE_S]: another process's bursts")
    parser.add_argument("--batch-size", type=int, default=None, help="spend.batch_size")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args()
    if args.batch_size is not None:
        render = everything_on.render
        extra = f"  spool: true\n  batch_size: {args.batch_size}\n"
        everything_on.render = lambda *a, **k: render(*a, **k).replace("  spool: true\n", extra)
    env = {"C1_TAIL_STANDIN": args.standin, "PYTHONPATH": f"{HERE / 'c1_tail_standin'}:{gb.ROOT / 'src'}"}
    upstream, upstream_proc = gb.start_upstream(0)
    burner: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="modelyard-c1-") as tmp_name:
        tmp = Path(tmp_name)
        floor = gb.passthrough(upstream, tmp)
        ours = gb.modelyard(upstream, tmp, extra_env=env, check=args.standin == "real")
        try:
            if args.burner:
                burn, period, *piece = args.burner.split(",")
                burner = subprocess.Popen([sys.executable, "-c", BURNER, burn, period, piece[0] if piece else burn])
                time.sleep(0.5)
            for contender in (floor, ours):
                gb.wrk(contender, 1, 2)  # warm-up
            added = []
            for i in range(args.rounds):
                pair = [floor, ours] if i % 2 == 0 else [ours, floor]
                got = {}
                for contender in pair:
                    if burner is None:
                        gb.quiesce()
                    got[contender.name] = gb.wrk(contender, 1, args.duration)
                a, b = got[floor.name], got[ours.name]
                added.append(b["p99_ms"] - a["p99_ms"])
                print(
                    f"round {i + 1}: pass-through p50/p99 {a['p50_ms']:.2f}/{a['p99_ms']:.2f} ms, modelyard "
                    f"{b['p50_ms']:.2f}/{b['p99_ms']:.2f} ms, added p99 {added[-1]:+.2f}",
                    flush=True,
                )
            added.sort()
            print(
                f"standin={args.standin} burner={args.burner} batch_size={args.batch_size}: added p99 median "
                f"{statistics.median(added):+.2f} ms ({added[0]:+.2f} to {added[-1]:+.2f}), {args.rounds} rounds"
            )
        finally:
            if burner is not None:
                burner.kill()
            floor.stop()
            ours.stop()
            upstream_proc.terminate()


if __name__ == "__main__":
    main()
