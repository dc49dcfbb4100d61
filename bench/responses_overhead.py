"""The Responses API ingress next to chat completions, on one gateway, alternated in one run.

    python bench/responses_overhead.py                       # 5 rounds, c=16, plain and streaming
    python bench/responses_overhead.py --rounds 7 --duration 6 --scenarios c16

One `modelyard serve` with every feature on (bench/gateway_bench.py's config: a virtual key with RPM/TPM limits
and a budget, the cost strategy, the SQLite spend log, /metrics) in front of bench/upstream.py (an OpenAI chat
upstream, so /v1/responses is translated to chat completions: the full codec cost). wrk sends the same prompt as
chat.lua (bench/chat.lua) or as a Responses request (bench/responses.lua), alternating which goes first each round.
Reported: the median ratio of requests/s (responses / chat) and its spread, and the added median latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb

SCENARIOS = {"c16": (16, False), "stream-c16": (16, True)}
SIDES = {"chat": ("chat.lua", "/v1/chat/completions"), "responses": ("responses.lua", "/v1/responses")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--scenarios", default="c16,stream-c16")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    rps: dict[str, list[tuple[float, float]]] = {s: [] for s in scenarios}
    p50: dict[str, list[tuple[float, float]]] = {s: [] for s in scenarios}
    with tempfile.TemporaryDirectory(prefix="modelyard-responses-") as tmp_name:
        upstream, upstream_proc = gb.start_upstream(0)
        contender = gb.modelyard(upstream, Path(tmp_name))
        try:
            for side in SIDES.values():
                gb.wrk(contender, 16, 2, script=side[0], path=side[1])  # warm-up both ingresses
            for i in range(args.rounds):
                order = ["chat", "responses"] if i % 2 == 0 else ["responses", "chat"]
                for s in scenarios:
                    connections, stream = SCENARIOS[s]
                    got = {}
                    for name in order:
                        script, path = SIDES[name]
                        result = gb.wrk(contender, connections, args.duration, stream, script=script, path=path)
                        if result["non2xx"] or result["errors"]:
                            raise SystemExit(f"{name} {s}: {result['non2xx']} non-2xx, {result['errors']} errors")
                        got[name] = result
                    rps[s].append((float(got["chat"]["rps"]), float(got["responses"]["rps"])))
                    p50[s].append((float(got["chat"]["p50_ms"]), float(got["responses"]["p50_ms"])))
                    print(
                        f"round {i + 1} {s}: chat {got['chat']['rps']:.0f} req/s, responses "
                        f"{got['responses']['rps']:.0f} req/s ({got['responses']['rps'] / got['chat']['rps']:.3f}x)",
                        flush=True,
                    )
        finally:
            contender.stop()
            upstream_proc.terminate()
    print(f"\n/v1/responses vs /v1/chat/completions, {args.rounds} rounds of {args.duration:.0f} s, alternating:")
    for s in scenarios:
        ratios = sorted(r / c for c, r in rps[s])
        added = sorted(r - c for c, r in p50[s])
        print(
            f"  {s}: req/s ratio median {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f});"
            f" chat median {statistics.median(c for c, _ in rps[s]):.0f}, responses median "
            f"{statistics.median(r for _, r in rps[s]):.0f}; added p50 latency median "
            f"{statistics.median(added):+.2f} ms (min {added[0]:+.2f}, max {added[-1]:+.2f})"
        )


if __name__ == "__main__":
    main()
