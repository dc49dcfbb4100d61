"""The sliding one-minute window: one-second buckets, a running sum, and how long until it has room again.

The key limits of the in-memory counters (state/counters.py) count with it (a deployment's RPM/TPM are
token buckets instead: routing/limits.py, as providers describe their own). The same arithmetic runs in
Redis (state/redis_counters.py's Lua script), so the in-memory and the shared counters admit exactly the
same sequences of requests.
"""

from __future__ import annotations

SPAN = 60


class SlidingWindow:
    """Sum of the amounts added in the last `SPAN` whole seconds; O(1) amortised per call.

    Times are Unix seconds (float or int); each lands in the bucket of its whole second.
    """

    __slots__ = ("buckets", "last", "stamps", "total")

    def __init__(self) -> None:
        self.buckets = [0] * SPAN
        self.stamps = [-1] * SPAN
        self.total = 0
        self.last = -1

    def _advance(self, second: int) -> None:
        if second <= self.last:
            return
        if second - self.last >= SPAN:
            self.buckets = [0] * SPAN
            self.stamps = [-1] * SPAN
            self.total = 0
        else:
            for s in range(self.last + 1, second + 1):
                slot = s % SPAN
                if self.stamps[slot] != s:
                    self.total -= self.buckets[slot]
                    self.buckets[slot] = 0
                    self.stamps[slot] = s
        self.last = second

    def value(self, now: float) -> int:
        """The sum over the window ending at `now`."""
        second = int(now)
        if second != self.last:  # the hot path: most calls land in the second already advanced to
            self._advance(second)
        return self.total

    def add(self, now: float, amount: int) -> None:
        second = int(now)
        self._advance(second)
        slot = second % SPAN
        self.stamps[slot] = second
        self.buckets[slot] += amount
        self.total += amount

    def correct(self, at: float, delta: int) -> None:
        """Adjust an earlier `add` (made at `at`) if its bucket is still inside the window (never below zero)."""
        second = int(at)
        slot = second % SPAN
        if self.stamps[slot] == second:
            new = max(0, self.buckets[slot] + delta)
            self.total += new - self.buckets[slot]
            self.buckets[slot] = new

    def wait_s(self, now: float, excess: int) -> float:
        """Seconds until at least `excess` units have left the window (SPAN if they never will)."""
        second = int(now)
        self._advance(second)
        freed = 0
        for s in range(second - SPAN + 1, second + 1):
            slot = s % SPAN
            if self.stamps[slot] == s:
                freed += self.buckets[slot]
                if freed >= excess:
                    return max(0.0, s + SPAN - now)
        return float(SPAN)
