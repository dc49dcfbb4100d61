"""Fault-injection run: success rate, p50/p99 and attempts per request with hedging off and on.

    python bench/fault_injection.py [--requests 2000] [--concurrency 50] [--hedge-ms 100]

Three deployments of one model on the simulator (30% 429 + 10% hangs; 20% resets; healthy), the
simulator and the gateway as separate processes, half the requests streaming. See
`modelyard.testing.faults` for the exact fleet and gateway config.
"""

from __future__ import annotations

import argparse
import json

from modelyard.testing.faults import SuiteSettings, run_fault_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--hedge-ms", type=float, default=100)
    parser.add_argument("--first-token-s", type=float, default=0.5)
    parser.add_argument("--total-s", type=float, default=1.5)
    args = parser.parse_args()
    rows = []
    for hedge in (None, args.hedge_ms):
        settings = SuiteSettings(
            requests=args.requests,
            concurrency=args.concurrency,
            hedge_after_ms=hedge,
            first_token_timeout_s=args.first_token_s,
            total_timeout_s=args.total_s,
        )
        rows.append(run_fault_suite(settings).as_dict())
    print(
        f"{'hedging':>10} {'success':>8} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'attempts/req':>13} {'sent/seen':>14} {'breaker open/close':>19}"
    )
    for row in rows:
        hedge = f"{row['hedge_after_ms']:.0f} ms" if row["hedge_after_ms"] else "off"
        print(
            f"{hedge:>10} {row['success_rate']:>8.2%} {row['lost']:>5} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f} {row['attempts_per_request']:>13.3f} "
            f"{row['attempts_reported']:>6}/{row['upstream_requests']:<7} "
            f"{row['breaker_opened']:>9}/{row['breaker_closed']:<9}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
