"""Memory soak: RSS of `modelyard serve` (every feature on) over many requests; is it flat after warm-up?

    python bench/soak.py [--requests 500000] [--connections 16] [--stream-share 0.25] [--variant plain]
    python bench/soak.py --memory-log 100000      # no spend.store: the log in memory, bounded (spend.memory_rows)

The gateway runs bench/configs/everything_on.yaml (`--variant`: plain, guardrails or redis), self-checked.
Drives the gateway with wrk in 10-second slices (non-streaming, and a share of streaming slices) against
the fast mock upstream, and samples the gateway's RSS after each slice. Prints the series, the RSS after
warm-up (the first 10% of requests) and at the end, and the growth between them (target: within 5%).
`--memory-log ROWS`: the same config with no `spend.store`, so the spend log is in memory and keeps about
ROWS requests; the master key calls (a virtual key needs a store). Its RSS grows until the log holds ROWS
rows (~0.56 kB each), then stays flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import everything_on
from feature_costs import without_virtual_key
from gateway_bench import BENCH_KEY_MASTER, modelyard, rss_mb, start_upstream, wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--slice-s", type=int, default=10)
    parser.add_argument("--stream-share", type=float, default=0.25, help="share of slices that stream")
    parser.add_argument("--variant", default="plain", choices=everything_on.VARIANTS)
    parser.add_argument("--memory-log", type=int, metavar="ROWS", help="no spend.store: the log in memory (ROWS kept)")
    args = parser.parse_args()
    upstream_url, upstream = start_upstream(0)
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory_log:
            rows = args.memory_log

            def in_memory(config: dict[str, Any]) -> None:
                config["spend"] = {"memory_rows": rows}

            gateway = without_virtual_key(upstream_url, Path(tmp), "in-memory log", in_memory, BENCH_KEY_MASTER)
        else:
            gateway = modelyard(upstream_url, Path(tmp), variant=args.variant)
        assert gateway.proc is not None
        try:
            done = 0
            slice_no = 0
            every = round(1 / args.stream_share) if args.stream_share > 0 else 0
            while done < args.requests:
                stream = bool(every) and slice_no % every == every - 1
                result = wrk(gateway, args.connections, args.slice_s, stream=stream)
                done += int(result["requests"])
                slice_no += 1
                rss = rss_mb(gateway.proc.pid, peak=False)
                samples.append((done, rss))
                kind = ", stream" if stream else ""
                print(
                    f"{done:>9} requests  rss {rss:7.1f} MB  ({result['rps']:.0f} req/s{kind},"
                    f" errors {result['errors']}, non2xx {result['non2xx']})",
                    flush=True,
                )
        finally:
            gateway.stop()
            upstream.terminate()
    warm = next((rss for n, rss in samples if n >= args.requests * 0.1), samples[0][1])
    end = samples[-1][1]
    growth = (end - warm) / warm * 100
    print(
        f"\nafter warm-up: {warm:.1f} MB; after {samples[-1][0]} requests: {end:.1f} MB; growth {growth:+.1f}%"
        f" (target within 5%); peak {max(r for _, r in samples):.1f} MB"
    )


if __name__ == "__main__":
    main()
