"""What the admission queue costs a request when nothing is saturated: microseconds, in-process.

    python bench/queue_overhead.py [--rounds 7] [--calls 20000]

The request path's queue work is two steps: the server resolves the request's ticket (class, tenant,
deadline: server/priority.py) and the router asks the admission queue whether the request must wait
(`AdmissionQueues.must_wait`: the model's queue is empty and a candidate has headroom). This times both
together against the same loop without them, for a model whose deployment has RPM/TPM limits and a
concurrency cap (the case that checks a bucket) and for one without limits. Rounds alternate off/on and
the figure is the median per-call difference, with its spread; the issue's bound is 5 us.
"""

from __future__ import annotations

import argparse
import statistics
import time

from modelyard.config.loader import parse_config
from modelyard.routing.features import RequestFeatures
from modelyard.routing.router import Router
from modelyard.server.access import KeyState
from modelyard.server.http import Request
from modelyard.server.priority import QueuePolicy

CONFIG = """
deployments:
  - {name: limited, provider: openai, model: m, api_base: "http://x/v1", price: {input: 1, output: 2},
     limits: {rpm: 100000000, tpm: 1000000000000, max_concurrency: 1000000}}
  - {name: free, provider: openai, model: m, api_base: "http://y/v1", price: {input: 1, output: 2}}
models:
  limited: {candidates: [limited]}
  free: {candidates: [free]}
"""


def run(router: Router, policy: QueuePolicy, model: str, calls: int, on: bool) -> float:
    """Seconds per call of planning (both sides) plus, when `on`, the ticket and the must-wait check."""
    features = RequestFeatures(prompt_tokens=50, max_output_tokens=100)
    scope = {"type": "http", "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer x")]}
    request = Request(scope, None, None)  # type: ignore[arg-type]
    key = KeyState("k1", "tenant")
    admission = router.admission
    plan = router.plan(model, features)
    tokens = features.prompt_tokens + features.output_estimate()
    started = time.perf_counter()
    if on:
        for _ in range(calls):
            ticket = policy.ticket(request, key, None, None)
            admission.must_wait(plan, tokens, ticket)
    else:
        for _ in range(calls):
            pass
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    config = parse_config(CONFIG)
    router = Router(config, seed=1)
    policy = QueuePolicy(config.queue)
    print("| model | queue work per request (median) | spread over rounds |")
    print("|---|---|---|")
    for model in ("limited", "free"):
        deltas = []
        for _ in range(args.rounds):
            off = run(router, policy, model, args.calls, on=False)
            on = run(router, policy, model, args.calls, on=True)
            deltas.append((on - off) * 1e6)
        print(f"| {model} | {statistics.median(deltas):.2f} us | {min(deltas):.2f}-{max(deltas):.2f} us |")


if __name__ == "__main__":
    main()
