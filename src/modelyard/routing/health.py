"""Live health of each deployment: latency EWMAs and p95, requests in flight, circuit breakers.

The executor writes (it owns the clock); strategies only read `DeploymentHealth` objects. All methods are
synchronous and O(1) amortised (the p95 is recomputed from a small ring buffer every 16th sample), so one
event loop can update them without locks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from modelyard.schema.errors import ErrorKind

log = logging.getLogger("modelyard.health")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open after `failures` counted failures within `window_s`, or at `error_rate` over `min_requests`."""

    failures: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0
    error_rate: float | None = None
    min_requests: int = 20
    counted_kinds: frozenset[ErrorKind] = frozenset(
        {ErrorKind.SERVER, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.RATE_LIMITED}
    )


_SAMPLES = 128


@dataclass(slots=True)
class DeploymentHealth:
    """What the router knows about one deployment right now."""

    name: str
    ewma_ttft_ms: float | None = None
    ewma_total_ms: float | None = None
    in_flight: int = 0
    state: BreakerState = BreakerState.CLOSED
    opened_at: float = 0.0
    probe_in_flight: bool = False
    successes: int = 0
    failures: int = 0
    #: Timestamps of counted failures inside the breaker window (oldest first).
    recent_failures: deque[float] = field(default_factory=deque)
    #: Outcomes inside the window for the error-rate rule: (time, failed).
    recent_outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    #: p95 of the recent total latencies: a plain attribute (read by every `cost` decision), refreshed
    #: from the ring buffer on every sample while it is small and every 16th sample after that.
    p95_ms: float | None = None
    _latencies: list[float] = field(default_factory=list)
    _cursor: int = 0
    _samples: int = 0

    def add_latency(self, total_ms: float) -> bool:
        """Record a sample; True when the p95 was refreshed."""
        if len(self._latencies) < _SAMPLES:
            self._latencies.append(total_ms)
        else:
            self._latencies[self._cursor] = total_ms
            self._cursor = (self._cursor + 1) % _SAMPLES
        self._samples += 1
        if self._samples <= 16 or self._samples % 16 == 0:
            ordered = sorted(self._latencies)
            self.p95_ms = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            return True
        return False


StateListener = Callable[[str, BreakerState, BreakerState], None]


