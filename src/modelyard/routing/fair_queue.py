"""The admission queue's scheduler: per priority class, a fair queue of keys; per pool, its classes.

Pure bookkeeping, no clock or I/O of its own (times are passed in): who is next (`PoolQueue.in_turn`,
`ClassQueue.head`), what a dispatch charges, where a waiter leaves from, and what a class can expect of a
capacity under weighted fair sharing (`PoolQueue.class_rate`). routing/admission.py owns the waiting, the
timers and the decisions.

Weighted fair queuing by tokens: each class's pass grows by `tokens / weight` per dispatch, and the class
whose head would finish first (pass + head tokens / weight) goes next; within a class each key is a flow
with its own pass (equal weights), ordered the same way on a heap.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from modelyard.config.model import QueueSettings
from modelyard.routing.plan import Plan

if TYPE_CHECKING:
    from modelyard.routing.admission import Grant

_K = TypeVar("_K")

#: How long the dispatch rate is averaged over (seconds): long enough to smooth single calls, short enough
#: to follow a provider that slows down.
RATE_HORIZON_S = 5.0
#: A class first seen less than this long ago (seconds) is counted at its full weight when the others'
#: shares are estimated: its first few requests say little about what it wants (at the onset of an overload
#: they underestimate it), and a second is enough for them to mean something.
SETTLING_S = 1.0
#: Events before a rate is read as one (fewer: their amount spread over the whole horizon).
SETTLING_EVENTS = 3


class DecayingRate:
    """Tokens per second, exponentially decayed over `RATE_HORIZON_S`."""

    __slots__ = ("events", "first", "last", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.last = -1.0
        self.first = -1.0
        self.events = 0

    def add(self, now: float, amount: float) -> None:
        if self.first < 0 or now - self.last > RATE_HORIZON_S:
            self.first = self.last = now  # (re)started: what came before says nothing about now
            self.value = 0.0
            self.events = 0
        self.value = self.value * math.exp(-(now - self.last) / RATE_HORIZON_S) + amount
        self.last = now
        self.events += 1

    @property
    def settled(self) -> bool:
        """Enough events for a rate: a single request a moment ago is no rate of many per second."""
        return self.events >= SETTLING_EVENTS

    def fresh(self, now: float) -> bool:
        return self.last >= 0 and now - self.last <= RATE_HORIZON_S

    def per_s(self, now: float) -> float:
        if self.first < 0:
            return 0.0
        decayed = self.value * math.exp(-(now - self.last) / RATE_HORIZON_S)
        if not self.settled:
            return decayed / RATE_HORIZON_S  # a few requests: as if spread over the horizon
        span = min(RATE_HORIZON_S, max(now - self.first, 0.5))
        return decayed / span


class Waiter:
    __slots__ = ("cls", "deadline", "enqueued", "future", "plan", "queue", "tenant", "tokens")

    def __init__(
        self, queue: PoolQueue, cls: ClassQueue, tenant: str, tokens: int, plan: Plan, enqueued: float, deadline: float
    ) -> None:
        self.queue = queue
        self.cls = cls
        self.tenant = tenant
        self.tokens = tokens
        self.plan = plan
        self.enqueued = enqueued
        self.deadline = deadline
        self.future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()


class Flow:
    """One key's waiters within a class."""

    __slots__ = ("pass_", "seq", "tokens", "waiters")

    def __init__(self, pass_: float) -> None:
        self.waiters: deque[Waiter] = deque()
        self.pass_ = pass_
        self.tokens = 0
        self.seq = 0  # the heap entry that is current for this flow


