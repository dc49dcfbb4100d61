"""Priority classes under overload: a rate-limited deployment offered 2x its capacity, queue on vs off.

    python bench/priority.py [--duration 120] [--rpm 600] [--overload 2.0] [--modes on,off,replicas]
                             [--replicas 2] [--redis-url redis://127.0.0.1:6379/0]

The simulator serves one model with a provider rate limit (`rpm`, a 1 s bucket: 429 beyond it); the gateway's
deployment has the same limit. Open-loop Poisson arrivals offer `overload` x the limit for `duration` seconds
of real time: interactive 10%, default 30%, batch 60% (weights 8/3/1), the batch class from two keys, one
offering 10x the other. Per class: goodput, p50/p99 queue wait (`x-modelyard-queue-ms`), deadline misses,
sheds; Jain's index between the batch tenants (dispatched rate over max-min fair share); provider-side 429s
(the simulator's count); loss checks (one answer per request, provider-accepted calls == 200s == spend rows).

Modes: `on` (the admission queue), `off` (`queue: {enabled: false}`, same load), `replicas` (`--replicas`
gateways on one Redis, `state.redis_url`, the load split round-robin between them). Markdown tables go to
stdout, the JSON to bench/results/priority-<time>.json. See `modelyard.testing.load` for the harness.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from modelyard.testing.load import Scenario, markdown, run_scenario, summarize

TITLES = {"on": "queue on", "off": "queue off", "replicas": "queue on, {n} replicas on one Redis"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of offered load (real time)")
    parser.add_argument("--rpm", type=int, default=600, help="the provider's (and the deployment's) limit")
    parser.add_argument("--burst-s", type=float, default=1.0, help="bucket depth in seconds of the rate")
    parser.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument("--modes", default="on,off,replicas", help="comma-separated: on, off, replicas")
    parser.add_argument("--replicas", type=int, default=2, help="gateways in the `replicas` mode")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="shared state of the replicas")
    parser.add_argument("--interactive-ms", type=float, default=2000.0, help="interactive deadline")
    parser.add_argument("--default-ms", type=float, default=10000.0, help="default-class deadline")
    parser.add_argument("--batch-ms", type=float, default=30000.0, help="batch deadline")
    parser.add_argument("--batch-ratio", type=float, default=10.0, help="big batch tenant / small one")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    deadlines = {
        "interactive": args.interactive_ms / 1000,
        "default": args.default_ms / 1000,
        "batch": args.batch_ms / 1000,
    }
    runs = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in TITLES:
            parser.error(f"unknown mode {mode!r} (one of: {', '.join(TITLES)})")
        scenario = Scenario(
            rpm=args.rpm,
            burst_s=args.burst_s,
            overload=args.overload,
            duration_s=args.duration,
            deadlines_s=deadlines,
            batch_ratio=args.batch_ratio,
            queue=mode != "off",
            replicas=args.replicas if mode == "replicas" else 1,
            redis_url=args.redis_url if mode == "replicas" else None,
            seed=args.seed,
        )
        with tempfile.TemporaryDirectory(prefix=f"bench-priority-{mode}-") as tmp:
            summary = summarize(run_scenario(scenario, Path(tmp)))
        summary["mode"] = mode
        runs.append(summary)
        print(markdown(TITLES[mode].format(n=args.replicas), summary), flush=True)
        print(flush=True)
    out = Path(__file__).parent / "results" / f"priority-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(runs, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