class HealthTracker:
    """In-memory health for every deployment of one gateway process."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        alpha: float = 0.2,
        policies: dict[str, BreakerPolicy] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.policies = policies or {}
        self.alpha = alpha
        self._health: dict[str, DeploymentHealth] = {}
        self.listeners: list[StateListener] = []
        #: Deployments whose circuit is not closed: empty in the common case, so filters skip the check.
        self.unhealthy: set[str] = set()
        #: For each watched latency bound (the `max_latency_ms` values of the config), the deployments whose
        #: p95 is above it: the `cost` strategy reads a (usually empty) set instead of every p95.
        self._slow: dict[float, set[str]] = {}
        #: Called with a deployment's name whenever one of its requests ends (its in-flight slot is free):
        #: the admission queue's wake-up (routing/admission.py). It must not call back into this tracker.
        self.on_release: Callable[[str], None] | None = None

    def watch_latency(self, bound: float) -> None:
        """Keep the set of deployments whose p95 exceeds `bound` up to date (see `slow_over`)."""
        slow = self._slow.setdefault(float(bound), set())
        for name, health in self._health.items():
            if health.p95_ms is not None and health.p95_ms > bound:
                slow.add(name)

    def slow_over(self, bound: float) -> set[str] | None:
        """Deployments whose p95 exceeds a watched `bound`; None when the bound is not watched."""
        return self._slow.get(float(bound))

    def get(self, name: str) -> DeploymentHealth:
        health = self._health.get(name)
        if health is None:
            health = self._health[name] = DeploymentHealth(name)
        return health

    def all(self) -> dict[str, DeploymentHealth]:
        return self._health

    def policy_for(self, name: str) -> BreakerPolicy:
        return self.policies.get(name, self.policy)

    # ------------------------------------------------------------------ breaker

    def available(self, name: str, now: float) -> bool:
        """May a request go to this deployment now? (Does not reserve the half-open probe.)"""
        health = self.get(name)
        if health.state is BreakerState.CLOSED:
            return True
        if health.state is BreakerState.OPEN:
            return now - health.opened_at >= self.policy_for(name).cooldown_s
        return not health.probe_in_flight

    def on_start(self, name: str, now: float) -> None:
        health = self.get(name)
        health.in_flight += 1
        if health.state is BreakerState.OPEN and now - health.opened_at >= self.policy_for(name).cooldown_s:
            self._transition(health, BreakerState.HALF_OPEN)
        if health.state is BreakerState.HALF_OPEN:
            health.probe_in_flight = True

    def on_success(self, name: str, now: float, total_ms: float, ttft_ms: float | None = None) -> None:
        health = self.get(name)
        health.in_flight = max(0, health.in_flight - 1)
        if self.on_release is not None:
            self.on_release(name)
        health.successes += 1
        alpha = self.alpha
        health.ewma_total_ms = (
            total_ms if health.ewma_total_ms is None else (alpha * total_ms + (1 - alpha) * health.ewma_total_ms)
        )
        if ttft_ms is not None:
            health.ewma_ttft_ms = (
                ttft_ms if health.ewma_ttft_ms is None else (alpha * ttft_ms + (1 - alpha) * health.ewma_ttft_ms)
            )
        if health.add_latency(total_ms) and self._slow:
            p95 = health.p95_ms
            for bound, slow in self._slow.items():
                if p95 is not None and p95 > bound:
                    slow.add(name)
                else:
                    slow.discard(name)
        self._record_outcome(health, now, failed=False)
        if health.state is BreakerState.HALF_OPEN:
            health.probe_in_flight = False
            health.recent_failures.clear()
            health.recent_outcomes.clear()
            self._transition(health, BreakerState.CLOSED)

    def on_failure(self, name: str, now: float, kind: ErrorKind) -> None:
        health = self.get(name)
        health.in_flight = max(0, health.in_flight - 1)
        if self.on_release is not None:
            self.on_release(name)
        policy = self.policy_for(name)
        if kind not in policy.counted_kinds:
            if health.state is BreakerState.HALF_OPEN:
                health.probe_in_flight = False  # not the deployment's fault: let another probe through
            return
        health.failures += 1
        self._record_outcome(health, now, failed=True)
        if health.state is BreakerState.HALF_OPEN:
            health.probe_in_flight = False
            health.opened_at = now
            self._transition(health, BreakerState.OPEN)
            return
        window_start = now - policy.window_s
        failures = health.recent_failures
        failures.append(now)
        while failures and failures[0] < window_start:
            failures.popleft()
        if health.state is BreakerState.CLOSED and self._should_open(health, policy):
            health.opened_at = now
            self._transition(health, BreakerState.OPEN)

    def on_cancel(self, name: str) -> None:
        """An attempt abandoned by us (a lost hedge, a client that went away): no verdict."""
        health = self.get(name)
        health.in_flight = max(0, health.in_flight - 1)
        if self.on_release is not None:
            self.on_release(name)
        if health.state is BreakerState.HALF_OPEN:
            health.probe_in_flight = False

    def _record_outcome(self, health: DeploymentHealth, now: float, *, failed: bool) -> None:
        policy = self.policy_for(health.name)
        if policy.error_rate is None:
            return
        outcomes = health.recent_outcomes
        outcomes.append((now, failed))
        window_start = now - policy.window_s
        while outcomes and outcomes[0][0] < window_start:
            outcomes.popleft()

    @staticmethod
    def _should_open(health: DeploymentHealth, policy: BreakerPolicy) -> bool:
        if len(health.recent_failures) >= policy.failures:
            return True
        if policy.error_rate is not None and len(health.recent_outcomes) >= policy.min_requests:
            failed = sum(1 for _, f in health.recent_outcomes if f)
            return failed / len(health.recent_outcomes) >= policy.error_rate
        return False

    def _transition(self, health: DeploymentHealth, new: BreakerState) -> None:
        old = health.state
        if old is new:
            return
        health.state = new
        if new is BreakerState.CLOSED:
            self.unhealthy.discard(health.name)
        else:
            self.unhealthy.add(health.name)
        log.warning("circuit %s: %s -> %s", health.name, old.value, new.value)
        for listener in self.listeners:
            listener(health.name, old, new)