class ClassQueue:
    """One priority class of one model's queue: its flows, fair among themselves."""

    __slots__ = (
        "depth",
        "flows",
        "heap",
        "keys",
        "name",
        "pass_",
        "rank",
        "rate",
        "seq",
        "tokens",
        "vtime",
        "weight",
    )

    def __init__(self, rank: int, name: str, weight: float) -> None:
        self.rank = rank
        self.name = name
        self.weight = weight
        self.pass_ = 0.0
        self.vtime = 0.0  # the pass of the flow served last: where a newly backlogged flow starts
        self.flows: dict[str, Flow] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.seq = 0
        self.depth = 0
        self.tokens = 0
        self.rate = DecayingRate()
        #: Each key's recent dispatches in this class: its demand when the class's rate is shared (`key_share`).
        self.keys: dict[str, DecayingRate] = {}

    def push(self, waiter: Waiter) -> None:
        flow = self.flows.get(waiter.tenant)
        if flow is None:
            flow = self.flows[waiter.tenant] = Flow(self.vtime)
        flow.waiters.append(waiter)
        if len(flow.waiters) == 1:
            flow.pass_ = max(flow.pass_, self.vtime)
            self._schedule(waiter.tenant, flow)
        flow.tokens += waiter.tokens
        self.depth += 1
        self.tokens += waiter.tokens

    def _schedule(self, tenant: str, flow: Flow) -> None:
        self.seq += 1
        flow.seq = self.seq
        # Ordered by virtual finish (pass + the head's tokens): a small request is not kept behind a big one.
        heapq.heappush(self.heap, (flow.pass_ + flow.waiters[0].tokens, self.seq, tenant))
        if len(self.heap) > 2 * len(self.flows) + 64:  # stale entries of flows that left: rebuild
            self.heap = [(f.pass_ + f.waiters[0].tokens, f.seq, t) for t, f in self.flows.items() if f.waiters]
            heapq.heapify(self.heap)

    def head(self) -> Waiter | None:
        heap = self.heap
        while heap:
            _, seq, tenant = heap[0]
            flow = self.flows.get(tenant)
            if flow is not None and flow.seq == seq and flow.waiters:
                return flow.waiters[0]
            heapq.heappop(heap)
        return None

    def pop(self, waiter: Waiter, now: float) -> None:
        """Dispatch `waiter` (the head): charge its flow, move the flow back into the heap."""
        heapq.heappop(self.heap)
        flow = self.flows[waiter.tenant]
        flow.waiters.popleft()
        self.vtime = flow.pass_
        flow.pass_ += waiter.tokens
        self._forget(waiter, flow)
        if flow.waiters:
            self._schedule(waiter.tenant, flow)

    def remove(self, waiter: Waiter) -> bool:
        """Take a waiter out wherever it is (deadline, client gone); False if it is not queued."""
        flow = self.flows.get(waiter.tenant)
        if flow is None:
            return False
        try:
            head = flow.waiters[0] is waiter
            flow.waiters.remove(waiter)
        except (ValueError, IndexError):
            return False
        self._forget(waiter, flow)
        if head and flow.waiters:
            self._schedule(waiter.tenant, flow)  # its heap entry was for the head that left
        return True

    def _forget(self, waiter: Waiter, flow: Flow) -> None:
        flow.tokens -= waiter.tokens
        self.depth -= 1
        self.tokens -= waiter.tokens
        if not flow.waiters and flow.pass_ <= self.vtime:
            del self.flows[waiter.tenant]  # nothing owed: a returning key starts at vtime anyway

    def served(self, tenant: str, now: float, tokens: int) -> None:
        """A request of this class went to a provider (from the queue or straight on): its rates."""
        self.rate.add(now, tokens)
        rate = self.keys.get(tenant)
        if rate is None:
            rate = self.keys[tenant] = DecayingRate()
        rate.add(now, tokens)

    def key_share(self, tenant: str, class_rate: float, now: float) -> float:
        """What `tenant` can expect of `class_rate`: max-min fair among the keys with demand (keys with waiters,
        and `tenant`, want all they can get; another key what it was served at lately). Forgets keys gone
        longer than the horizon, so the map holds only the class's recent keys."""
        demands: dict[str, float] = {tenant: math.inf}
        gone = []
        for name, rate in self.keys.items():
            if name == tenant:
                continue
            flow = self.flows.get(name)
            if flow is not None and flow.waiters:
                demands[name] = math.inf
            elif rate.fresh(now):
                demands[name] = rate.per_s(now)
            else:
                gone.append(name)
        for name in gone:
            del self.keys[name]
        for name, flow in self.flows.items():
            if flow.waiters:
                demands[name] = math.inf
        return water_fill(class_rate, {name: 1.0 for name in demands}, demands, tenant)

    def own_tokens(self, tenant: str) -> int:
        flow = self.flows.get(tenant)
        return flow.tokens if flow is not None else 0

    def ahead_of(self, tenant: str, tokens: int) -> int:
        """Tokens of this class served before a new request of `tokens` from `tenant` (fair by key)."""
        own = self.flows.get(tenant)
        mine = (own.tokens if own is not None else 0) + tokens
        ahead = mine
        for name, flow in self.flows.items():
            if name != tenant:
                ahead += min(flow.tokens, mine)
        return ahead


