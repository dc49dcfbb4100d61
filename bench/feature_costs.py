"""What each feature of the everything-on config costs (issue #20): that config with one feature off at a time,
and with every feature off, against the pass-through, alternated rounds.

    python bench/feature_costs.py                    # c=16, plain requests, 5 rounds of 4 s
    python bench/feature_costs.py --stream --rounds 3

Rows: the pass-through (the floor); `everything on` (bench/configs/everything_on.yaml, the plain row); then
one feature off each: `no spend log` (spend.enabled false; the virtual key stays, so budgets are still
reserved and settled), `no deployment limits` (the primary's RPM/TPM), `one deployment` (the model on the
primary alone: no cost strategy over two, no stickiness), `no queue`, `no master key` (the virtual key still
authenticates), `no virtual key` (the master key calls: no budget, no key RPM/TPM); and `every feature off`:
open mode (no master key, no virtual key in the store), no spend log, no queue, no deployment limits, one
deployment. Each cell: req/s as a ratio to the pass-through of the same
round, median (min-max), and CPU per request of the contender's whole process tree (the spend log's helper
included), median; `cost` is CPU per request of everything on minus that row's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import everything_on
import gateway_bench as gb

Edit = Callable[[dict[str, Any]], None]


def no_spend_log(config: dict[str, Any]) -> None:
    config["spend"]["enabled"] = False  # the store stays: the virtual key lives in it


def no_deployment_limits(config: dict[str, Any]) -> None:
    for deployment in config["deployments"]:
        deployment.pop("limits", None)


def one_deployment(config: dict[str, Any]) -> None:
    config["models"][everything_on.MODEL] = {"candidates": ["primary"], "options": {"sticky": False}}


def no_queue(config: dict[str, Any]) -> None:
    config["queue"] = {"enabled": False}


def no_master_key(config: dict[str, Any]) -> None:
    config.pop("access", None)


def every_feature_off(config: dict[str, Any]) -> None:
    for edit in (no_spend_log, no_deployment_limits, one_deployment, no_queue, no_master_key):
        edit(config)


ROWS: list[tuple[str, Edit | None]] = [
    ("everything on", None),
    ("no spend log", no_spend_log),
    ("no deployment limits", no_deployment_limits),
    ("one deployment", one_deployment),
    ("no queue", no_queue),
    ("no master key", no_master_key),
]


def without_virtual_key(
    upstream: str, tmp: Path, name: str, edit: Edit | None, key: str, src: Path | None = None
) -> gb.Contender:
    """A row with no virtual key in the store: `key` is the master key (requests are the master's: no budget,
    no key RPM/TPM) or, with `access:` removed by `edit`, anything (open mode: no authentication); `src`
    runs another checkout's code (its `src/` directory)."""
    slug = name.replace(" ", "-")
    config = tmp / f"{slug}.yaml"
    config.write_text(everything_on.render(upstream, gb.BENCH_KEY_MASTER, tmp / f"{slug}.db", "plain", edit=edit))
    port = gb.free_port()
    serve = [gb.PY, "-m", "modelyard.cli.main", "serve", "--config", str(config), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    proc = gb.spawn([*serve, "--log-level", "warning"], env=env, log=tmp / f"{slug}.log")
    contender = gb.Contender(name, f"http://127.0.0.1:{port}", everything_on.MODEL, key, proc)
    try:
        gb.wait_http(contender.url + "/health/ready", proc)
    except BaseException:
        contender.stop()
        raise
    return contender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed answers instead of plain ones")
    args = parser.parse_args()
    upstream, upstream_proc = gb.start_upstream(0)
    contenders: list[gb.Contender] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-features-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            contenders.append(gb.passthrough(upstream, tmp))
            for name, edit in ROWS:
                contenders.append(gb.modelyard(upstream, tmp, name=name, edit=edit, check=edit is None))
            contenders.append(without_virtual_key(upstream, tmp, "no virtual key", None, gb.BENCH_KEY_MASTER))
            contenders.append(without_virtual_key(upstream, tmp, "every feature off", every_feature_off, "sk-none"))
            report(measure(contenders, args.rounds, args.duration, args.connections, args.stream), args.stream)
        finally:
            for contender in contenders:
                contender.stop()
            upstream_proc.terminate()


def measure(
    contenders: list[gb.Contender], rounds: int, duration: float, connections: int, stream: bool
) -> dict[str, list[tuple[float, float]]]:
    """(req/s, CPU µs per request) of each contender per round; the order alternates between rounds."""
    for contender in contenders:
        gb.wrk(contender, connections, 2, stream)  # warm-up
    results: dict[str, list[tuple[float, float]]] = {}
    for index in range(rounds):
        for contender in contenders if index % 2 == 0 else contenders[::-1]:
            gb.quiesce()
            pid = contender.proc.pid if contender.proc else 0
            cpu = gb.cpu_seconds(pid)
            run = gb.wrk(contender, connections, duration, stream)
            if run["errors"] or run["non2xx"]:
                raise SystemExit(f"{contender.name}: {run['errors']} errors, {run['non2xx']} non-2xx answers")
            gb.quiesce()  # CPU per request includes what the run deferred (spend rows written after it)
            us = (gb.cpu_seconds(pid) - cpu) * 1e6 / max(1, run["requests"])
            results.setdefault(contender.name, []).append((float(run["rps"]), us))
            print(f"round {index + 1} {contender.name}: {run['rps']:.0f} req/s, {us:.0f} µs CPU a request", flush=True)
    return results


def report(results: dict[str, list[tuple[float, float]]], stream: bool) -> None:
    floor = results["passthrough"]
    full_cpu = statistics.median(us for _, us in results["everything on"])
    unit = "stream" if stream else "request"
    print(f"\n| row | req/s ÷ pass-through | CPU µs a {unit} | cost (everything on - row) |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        ratios = [rps / base for (rps, _), (base, _) in zip(runs, floor, strict=True)]
        cpu = statistics.median(us for _, us in runs)
        cost = "" if name in ("passthrough", "everything on") else f"{full_cpu - cpu:+.0f} µs"
        print(
            f"| {name} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | {cpu:.0f} | {cost} |"
        )


if __name__ == "__main__":
    main()
