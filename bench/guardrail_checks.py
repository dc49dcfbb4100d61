"""Per-check latency of the guardrails on a 500-token answer (about 2,000 characters of prose with a few
PII values and a JSON body), p50/p99 over many runs, plus a streamed answer fed in ~4-character deltas.

    python bench/guardrail_checks.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import msgspec

from modelyard.guardrails import StreamGuard, check_output, compile_checks
from modelyard.schema.guardrails import CheckSpec

PROSE = (
    "The quarterly report shows revenue grew in every region, with the strongest gains in services. "
    "Costs rose more slowly than sales, so the margin improved by two points. The team recommends "
    "keeping the current pricing and investing the surplus in support staff and documentation. "
)
PII_TEXT = " Contact jane.doe@example.com or +44 20 7946 0958; card 4111 1111 1111 1111 was refunded. "
SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}, "score": {"type": "number"}}}


def answer() -> str:
    """~500 tokens: prose with three PII values inside a JSON object (so the schema check has work)."""
    body = (PROSE * 7)[:1700] + PII_TEXT
    return msgspec.json.encode({"summary": body, "score": 0.93}).decode()


CASES: dict[str, list[dict[str, object]]] = {
    "pii": [{"check": "pii", "action": "redact"}],
    "secrets": [{"check": "secrets", "action": "redact"}],
    "regex": [{"check": "regex", "patterns": [r"\bTCK-\d{4,8}\b", r"(?i)confidential"], "action": "redact"}],
    "keywords": [{"check": "keywords", "words": ["Project Falcon", "internal only", "do not share"]}],
    "json_schema": [{"check": "json_schema", "json_schema": SCHEMA}],
    "empty+truncated+max_length": [
        {"check": "empty"},
        {"check": "truncated"},
        {"check": "max_length", "max_chars": 100_000},
    ],
    "typical: regex+pii+schema": [
        {"check": "regex", "patterns": [r"\bTCK-\d{4,8}\b"], "action": "redact"},
        {"check": "pii", "action": "redact"},
        {"check": "json_schema", "json_schema": SCHEMA},
    ],
}


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    for _ in range(min(50, runs)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    text = answer()
    print(f"answer: {len(text)} characters; {args.runs} runs each; microseconds")
    print(f"{'check set':32} {'p50 µs':>9} {'p99 µs':>9}")
    for name, specs in CASES.items():
        guards = compile_checks([msgspec.convert(s, CheckSpec) for s in specs])
        p50, p99 = timed(lambda g=guards: check_output(g, text, finish_reason="stop"), args.runs)
        print(f"{name:32} {p50:9.1f} {p99:9.1f}")
    guards = compile_checks([msgspec.convert(s, CheckSpec) for s in CASES["typical: regex+pii+schema"][:2]])
    deltas = [text[i : i + 4] for i in range(0, len(text), 4)]

    def streamed() -> None:
        guard = StreamGuard(guards)
        for delta in deltas:
            guard.feed(delta)
        guard.finish()

    p50, p99 = timed(streamed, max(50, args.runs // 20))
    print(f"{'stream regex+pii, whole answer':32} {p50:9.1f} {p99:9.1f}  ({len(deltas)} deltas)")


if __name__ == "__main__":
    main()
