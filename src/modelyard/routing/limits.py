"""Requests-per-minute and tokens-per-minute per deployment: token buckets kept as GCRA (in memory, per process).

Providers describe their limits as token buckets refilled continuously (Anthropic: "capacity is continuously
replenished up to your maximum"; OpenAI: limits "may be quantized" to shorter periods), so the gateway keeps
the same arithmetic and dispatches at the steady rate under saturation, instead of a sliding minute's
waves (600 at once, then nothing for a minute). Each bucket is one number, its theoretical arrival time
(`tat`): a request of cost `c` takes `c * T` seconds of the bucket (`T` = 60 / limit) and fits while the
backlog `tat - now` stays within the depth `burst_s`. One larger than the whole depth (a 10k-token prompt
against a small TPM) fits only into a full bucket, and its debt is paid off before the next.

`wait_s` is how long until a request fits: the admission queue (routing/admission.py) sets its one timer
by it. Tokens are taken from the pre-call estimate and corrected from the real usage afterwards. With
`state.redis_url` the replicas share the buckets (state/redis_rates.py); this process's copy then also
holds what the shared one refused (`hold`), so the queue knows when to try again.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.config.model import Limits

_EPSILON = 1e-9


class _Bucket:
    """One GCRA bucket: `tat` (monotonic seconds) and its emission interval."""

    __slots__ = ("depth", "interval", "tat")

    def __init__(self, per_minute: int, burst_s: float) -> None:
        self.interval = 60.0 / per_minute
        self.depth = max(burst_s, self.interval)  # at least one request always fits an idle bucket
        self.tat = 0.0

    def wait(self, now: float, cost: int) -> float:
        """Seconds until `cost` fits (0.0: now)."""
        backlog = self.tat - now
        if backlog <= _EPSILON:
            return 0.0
        need = cost * self.interval
        if need > self.depth:
            return backlog  # larger than the bucket: it goes into a full one
        over = backlog + need - self.depth
        return over if over > _EPSILON else 0.0

    def take(self, now: float, cost: int) -> None:
        self.tat = max(self.tat, now) + cost * self.interval

    def adjust(self, cost: int) -> None:
        """Give back (negative) or take more (positive) of an earlier `take`."""
        self.tat += cost * self.interval


class _Buckets:
    __slots__ = ("requests", "shape", "tokens")

    def __init__(self, limits: Limits) -> None:
        self.shape = (limits.rpm, limits.tpm, limits.burst_s)
        self.requests = _Bucket(limits.rpm, limits.burst_s) if limits.rpm is not None else None
        self.tokens = _Bucket(limits.tpm, limits.burst_s) if limits.tpm is not None else None


class DeploymentLimits:
    """RPM/TPM buckets for every deployment of this process (a reload with new limits starts them anew)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Buckets] = {}

    def _of(self, name: str, limits: Limits) -> _Buckets:
        buckets = self._buckets.get(name)
        if buckets is None or buckets.shape != (limits.rpm, limits.tpm, limits.burst_s):
            buckets = self._buckets[name] = _Buckets(limits)
        return buckets

    def forget(self, names: Iterable[str]) -> None:
        """A reload: these deployments (removed, or pointing somewhere else now) start with full buckets."""
        for name in names:
            self._buckets.pop(name, None)

    def wait_s(self, name: str, limits: Limits, now: float, tokens: int) -> float:
        """Seconds until one more request of `tokens` fits (0.0: it fits now)."""
        buckets = self._buckets.get(name)
        if buckets is None:
            return 0.0
        wait = 0.0
        if buckets.requests is not None:
            wait = buckets.requests.wait(now, 1)
        if buckets.tokens is not None:
            wait = max(wait, buckets.tokens.wait(now, tokens))
        return wait

    def headroom(self, name: str, limits: Limits, now: float, tokens: int) -> str | None:
        """None when one more request of `tokens` fits now, else the reason it does not."""
        buckets = self._buckets.get(name)
        if buckets is None:
            return None
        if buckets.requests is not None and buckets.requests.wait(now, 1) > 0.0:
            return f"rpm limit {limits.rpm} reached"
        if buckets.tokens is not None and buckets.tokens.wait(now, tokens) > 0.0:
            return f"tpm limit {limits.tpm} reached ({tokens} tokens needed)"
        return None

    def take(self, name: str, limits: Limits, now: float, tokens: int) -> None:
        """Count one request of `tokens` (estimated) against the buckets."""
        buckets = self._of(name, limits)
        if buckets.requests is not None:
            buckets.requests.take(now, 1)
        if buckets.tokens is not None:
            buckets.tokens.take(now, tokens)

    def give_back(self, name: str, tokens: int) -> None:
        """Undo a `take` whose request never reached the provider."""
        buckets = self._buckets.get(name)
        if buckets is None:
            return
        if buckets.requests is not None:
            buckets.requests.adjust(-1)
        if buckets.tokens is not None:
            buckets.tokens.adjust(-tokens)

    def correct_tokens(self, name: str, delta: int) -> None:
        """The real usage differed from the estimate by `delta` tokens."""
        buckets = self._buckets.get(name)
        if buckets is not None and buckets.tokens is not None and delta:
            buckets.tokens.adjust(delta)

    def hold(self, name: str, limits: Limits, now: float, wait_s: float) -> None:
        """Another replica has used the shared bucket: nothing fits here for `wait_s` seconds."""
        buckets = self._of(name, limits)
        for bucket in (buckets.requests, buckets.tokens):
            if bucket is not None:
                bucket.tat = max(bucket.tat, now + wait_s + bucket.depth - bucket.interval)

    def held(self, name: str, now: float) -> tuple[float, float]:
        """(requests, tokens) the buckets hold at `now`: what was taken and has not refilled yet."""
        buckets = self._buckets.get(name)
        if buckets is None:
            return 0.0, 0.0
        return tuple(  # type: ignore[return-value]
            max(0.0, b.tat - now) / b.interval if b is not None else 0.0 for b in (buckets.requests, buckets.tokens)
        )

    def room(
        self, name: str, limits: Limits, now: float
    ) -> tuple[float | None, float | None, float | None, float | None]:
        """(requests left, tokens left, requests capacity, tokens capacity) of the buckets at `now`, None where no
        limit is set: what the dashboard shows as headroom (a read; nothing is taken). The capacity is the
        bucket's depth in requests or tokens (`burst_s` of the rate, at least one request)."""
        requests, tokens = self.held(name, now)
        out: list[float | None] = []
        capacities: list[float | None] = []
        for per_minute, used in ((limits.rpm, requests), (limits.tpm, tokens)):
            if per_minute is None:
                out.append(None)
                capacities.append(None)
                continue
            bucket = _Bucket(per_minute, limits.burst_s)
            capacity = bucket.depth / bucket.interval
            out.append(max(0.0, capacity - used))
            capacities.append(capacity)
        return out[0], out[1], capacities[0], capacities[1]
