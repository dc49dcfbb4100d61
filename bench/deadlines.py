"""What a provider call's timeout costs: `asyncio.timeout` against the shared-timer `Deadlines`, under uvloop.

    python bench/deadlines.py [--iterations 100000] [--rounds 5]

Three patterns, each per use (µs), the two sides alternated within each round, the median of the rounds:
- `call`: `async with asyncio.timeout(...)` against `with deadlines.timeout(...)` around an await that
  completes (a whole request: one use);
- `stream`: `timeout_at(...)` entered, `reschedule`d once, exited (a stream's read loop: the first-event bound,
  then the whole deadline);
- `bare`: the await alone (what neither side adds).
A stream used `call` once and `stream` once: the per-stream saving is about the sum of the two differences.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from modelyard.providers.deadlines import Deadlines


async def _done() -> None:
    return None


async def per_use(pattern: str, side: str, deadlines: Deadlines, n: int) -> float:
    """µs per use of one pattern: `asyncio` (`async with asyncio.timeout`, what the transport used) or
    `deadlines` (`with deadlines.timeout`, what it uses now)."""
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    if pattern == "bare":
        for _ in range(n):
            await _done()
    elif pattern == "call" and side == "asyncio":
        for _ in range(n):
            async with asyncio.timeout(30):
                await _done()
    elif pattern == "call":
        for _ in range(n):
            with deadlines.timeout(30):
                await _done()
    elif side == "asyncio":
        for _ in range(n):
            async with asyncio.timeout_at(loop.time() + 30) as scope:
                await _done()
                scope.reschedule(loop.time() + 600)
    else:
        for _ in range(n):
            with deadlines.timeout_at(loop.time() + 30) as deadline:
                await _done()
                deadline.reschedule(loop.time() + 600)
    return (time.perf_counter() - began) / n * 1e6


async def run(iterations: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    deadlines = Deadlines()
    results: dict[str, dict[str, list[float]]] = {}
    for index in range(rounds):
        order = ["asyncio", "deadlines"] if index % 2 == 0 else ["deadlines", "asyncio"]
        for pattern in ("bare", "call", "stream"):
            for side in order:
                us = await per_use(pattern, side, deadlines, iterations)
                results.setdefault(pattern, {}).setdefault(side, []).append(us)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = uvloop.run(run(args.iterations, args.rounds))
    print(f"µs per use, uvloop, median (min-max) of {args.rounds} alternated rounds of {args.iterations}")
    print("| pattern | asyncio.timeout | Deadlines | saved |")
    print("|---|---|---|---|")
    for pattern, sides in results.items():
        a, d = sides["asyncio"], sides["deadlines"]
        saved = [x - y for x, y in zip(a, d, strict=True)]
        print(
            f"| {pattern} | {statistics.median(a):.2f} ({min(a):.2f}-{max(a):.2f}) | "
            f"{statistics.median(d):.2f} ({min(d):.2f}-{max(d):.2f}) | {statistics.median(saved):.2f} |"
        )


if __name__ == "__main__":
    main()
