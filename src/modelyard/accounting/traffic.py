"""Traffic figures from the spend log's rollups: the latency histogram's buckets and percentiles from it.

The rollup tables (state/migrations.py, migration 5) keep, per minute and per hour, a count of requests
in each latency bucket below; a percentile is read off the summed histogram by linear interpolation inside
its bucket, so it is exact to within one bucket's width (the overview shows it as such). Pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

#: Upper edges (ms) of the latency buckets; bucket i holds latencies in [edge[i-1], edge[i]), the last
#: bucket (index len(edges)) everything from the last edge up.
LATENCY_EDGES_MS: tuple[float, ...] = (
    50.0,
    100.0,
    200.0,
    300.0,
    500.0,
    750.0,
    1000.0,
    1500.0,
    2000.0,
    3000.0,
    5000.0,
    7500.0,
    10000.0,
    15000.0,
    30000.0,
    60000.0,
    120000.0,
)
BUCKETS = len(LATENCY_EDGES_MS) + 1


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of one request's latency (a non-finite or negative latency counts as 0)."""
    if not math.isfinite(latency_ms) or latency_ms < 0:
        return 0
    return bisect.bisect_right(LATENCY_EDGES_MS, latency_ms)


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram of LATENCY_EDGES_MS buckets, interpolated linearly inside
    its bucket (the last, open bucket reports its lower edge); None when the histogram is empty."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_EDGES_MS[i - 1] if i > 0 else 0.0
            if i >= len(LATENCY_EDGES_MS):
                return low
            high = LATENCY_EDGES_MS[i]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return LATENCY_EDGES_MS[-1]
