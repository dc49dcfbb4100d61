"""Live health of each deployment: latency EWMAs and p95, requests in flight, circuit breakers.

The executor writes (it owns the clock); strategies only read `DeploymentHealth` objects. All methods are
synchronous and O(1) amortised (the p95 is recomputed from a small ring buffer every 16th sample), so one
event loop can update them without locks.

Sharing between replicas (state/redis_health.py) goes through the methods under "fleet" below, called by a
background task, never by a request: `shared` makes a passed cooldown wait for the fleet's probe grant
(`grant_probe`) instead of letting the next request probe; `apply_shared` adopts a newer fleet verdict;
`own_stats`/`blend` publish this replica's latency statistics and mix the fleet's into the fields strategies
read, so the request path reads the same attributes at the same cost whether sharing is on or off.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection
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
#: Half-life (seconds) of the recent-sample count that weighs a replica's statistics in the fleet blend.
STATS_HALF_LIFE_S = 30.0

#: One replica's latency statistics for one deployment: EWMA total ms, EWMA TTFT ms, p95 ms, weight (its
#: recent sample count, decayed).
Stats = tuple[float | None, float | None, float | None, float]


@dataclass(slots=True)
class _Fleet:
    """What the last blend wrote, so this replica's own EWMAs can be told apart from the fleet's afterwards."""

    successes: int = 0
    at: float = 0.0
    weight: float = 0.0
    own_total: float | None = None
    own_ttft: float | None = None
    blended_total: float | None = None
    blended_ttft: float | None = None


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
    #: The fleet verdict (state/redis_health.py) this replica last published or adopted; 0: none.
    epoch: int = 0
    #: With sharing on: until when this replica holds the fleet's half-open probe (local clock).
    probe_until: float = 0.0
    _fleet: _Fleet | None = None
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

    def own_p95(self) -> float | None:
        """The p95 of this replica's own samples (`p95_ms` may hold the fleet's blend)."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


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
        #: Health shared with other replicas: a passed cooldown waits for the fleet's probe grant.
        self.shared = False
        #: True while `apply_shared` changes a state: listeners can tell a fleet verdict from a local one.
        self.remote = False

    def reconfigure(
        self,
        policy: BreakerPolicy,
        *,
        alpha: float,
        keep: Collection[str],
        policies: dict[str, BreakerPolicy] | None = None,
    ) -> None:
        """A reload: new breaker settings; deployments not in `keep` (removed, or whose identity changed) start
        afresh (their entries, unhealthy marks and slow marks dropped); latency bounds are re-watched by the caller."""
        self.policy = policy
        self.policies = policies or {}
        self.alpha = alpha
        for name in [name for name in self._health if name not in keep]:
            del self._health[name]
        self.unhealthy.intersection_update(self._health)
        self.clear_watches()

    def clear_watches(self) -> None:
        """Forget every watched latency bound (a reload's bounds are watched again with `watch_latency`)."""
        self._slow = {}

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

    def knows(self, name: str) -> bool:
        """Whether this tracker has an entry for `name` (without making one, unlike `get`)."""
        return name in self._health

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
            return self._may_probe(health, now)
        return not health.probe_in_flight

    def _may_probe(self, health: DeploymentHealth, now: float) -> bool:
        """Cooldown over and, with sharing, this replica holds the fleet's probe grant."""
        if now - health.opened_at < self.policy_for(health.name).cooldown_s:
            return False
        return not self.shared or health.probe_until > now

    def on_start(self, name: str, now: float) -> None:
        health = self.get(name)
        health.in_flight += 1
        if health.state is BreakerState.OPEN and self._may_probe(health, now):
            health.probe_until = 0.0  # one grant, one probe: the next one needs a new grant
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

    # ------------------------------------------------------------------ fleet (state/redis_health.py)

    def subscribe(self, listener: StateListener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: StateListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def breaker(self, name: str) -> tuple[BreakerState, int, float]:
        """(state, fleet epoch, open-until on the local clock) of one deployment."""
        health = self.get(name)
        return health.state, health.epoch, health.opened_at + self.policy_for(name).cooldown_s

    def apply_shared(self, name: str, *, open: bool, open_until: float, epoch: int) -> BreakerState | None:
        """Adopt the fleet's verdict `epoch` (open until `open_until` on the local clock, or closed) when it is
        newer than the one held; the state it replaced, or None when it was not newer."""
        health = self.get(name)
        if epoch <= health.epoch:
            return None
        old = health.state
        health.epoch = epoch
        health.probe_until = 0.0
        self.remote = True
        try:
            if open:
                health.opened_at = open_until - self.policy_for(name).cooldown_s
                health.probe_in_flight = False  # a probe of ours still running no longer decides anything
                self._transition(health, BreakerState.OPEN)
            elif old is not BreakerState.CLOSED:
                health.probe_in_flight = False
                health.recent_failures.clear()
                health.recent_outcomes.clear()
                self._transition(health, BreakerState.CLOSED)
        finally:
            self.remote = False
        return old

    def probe_due(self, name: str, now: float) -> int | None:
        """The fleet epoch whose probe this replica should try to win now (open, cooldown over, no grant)."""
        health = self.get(name)
        if health.state is not BreakerState.OPEN or health.probe_until > now:
            return None
        if now - health.opened_at < self.policy_for(name).cooldown_s:
            return None
        return health.epoch

    def grant_probe(self, name: str, until: float) -> None:
        """This replica won the fleet's probe: one request may go to `name` (half-open) until `until`."""
        self.get(name).probe_until = until

    def own_stats(self, now: float) -> dict[str, Stats]:
        """This replica's own latency statistics per deployment (what it publishes), the fleet's blend taken
        back out of the EWMAs: after `k` samples on top of a blended value `B` the field holds
        `(1-a)^k * B + S` where this replica's own EWMA is `(1-a)^k * own + S`."""
        stats: dict[str, Stats] = {}
        keep = 1.0 - self.alpha
        for name, health in self._health.items():
            fleet = health._fleet
            if fleet is None:
                fleet = health._fleet = _Fleet(
                    at=now, blended_total=health.ewma_total_ms, blended_ttft=health.ewma_ttft_ms
                )
                fleet.own_total, fleet.own_ttft = health.ewma_total_ms, health.ewma_ttft_ms
                fleet.weight = float(health.successes)
                fleet.successes = health.successes
                k = 0
            else:
                k = health.successes - fleet.successes
                decay = keep**k
                fleet.own_total = _unblend(health.ewma_total_ms, fleet.blended_total, fleet.own_total, decay, k)
                fleet.own_ttft = _unblend(health.ewma_ttft_ms, fleet.blended_ttft, fleet.own_ttft, decay, k)
                fleet.weight = fleet.weight * 0.5 ** (max(0.0, now - fleet.at) / STATS_HALF_LIFE_S) + k
                fleet.successes = health.successes
                fleet.at = now
            if fleet.own_total is not None or fleet.own_ttft is not None:
                stats[name] = (fleet.own_total, fleet.own_ttft, health.own_p95(), fleet.weight)
            fleet.blended_total, fleet.blended_ttft = health.ewma_total_ms, health.ewma_ttft_ms
        return stats

    def blend(self, name: str, others: list[Stats]) -> None:
        """Mix other replicas' statistics into the fields strategies read (weighted by recent samples); call
        after `own_stats` in the same sync."""
        health = self.get(name)
        fleet = health._fleet
        if fleet is None:
            fleet = health._fleet = _Fleet(successes=health.successes)
        mine: Stats = (fleet.own_total, fleet.own_ttft, health.own_p95(), fleet.weight)
        rows = [mine, *others]
        health.ewma_total_ms = fleet.blended_total = _mean(rows, 0)
        health.ewma_ttft_ms = fleet.blended_ttft = _mean(rows, 1)
        p95 = _mean(rows, 2)
        if p95 is not None and p95 != health.p95_ms:
            health.p95_ms = p95
            for bound, slow in self._slow.items():
                if p95 > bound:
                    slow.add(name)
                else:
                    slow.discard(name)


def _unblend(field: float | None, blended: float | None, own: float | None, decay: float, k: int) -> float | None:
    """This replica's own EWMA, given the field now and what the last blend wrote (see `own_stats`)."""
    if field is None or blended is None:
        return field
    if own is None:
        return None if k == 0 else (field - decay * blended) / (1.0 - decay)
    return field - decay * (blended - own)


def _mean(rows: list[Stats], i: int) -> float | None:
    """Weighted mean of column `i` over the rows that have it (a replica with no recent samples still counts a
    little, so a fleet that went quiet keeps its last view)."""
    total = weights = 0.0
    for row in rows:
        value = row[i]
        if value is not None:
            weight = row[3] + 1e-3
            total += value * weight
            weights += weight
    return total / weights if weights else None
