"""Routing-decision microbenchmark: one decision over N deployments, per strategy (target <= 20 us at 100).

    python bench/routing_decision.py [--deployments 100] [--iterations 20000]

A decision = the candidate filters (kind, context window, capabilities, circuit, concurrency, RPM/TPM)
plus the strategy's ranking, with live health data for every deployment, as the gateway runs it
(`make_plan`, explanation off). Prints the median and p99 of per-decision time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from modelyard.config.model import Config, Deployment, Limits, ModelGroup, Price
from modelyard.routing.features import RequestFeatures
from modelyard.routing.plan import make_plan
from modelyard.routing.router import Router

STRATEGIES = ["priority", "weighted", "least-latency", "least-busy", "cost", "rules"]


def build(n: int) -> Router:
    rng = random.Random(1)
    deployments = [
        Deployment(
            name=f"d{i}",
            provider="openai",
            model=f"m{i}",
            api_base="http://127.0.0.1:9/v1",
            price=Price(input=rng.uniform(0.1, 10), output=rng.uniform(0.2, 30)),
            context_window=rng.choice([8000, 32000, 128000]),
            quality=rng.uniform(0.4, 0.95),
            weight=rng.uniform(0.5, 3),
            tier=rng.randint(0, 2),
            limits=Limits(rpm=100000, tpm=10_000_000),
        )
        for i in range(n)
    ]
    names = [d.name for d in deployments]
    models = {
        s: ModelGroup(candidates=names, strategy=s, constraints={"min_quality": 0.6, "max_latency_ms": 5000})
        for s in STRATEGIES
        if s != "rules"
    }
    models["rules"] = ModelGroup(
        candidates=names,
        strategy="rules",
        rules=[
            {"when": {"task": "coding", "complexity": "high"}, "use": names[:3]},
            {"when": {"task": "search"}, "use": "least-latency"},
            {"when": {"prompt_tokens": {"gt": 4000}}, "use": names[3:6]},
            {"use": "cost"},
        ],
    )
    router = Router(Config(deployments=deployments, models=models), seed=1)
    now = time.monotonic()
    for dep in deployments:  # live health for every deployment
        for _ in range(5):
            router.health.on_start(dep.name, now)
            router.health.on_success(dep.name, now, rng.uniform(100, 3000), rng.uniform(20, 500))
        router.limits.take(dep.name, dep.limits, now, 100)
    return router


def measure(router: Router, strategy: str, iterations: int) -> list[float]:
    features = RequestFeatures(prompt_tokens=800, max_output_tokens=256, task="chat")
    samples = []
    table = router.table
    for _ in range(iterations):
        ctx = router.context(features)
        started = time.perf_counter_ns()
        plan = make_plan(table, strategy, ctx)
        samples.append((time.perf_counter_ns() - started) / 1000)
        assert plan.order
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    router = build(args.deployments)
    print(f"{'strategy':>14} {'median us':>10} {'p99 us':>8}   ({args.deployments} deployments)")
    for strategy in STRATEGIES:
        samples = sorted(measure(router, strategy, args.iterations))
        median = statistics.median(samples)
        p99 = samples[int(0.99 * len(samples))]
        print(f"{strategy:>14} {median:>10.1f} {p99:>8.1f}")


if __name__ == "__main__":
    main()