class PoolQueue:
    """The queue of one model."""

    __slots__ = ("classes", "deployments", "depth", "model", "per_tenant", "rate", "scheduled", "timer", "timer_at")

    def __init__(self, model: str, settings: QueueSettings) -> None:
        self.model = model
        self.classes = [ClassQueue(i, c.name, c.weight) for i, c in enumerate(settings.classes)]
        self.depth = 0
        self.per_tenant: dict[str, int] = {}
        self.deployments: set[str] = set()
        self.rate = DecayingRate()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.scheduled = False

    def in_turn(self, strict: bool) -> list[tuple[ClassQueue, Waiter]]:
        """The backlogged classes with their heads, in the order they should be served: lowest virtual finish
        (pass + head tokens / weight) first, ties to the higher class; with `strict`, highest class first."""
        heads: list[tuple[float, int, ClassQueue, Waiter]] = []
        for cls in self.classes:
            if cls.depth == 0:
                continue
            head = cls.head()
            if head is not None:
                key = float(cls.rank) if strict else cls.pass_ + head.tokens / cls.weight
                heads.append((key, cls.rank, cls, head))
        heads.sort(key=lambda h: (h[0], h[1]))
        return [(cls, head) for _, _, cls, head in heads]

    def class_rate(self, cls: ClassQueue, total: float, now: float, *, strict: bool) -> float:
        """What `cls` can expect of `total` under weighted fair sharing: the weighted max-min fair allocation
        (water-filling) among the classes with demand, where a class with waiters (and `cls` itself) wants
        all it can get and one without waiters what it was served at lately. Not the class's own observed
        rate: at the onset of an overload that was measured while it had the capacity to itself."""
        demands: dict[ClassQueue, float] = {}
        for other in self.classes:
            rate = other.rate
            if other is cls or other.depth:
                demands[other] = math.inf
            elif rate.fresh(now):
                # A class that has just started (again) with a run of requests may want more than they show:
                # it counts at its full weight until its rate means something (shedding early beats timeouts).
                young = now - rate.first < SETTLING_S and rate.settled
                demands[other] = math.inf if young else rate.per_s(now)
        if strict:
            above = [demands.get(c, 0.0) for c in self.classes[: cls.rank]]
            return max(0.0, total - sum(above))
        return water_fill(total, {c: c.weight for c in demands}, demands, cls)


def oldest_wait(cls: ClassQueue, now: float) -> float:
    oldest = 0.0
    for flow in cls.flows.values():
        if flow.waiters:
            oldest = max(oldest, now - flow.waiters[0].enqueued)
    return oldest


def water_fill(total: float, weights: Mapping[_K, float], demands: Mapping[_K, float], whose: _K) -> float:
    """`whose` part of `total` under weighted max-min fairness: each gets at most its demand, and what one
    does not use is shared by the others in proportion to their weights."""
    open_ = dict(demands)
    remaining = total
    while open_:
        unit = remaining / sum(weights[k] for k in open_)
        satisfied = [k for k, want in open_.items() if want <= weights[k] * unit]
        if not satisfied:
            return weights[whose] * unit if whose in open_ else 0.0
        for k in satisfied:
            remaining -= open_.pop(k)
            if k == whose:
                return demands[k]
    return 0.0
