"""A simulated provider's per-model rate limits: token buckets of requests and tokens, and peak-rate counters.

Providers describe RPM/TPM as token buckets refilled continuously (Anthropic: "your capacity is continuously
replenished up to your maximum limit, rather than being reset at fixed intervals"). Each bucket here holds a
level of available units, refilled at `limit / 60` per second up to `burst_s` seconds of that rate (at least one
unit, so an idle bucket always admits one request). A request is admitted only when every bucket holds its
cost; otherwise it is refused at once with the time until it would fit, never held.

TPM counts what the provider reserves at admission: the prompt's tokens plus `max_tokens` (or the model's
largest answer when the request sets none). A request larger than the whole token bucket fits only into a
full one and leaves it in debt, which later requests wait out.

This arithmetic is deliberately the simulator's own (a level, not the gateway's GCRA in routing/limits.py):
tests and benchmarks check the gateway's limiter against someone else's bookkeeping. Time is passed in
(`time.monotonic` seconds) so the arithmetic is table-testable.
"""

from __future__ import annotations

from collections import deque

from modelyard.sim.fleet import RateLimit

#: Slack for float arithmetic: a request short of its cost by less than this fits.
_EPSILON = 1e-9


class Bucket:
    """Units available now (`level`), refilled continuously at `rate` per second up to `capacity`."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: int, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, 1.0)
        self.level = self.capacity  # an idle provider starts full
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, now: float, cost: float) -> float:
        """Seconds until `cost` units fit (0.0: now); one larger than the bucket waits for a full bucket."""
        self.refill(now)
        short = min(cost, self.capacity) - self.level
        return short / self.rate if short > _EPSILON else 0.0

    def take(self, cost: float) -> None:
        self.level -= cost  # may go below zero: a request larger than the bucket leaves a debt


class Limiter:
    """The request and token buckets of one model; built from its `RateLimit`."""

    __slots__ = ("requests", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.requests = Bucket(limit.rpm, limit.burst_s, now) if limit.rpm is not None else None
        self.tokens = Bucket(limit.tpm, limit.burst_s, now) if limit.tpm is not None else None

    def admit(self, now: float, tokens: int) -> float:
        """Take one request of `tokens` and answer 0.0, or take nothing and answer the seconds until it fits."""
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.wait(now, 1.0)
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait(now, float(tokens)))
        if wait > 0.0:
            return wait
        if self.requests is not None:
            self.requests.take(1.0)
        if self.tokens is not None:
            self.tokens.take(float(tokens))
        return 0.0


class RateLimits:
    """Every model's limiter, made on first use from the model's current `rate_limit`; owned by one app."""

    def __init__(self) -> None:
        self._limiters: dict[str, Limiter] = {}

    def admit(self, model: str, limit: RateLimit | None, now: float, tokens: int) -> float:
        """0.0 when model `model` admits a request of `tokens` now (and it is counted), else the wait in s."""
        if limit is None:
            return 0.0
        limiter = self._limiters.get(model)
        if limiter is None:
            limiter = self._limiters[model] = Limiter(limit, now)
        return limiter.admit(now, tokens)

    def forget(self, model: str) -> None:
        """Start this model's buckets full again (its limit changed)."""
        self._limiters.pop(model, None)

    def clear(self) -> None:
        self._limiters.clear()


class PeakRate:
    """The most events in any sliding window of `window_s` seconds: the timestamps inside the window are kept
    (a deque, bounded by the window's traffic) and the largest count seen is remembered."""

    __slots__ = ("peak", "times", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.times: deque[float] = deque()
        self.peak = 0

    def add(self, now: float) -> None:
        times = self.times
        times.append(now)
        edge = now - self.window_s
        while times[0] <= edge:
            times.popleft()
        if len(times) > self.peak:
            self.peak = len(times)
