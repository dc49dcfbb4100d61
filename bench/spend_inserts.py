"""Where SQLite's spend inserts run (`spend.sqlite_inserts`): the store's thread, a helper process, or `auto`,
in one run, alternated (issue #20).

    python bench/spend_inserts.py                                  # thread vs process vs auto, c=1 and c=16
    python bench/spend_inserts.py --modes thread,auto --scenarios c16,stream-c16 --rounds 5
    python bench/spend_inserts.py --modes thread,none --scenarios c16   # `none`: no store write at all

`none` is the thread with the store's write replaced by nothing (bench/c1_tail_standin/sitecustomize.py):
what the spend log's store work costs the gateway, for scale.

Each mode is `modelyard serve` with every feature on (bench/configs/everything_on.yaml) and only
`spend.sqlite_inserts` changed, behind wrk against bench/upstream.py; the modes run in a rotating order each
round, each run on a quiet machine. CPU per request is the whole process tree's (the helper process
included), read once the machine is quiet again (the spend rows a run left to write count). Also printed:
the CPU of the serving process's event-loop thread alone, and the spend rows written during the run as a
share of its requests (a writer that falls behind, e.g. a starved helper, shows there). Ratios are against
the first mode, per round.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
from pathlib import Path

import gateway_bench as gb

SCENARIOS = {"c1": (1, False), "c16": (16, False), "c64": (64, False), "stream-c16": (16, True)}


def loop_thread_cpu(pid: int) -> float:
    """CPU seconds of the process's first thread (the event loop's)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spend_rows(tmp: Path, mode: str) -> int:
    """Rows in the spend log of `mode`'s server (its SQLite file, named by gateway_bench.modelyard)."""
    with sqlite3.connect(tmp / f"{mode}.db", timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM modelyard_spend").fetchone()[0])


def start(mode: str, upstream: str, tmp: Path) -> gb.Contender:
    if mode != "none":
        return gb.modelyard(upstream, tmp, name=mode, spend={"sqlite_inserts": mode})
    standin = {"C1_TAIL_STANDIN": "none", "PYTHONPATH": f"{gb.HERE / 'c1_tail_standin'}:{gb.ROOT / 'src'}"}
    return gb.modelyard(upstream, tmp, name=mode, spend={"sqlite_inserts": "thread"}, extra_env=standin, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="thread,process,auto")
    parser.add_argument("--scenarios", default="c1,c16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    modes = args.modes.split(",")
    scenarios = args.scenarios.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="spend-inserts-"))
    upstream, upstream_proc = gb.start_upstream(0)
    servers: dict[str, gb.Contender] = {}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {(m, s): [] for m in modes for s in scenarios}
    try:
        for mode in modes:
            servers[mode] = start(mode, upstream, tmp)
            gb.wrk(servers[mode], 16, 2)  # warm-up (and, for process/auto, the helper's start)
        for round_ in range(args.rounds):
            order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
            for scenario in scenarios:
                connections, stream = SCENARIOS[scenario]
                for mode in order:
                    server = servers[mode]
                    assert server.proc is not None
                    pid = server.proc.pid
                    gb.quiesce()
                    cpu, loop = gb.cpu_seconds(pid), loop_thread_cpu(pid)
                    rows = spend_rows(tmp, mode)
                    result = gb.wrk(server, connections, args.duration, stream)
                    written = spend_rows(tmp, mode) - rows
                    gb.quiesce()
                    requests = max(1, result["requests"])
                    run = {
                        "kept_up": written / requests,
                        "rps": result["rps"],
                        "p99_ms": result["p99_ms"],
                        "cpu_us": (gb.cpu_seconds(pid) - cpu) / requests * 1e6,
                        "loop_us": (loop_thread_cpu(pid) - loop) / requests * 1e6,
                    }
                    runs[(mode, scenario)].append(run)
                    print(
                        f"round {round_ + 1} {scenario} {mode}: {run['rps']:.0f} req/s, p99 {run['p99_ms']:.2f} ms, "
                        f"CPU {run['cpu_us']:.0f} µs/request (loop thread {run['loop_us']:.0f}), "
                        f"spend rows written during the run {run['kept_up']:.0%}",
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
        upstream_proc.kill()
    print(f"\nmedians of {args.rounds} rounds of {args.duration:g} s; ratios against {modes[0]}, per round:")
    for scenario in scenarios:
        base = runs[(modes[0], scenario)]
        for mode in modes:
            mine = runs[(mode, scenario)]
            ratios = [m["rps"] / b["rps"] for m, b in zip(mine, base, strict=True)]
            p99_delta = [m["p99_ms"] - b["p99_ms"] for m, b in zip(mine, base, strict=True)]
            print(
                f"  {scenario} {mode}: {statistics.median(r['rps'] for r in mine):.0f} req/s "
                f"(x{statistics.median(ratios):.3f}, {min(ratios):.3f}-{max(ratios):.3f}), "
                f"p99 {statistics.median(r['p99_ms'] for r in mine):.2f} ms "
                f"({statistics.median(p99_delta):+.2f}, {min(p99_delta):+.2f} to {max(p99_delta):+.2f}), "
                f"CPU {statistics.median(r['cpu_us'] for r in mine):.0f} µs/request "
                f"(loop thread {statistics.median(r['loop_us'] for r in mine):.0f}), "
                f"rows written during the run {min(r['kept_up'] for r in mine):.0%} at least"
            )


if __name__ == "__main__":
    main()
