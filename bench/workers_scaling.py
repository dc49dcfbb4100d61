"""What each added worker buys: `modelyard serve --workers N` (every feature on) for N in `--workers`.

    python bench/workers_scaling.py                          # --workers 1,2, 3 rounds of 8 s
    python bench/workers_scaling.py --quick                  # ~1 minute
    python bench/workers_scaling.py --workers 1,2,4,8 --pin  # a larger machine: see below

`modelyard serve --workers N` (server/serving.py `run`) is uvicorn's multiprocess supervisor: the supervisor
binds ONE listening socket and the N forked workers all accept on it (the kernel hands each connection to
one waiting worker); it does not set SO_REUSEPORT. Each worker is a whole gateway: its own event loop, HTTP
client pools, limits cache and spend writer (all N write the same SQLite file; with Redis, limits and
budgets are shared, without it each worker enforces its own copy). wrk keeps connections open, so a
connection stays on the worker that accepted it.

Each N is started once (bench/configs/everything_on.yaml, `--variant`, self-checked); every round runs each
scenario for every N in turn (the order rotated per round); req/s and CPU per request of the whole process
tree (supervisor + workers), median and spread (min-max) over the rounds, and the ratio to one worker paired
per round.

On this 2-core machine the gateway, wrk and the upstream share the cores, so two workers cannot reach 2x.
On a larger machine, `--pin` gives the gateway cores 0..N-1 (taskset) and puts this script, wrk and the
upstream on the cores above them (they must not compete with the workers: needs more cores than the largest
N; wrk gets one thread per load core). Then expect req/s to grow close to linearly with N while the load side
has headroom (check its cores are not at 100%: the `direct` figure of gateway_bench.py on the same cores is the
ceiling) and CPU per request to stay flat; a falling per-worker gain points at something shared (the SQLite
spend file's lock, Redis round trips in the redis row, the kernel's accept queue).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import everything_on
import gateway_bench as gb

SCENARIOS = {"c16": (16, False), "c64": (64, False), "stream-c16": (16, True)}


def cores_for(max_workers: int) -> tuple[str, set[int]]:
    """(the gateway's taskset list, the load side's cores) for --pin."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) <= max_workers:
        sys.exit(f"error: --pin needs more cores than the largest --workers ({len(available)} available)")
    gateway = available[:max_workers]
    return ",".join(map(str, gateway)), set(available[max_workers:])


def cell(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="1 s runs")
    parser.add_argument("--variant", default="plain", choices=everything_on.VARIANTS)
    parser.add_argument("--pin", action="store_true", help="gateway on cores 0..N-1, load and upstream above")
    args = parser.parse_args()
    if args.rounds < 3:
        sys.exit("error: --rounds must be at least 3")
    counts = [int(n) for n in args.workers.split(",")]
    duration = 1.0 if args.quick else args.duration
    prefix: list[str] = []
    threads = None
    if args.pin:
        gateway_cores, load_cores = cores_for(max(counts))
        os.sched_setaffinity(0, load_cores)  # this script, and so wrk and the upstream, stay off the gateway's
        prefix = ["taskset", "-c", gateway_cores]
        threads = max(2, len(load_cores) - 1)
        print(f"gateway on cores {gateway_cores}; wrk ({threads} threads) and the upstream on {sorted(load_cores)}")
    samples: dict[int, dict[str, list[tuple[float, float]]]] = {n: {s: [] for s in SCENARIOS} for n in counts}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_proc = gb.start_upstream(0)
        started: dict[int, gb.Contender] = {}
        try:
            for n in counts:
                started[n] = gb.modelyard(upstream, tmp, n, variant=args.variant, prefix=prefix, check=True)
                gb.wrk(started[n], 16, min(2.0, duration), threads=threads)  # warm-up
            for rnd in range(args.rounds):
                order = counts[rnd % len(counts) :] + counts[: rnd % len(counts)]
                for scenario, (connections, stream) in SCENARIOS.items():
                    for n in order:
                        contender = started[n]
                        pid = contender.proc.pid if contender.proc else 0
                        cpu = gb.cpu_seconds(pid)
                        result: dict[str, Any] = gb.wrk(contender, connections, duration, stream, threads=threads)
                        cpu_us = (gb.cpu_seconds(pid) - cpu) * 1e6 / max(1, result["requests"])
                        samples[n][scenario].append((float(result["rps"]), cpu_us))
                        print(
                            f"  round {rnd + 1} workers {n} {scenario:>10}: {result['rps']:.0f} req/s, "
                            f"{cpu_us:.0f} µs CPU/req, errors {result['errors']}, non2xx {result['non2xx']}",
                            flush=True,
                        )
        finally:
            for contender in started.values():
                contender.stop()
            upstream_proc.terminate()
    base = samples[counts[0]]
    print(
        f"\n{time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, pinned: {args.pin}; median (min-max) over "
        f"{args.rounds} rounds of {duration:.0f} s; ratio to {counts[0]} worker(s), paired per round\n"
    )
    print("| workers | " + " | ".join(f"req/s {s} | ratio" for s in SCENARIOS) + " | CPU µs/req c16 | CPU µs/stream |")
    print("|---|" + "---|---|" * len(SCENARIOS) + "---|---|")
    for n in counts:
        cells = []
        for scenario in SCENARIOS:
            runs = samples[n][scenario]
            ratios = [a[0] / b[0] for a, b in zip(runs, base[scenario], strict=False) if b[0]]
            cells += [cell([r for r, _ in runs]), cell(ratios, 2)]
        cpu_req = cell([c for _, c in samples[n]["c16"]])
        cpu_stream = cell([c for _, c in samples[n]["stream-c16"]])
        print(f"| {n} | " + " | ".join(cells) + f" | {cpu_req} | {cpu_stream} |")


if __name__ == "__main__":
    main()
