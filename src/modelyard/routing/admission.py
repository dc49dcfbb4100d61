"""The admission queue: when every candidate of a model is at its limits, a request waits its turn.

One queue per model (the plan's model name), in front of the executor. A request goes straight on when its
model's queue is empty and one of its candidates has headroom (RPM/TPM buckets, `max_concurrency`, an
open circuit): that check is the whole cost on an unsaturated gateway. Otherwise it waits:

- **Order.** Weighted fair queuing by tokens: each priority class has a pass that grows by
  `tokens / weight` per dispatch and the backlogged class whose head would finish first (pass + head
  tokens / weight) goes next, so
  under saturation the classes' shares of dispatched tokens follow their weights, and no class starves
  (unless `strict`, which always serves the highest backlogged class). Within a class each key is a flow
  with its own pass (equal weights): one tenant's 10,000 queued calls do not delay another's first call
  by more than its share.
- **Wake-ups, not polling.** A dispatch runs when a request at one of the queue's deployments ends
  (`HealthTracker.on_release`) and at the one moment the head's bucket refills (a single timer, computed
  by `DeploymentLimits.wait_s`) or its circuit's cooldown ends.
- **Grants.** The dispatcher takes the capacity for the request it wakes (its bucket share and its
  in-flight slot) before waking it, so nothing arriving meanwhile can take it; the executor's first attempt
  uses the grant (`Grant`), and a grant that is never used is given back (`release`).
- **Shedding.** A request whose expected wait (its key's backlog over what the key can expect of its class's
  fair share of the capacity: `_expected_wait`) exceeds `SHED_MARGIN` of its deadline is refused at once
  with 429 and a `Retry-After`; so is one that finds the queue (or its key's part of it) full. A request
  whose client goes away leaves the queue at once.
- **Saturation tiers.** A class with `fallback_when_saturated` is served by the model's `when: saturated`
  fallbacks, when one of them has headroom, instead of waiting.

Each replica's queue is its own; with `state.redis_url` the buckets it dispatches against are shared
(docs/queueing.md says what that means for fairness across replicas).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from modelyard.config.model import Deployment, Limits, QueueSettings
from modelyard.routing.fair_queue import (
    RATE_HORIZON_S,
    ClassQueue,
    PoolQueue,
    Waiter,
    oldest_wait,
)
from modelyard.routing.health import BreakerState, HealthTracker
from modelyard.routing.limits import DeploymentLimits
from modelyard.routing.plan import Plan
from modelyard.routing.table import RoutingTable
from modelyard.schema.errors import GatewayError, ModelyardError
from modelyard.state.outage import StateUnavailable

#: A request is shed when its expected wait is above this share of its deadline: the estimate follows the
#: other classes' recent demand, which moves (a critically loaded class's backlog is a random walk), and a
#: smaller backlog costs no goodput while it still covers the deadline (bench/priority.py: 0.9 left 67 batch
#: queue timeouts in 2 minutes, 0.75 six, 0.6 none, batch goodput the same).
SHED_MARGIN = 0.6
#: The most a replica sharing its buckets delays a timed dispatch, so that replicas take turns (seconds).
SHARED_JITTER_S = 0.02
#: Re-check an open circuit this often while a request waits on it (its cooldown may be per deployment).
_CIRCUIT_RECHECK_S = 1.0


class QueueTicket:
    """How one request may queue, as the server resolved it (class, tenant, deadline).

    A plain slotted class, not a frozen dataclass: one is made per request, and a frozen dataclass's
    `__init__` costs several times more."""

    __slots__ = ("call_s", "gone", "max_wait_s", "rank", "tenant")

    def __init__(
        self,
        rank: int,
        tenant: str,
        max_wait_s: float,
        gone: Callable[[], Awaitable[None]] | None = None,
        call_s: float | None = None,
    ) -> None:
        self.rank = rank  # index into `queue.classes` (0 = highest)
        self.tenant = tenant  # the key's id ('' in open mode): the unit of fairness within a class
        self.max_wait_s = max_wait_s
        #: Resolves (or raises) when the client has gone away; awaited only while the request waits.
        self.gone = gone
        #: The client's own bound on the whole request (x-modelyard-timeout-ms): the wait and the call.
        self.call_s = call_s


class Grant:
    """Capacity taken for one request at one deployment: its bucket share and in-flight slot."""

    __slots__ = ("deployment", "rank", "released", "tokens", "used")

    def __init__(self, deployment: Deployment, tokens: int, rank: int = 0) -> None:
        self.deployment = deployment
        self.rank = rank  # the request's class (0 = highest): what it may take of a shared bucket
        self.tokens = tokens
        self.used = False  # the executor's attempt owns it now (and gives it back itself)
        self.released = False


@dataclass(slots=True)
class Admitted:
    """What admission decided: the plan to run (a saturation tier's, maybe), a grant, the time waited."""

    plan: Plan
    grant: Grant | None = None
    waited_ms: float = 0.0


class ClientLeftQueue(ModelyardError):
    """The client went away while its request waited (the request ends without an answer)."""


class SharedBuckets(Protocol):
    """RPM/TPM buckets shared by replicas (state/redis_rates.py's SharedRates)."""

    async def take(self, name: str, limits: Limits, tokens: int, reserve_s: float = 0.0) -> float: ...

    async def give_back(self, name: str, limits: Limits, tokens: int) -> None: ...

    async def close(self) -> None: ...


class QueueListener(Protocol):
    """Metrics for the queue (server/metrics.py implements it)."""

    def on_dispatch(self, model: str, cls: str, waited_s: float) -> None: ...

    def on_shed(self, model: str, cls: str, reason: str) -> None: ...


class AdmissionQueues:
    """Every model's admission queue for one router (per process)."""

    def __init__(
        self,
        settings: QueueSettings,
        table: RoutingTable,
        health: HealthTracker,
        limits: DeploymentLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: The RPM/TPM buckets shared with other replicas (Redis, state/redis_rates.py), when configured.
        self.rates: SharedBuckets | None = None
        self.table = table
        self.health = health
        self.limits = limits
        self.clock = clock
        self.listener: QueueListener | None = None
        self._queues: dict[str, PoolQueue] = {}
        #: Queues with requests waiting, by deployment: who to wake when a request there ends.
        self._waiting_on: dict[str, set[PoolQueue]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._pools = deployment_pools(table)
        self._rng = random.Random()
        self._fallback_classes = frozenset(i for i, c in enumerate(settings.classes) if c.fallback_when_saturated)
        health.on_release = self.poke

    # ------------------------------------------------------------------ the request path

    async def admit(self, plan: Plan, tokens: int, ticket: QueueTicket, replan: Callable[[str], Plan]) -> Admitted:
        """Straight on when the model has headroom, else wait (or a saturation tier, or a 429).

        With shared buckets, a dispatch to a rate-limited deployment is confirmed with one call to the shared
        store (the one round trip on the request path); a refusal means other replicas used the bucket: the
        local copy holds until the shared one refills and the request waits its turn here. An unreachable
        store leaves the local buckets in charge (each replica then keeps to the whole limit by itself)."""
        started = self.clock()
        first = ticket
        while True:
            if not self.must_wait(plan, tokens, ticket):
                if self.rates is None:
                    return Admitted(plan)
                grant = self._grant_now(plan, tokens, ticket.rank)
                if grant is None or await self._confirmed(grant):
                    return Admitted(plan, grant)
                continue  # the local bucket holds now: the next pass queues
            admitted = await self.wait(plan, tokens, ticket, replan)
            if self.rates is None or admitted.grant is None or await self._confirmed(admitted.grant):
                if admitted.waited_ms:  # a saturation tier's request never waited
                    admitted.waited_ms = (self.clock() - started) * 1000
                return admitted
            left = first.max_wait_s - (self.clock() - started)
            if left <= 0:
                raise _refusal(f"no capacity at `{plan.model}` within this request's deadline", "queue_timeout", 1.0)
            call_s = None if first.call_s is None else first.call_s - (self.clock() - started)
            ticket = QueueTicket(ticket.rank, ticket.tenant, left, ticket.gone, call_s)

    def _grant_now(self, plan: Plan, tokens: int, rank: int) -> Grant | None:
        """Take the first candidate with local headroom for this request (shared mode's fast path)."""
        now = self.clock()
        for dep in self._candidates(plan):
            if self._wait_at(dep, now, tokens) == 0.0:
                return self._take(dep, tokens, now, rank) if dep.limits.rate_limited else None
        return None

    def _reserve_s(self, dep: Deployment, rank: int) -> float:
        """How much of a shared bucket a request of class `rank` must leave to higher classes on any replica:
        one request interval per class above it (the queue orders classes within a replica; this orders them
        across replicas racing for the same refill)."""
        rpm = dep.limits.rpm
        if rank == 0 or rpm is None:
            return 0.0
        return rank * 60.0 / rpm

    async def _confirmed(self, grant: Grant) -> bool:
        """Whether the shared bucket agrees to `grant` (taking its share there too); if not, the grant is
        given back and the local bucket held until the shared one has room."""
        dep = grant.deployment
        rates = self.rates
        if rates is None or not dep.limits.rate_limited:
            return True
        try:
            wait = await rates.take(dep.name, dep.limits, grant.tokens, self._reserve_s(dep, grant.rank))
        except StateUnavailable:
            return True
        except BaseException:
            self.release(grant, shared=False)
            raise
        if wait <= 0.0:
            return True
        self.release(grant, shared=False)  # first: giving back moves the local bucket, the hold must stay
        self.limits.hold(dep.name, dep.limits, self.clock(), wait)
        return False

    def enabled_for(self, model: str) -> bool:
        group = self.table.groups.get(model)
        own = group.group.queue if group is not None else None
        if own is not None and own.enabled is not None:
            return own.enabled
        return self.settings.enabled

    def must_wait(self, plan: Plan, tokens: int, ticket: QueueTicket | None = None) -> bool:
        """Whether this request cannot go straight on: its model's queue has waiters, or none of its
        candidates has headroom now. O(1) for a model whose candidates have no limits. A request of class
        `ticket` that goes straight on to a limited deployment is counted in its class's recent rate: that is
        the class's demand when the pool saturates (else the first batch backlog would be admitted as if the
        other classes wanted nothing)."""
        pool = self._pool(plan)
        queue = self._queues.get(pool)
        if queue is not None and queue.depth:
            return self.enabled_for(plan.model)
        order = plan.order
        if not order:
            return bool(self._capacity_candidates(plan)) and self.enabled_for(plan.model)
        first = order[0]
        if not first.limits.configured and first.name not in self.health.unhealthy:
            return False  # the common case: an unlimited, healthy first choice
        now = self.clock()
        for dep in order:
            if self._wait_at(dep, now, tokens) == 0.0:
                if ticket is not None:
                    if queue is None:
                        queue = self._queues[pool] = PoolQueue(pool, self.settings)
                    queue.classes[ticket.rank].served(ticket.tenant, now, tokens)
                return False
        return self.enabled_for(plan.model)

    async def wait(self, plan: Plan, tokens: int, ticket: QueueTicket, replan: Callable[[str], Plan]) -> Admitted:
        """Wait for capacity (or a saturation tier), or raise the 429 that says why not."""
        settings = self.settings
        now = self.clock()
        if ticket.rank in self._fallback_classes:
            for tier in self._tiers(plan.model):
                try:
                    tier_plan = replan(tier)
                except GatewayError:
                    continue
                for dep in tier_plan.order:
                    if self._wait_at(dep, now, tokens) == 0.0:
                        tier_plan.ctx.note(dep, f"saturation tier of `{plan.model}`")
                        return Admitted(tier_plan)  # the explain note names the tier
        pool = self._pool(plan)
        queue = self._queues.get(pool)
        if queue is None:
            queue = self._queues[pool] = PoolQueue(pool, settings)
        cls = queue.classes[ticket.rank]
        max_length, max_wait_s = self._bounds(plan.model, ticket.max_wait_s)
        if ticket.call_s is not None:
            # The client's own timeout covers the call too: a turn that leaves less than the call takes would
            # be paid for and then time out. Keep the candidates' observed latency back.
            max_wait_s = min(max_wait_s, ticket.call_s - self._call_reserve_s(plan))
            if max_wait_s <= 0.0:
                self._shed(queue, cls, "deadline")
                raise _refusal(
                    f"`{plan.model}` is saturated and this request's timeout leaves no time to wait for it",
                    "queue_deadline",
                    self._drain_s(queue, plan, cls.ahead_of(ticket.tenant, tokens), now),
                )
        if queue.depth >= max_length:
            self._shed(queue, cls, "full")
            raise _refusal(
                f"the queue of `{plan.model}` is full ({max_length} requests waiting)",
                "queue_full",
                self._drain_s(queue, plan, sum(c.tokens for c in queue.classes) + tokens, now),
            )
        if queue.per_tenant.get(ticket.tenant, 0) >= settings.max_per_key:
            self._shed(queue, cls, "key_full")
            raise _refusal(
                f"this key already has {settings.max_per_key} requests waiting for `{plan.model}`",
                "queue_full",
                self._drain_s(queue, plan, cls.ahead_of(ticket.tenant, tokens), now),
            )
        expected = self._expected_wait(queue, cls, plan, ticket.tenant, tokens, now)
        if expected is not None and expected > max_wait_s * SHED_MARGIN:
            self._shed(queue, cls, "deadline")
            raise _refusal(
                f"`{plan.model}` is saturated: the expected wait ({expected:.1f} s) exceeds this request's "
                f"deadline ({max_wait_s:.1f} s)",
                "queue_deadline",
                expected - max_wait_s * SHED_MARGIN,
            )
        waiter = Waiter(queue, cls, ticket.tenant, tokens, plan, now, now + max_wait_s)
        self._enqueue(queue, waiter)
        self._dispatch(queue)
        try:
            grant = await self._await(waiter, ticket, max_wait_s)
        finally:
            self._remove(queue, waiter)  # a no-op once dispatched
        return Admitted(waiter.plan, grant, (self.clock() - now) * 1000)

    async def _await(self, waiter: Waiter, ticket: QueueTicket, max_wait_s: float) -> Grant:
        future = waiter.future
        if future.done():
            return future.result()
        watcher = asyncio.ensure_future(ticket.gone()) if ticket.gone is not None else None
        try:
            waits: set[asyncio.Future[Any]] = {future} if watcher is None else {future, watcher}
            await asyncio.wait(waits, timeout=max(0.0, waiter.deadline - self.clock()), return_when="FIRST_COMPLETED")
        except asyncio.CancelledError:
            self._give_back_if_granted(waiter)
            raise
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if future.done() and not future.cancelled():
            return future.result()
        queue = waiter.queue
        if watcher is not None and watcher.done():
            self._shed(queue, waiter.cls, "left")
            watcher.result()  # the server's own "client gone" error
            raise ClientLeftQueue(f"the client left the queue of `{waiter.plan.model}`")
        self._shed(queue, waiter.cls, "timeout")
        raise _refusal(
            f"waited {max_wait_s * 1000:.0f} ms for capacity at `{waiter.plan.model}` without a turn",
            "queue_timeout",
            self._drain_s(queue, waiter.plan, waiter.cls.tokens, self.clock()),
        )

    def _give_back_if_granted(self, waiter: Waiter) -> None:
        future = waiter.future
        if future.done() and not future.cancelled():
            self.release(future.result())
        elif not future.done():
            future.cancel()

    def release(self, grant: Grant, *, shared: bool = True) -> None:
        """Give back a grant the executor never used (the request ended before its first attempt)."""
        if grant.used or grant.released:
            return
        grant.released = True
        dep = grant.deployment
        if dep.limits.rate_limited:
            self.limits.give_back(dep.name, grant.tokens)
            if shared and self.rates is not None:
                self._spawn(self.rates.give_back(dep.name, dep.limits, grant.tokens))
        self.health.on_cancel(dep.name)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Fire-and-forget shared-bucket bookkeeping (a lost give-back only skews the bucket until it refills)."""

        async def quietly() -> None:
            try:
                await work
            except (StateUnavailable, asyncio.CancelledError):
                pass

        task = asyncio.ensure_future(quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ dispatch

    @property
    def has_waiters(self) -> bool:
        """Whether any request waits in one of these queues (a reload keeps waking them until they drain)."""
        return any(self._waiting_on.values())

    def poke(self, deployment: str) -> None:
        """A request at `deployment` ended: queues waiting on it dispatch at the next tick."""
        queues = self._waiting_on.get(deployment)
        if not queues:
            return
        for queue in queues:
            self._schedule_dispatch(queue)

    def _schedule_dispatch(self, queue: PoolQueue) -> None:
        if not queue.scheduled:
            queue.scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled, queue)

    def _scheduled(self, queue: PoolQueue) -> None:
        queue.scheduled = False
        self._dispatch(queue)

    def _timer_fired(self, queue: PoolQueue) -> None:
        queue.timer = None  # spent: the next `_arm` must set a new one, however close its time
        queue.timer_at = math.inf
        self._dispatch(queue)

    def _dispatch(self, queue: PoolQueue) -> None:
        """Grant capacity to waiters in fair order until the head cannot go; then arm the one timer."""
        now = self.clock()
        strict = self.settings.strict
        while queue.depth:
            # The first class in turn whose head can go now; a head that cannot (it waits on a deployment
            # that is full) does not hold back a class whose head waits on another that has room.
            soonest = math.inf
            chosen: tuple[ClassQueue, Waiter, Deployment] | None = None
            for cls, waiter in queue.in_turn(strict):
                dep, wait = self._capacity(waiter, now)
                if dep is not None:
                    chosen = (cls, waiter, dep)
                    break
                soonest = min(soonest, wait)
            if chosen is None:
                self._arm(queue, now + soonest)
                return
            cls, waiter, dep = chosen
            cls.pop(waiter, now)
            cls.pass_ += waiter.tokens / cls.weight
            self._dequeued(queue, waiter)
            grant = self._take(dep, waiter.tokens, now, cls.rank)
            waiter.future.set_result(grant)
            queue.rate.add(now, waiter.tokens)
            cls.served(waiter.tenant, now, waiter.tokens)
            if self.listener is not None:
                self.listener.on_dispatch(queue.model, cls.name, now - waiter.enqueued)
        self._disarm(queue)

    def _capacity(self, waiter: Waiter, now: float) -> tuple[Deployment | None, float]:
        """The first candidate of the waiter with headroom now, or None and how long until one may have."""
        soonest = math.inf
        for dep in self._candidates(waiter.plan):
            wait = self._wait_at(dep, now, waiter.tokens)
            if wait == 0.0:
                return dep, 0.0
            soonest = min(soonest, wait)
        return None, soonest

    def _wait_at(self, dep: Deployment, now: float, tokens: int) -> float:
        """0.0 when `dep` can take one more request of `tokens` now; else seconds until it may (inf: only
        when a request there ends)."""
        state = self.health.get(dep.name)
        if state.state is not BreakerState.CLOSED and not self.health.available(dep.name, now):
            if state.state is BreakerState.OPEN:
                cooldown = self.health.policy_for(dep.name).cooldown_s
                return max(state.opened_at + cooldown - now, 1e-3)
            return _CIRCUIT_RECHECK_S
        limits = dep.limits
        cap = limits.max_concurrency
        if cap is not None and state.in_flight >= cap:
            return math.inf
        if limits.rate_limited:
            return self.limits.wait_s(dep.name, limits, now, tokens)
        return 0.0

    def _take(self, dep: Deployment, tokens: int, now: float, rank: int = 0) -> Grant:
        self.health.on_start(dep.name, now)
        if dep.limits.rate_limited:
            self.limits.take(dep.name, dep.limits, now, tokens)
        return Grant(dep, tokens, rank)

    def _arm(self, queue: PoolQueue, at: float) -> None:
        if at == math.inf:
            self._disarm(queue)  # woken when a request ends (`poke`), or by a waiter's own deadline
            return
        if queue.timer is not None and abs(queue.timer_at - at) < SHARED_JITTER_S:
            return
        if self.rates is not None:
            # Replicas whose buckets refill at the same instant would race for the shared one in the same
            # order every time (one starving); a little jitter makes each race a coin toss.
            at += self._rng.uniform(0.0, SHARED_JITTER_S)
        self._disarm(queue)
        loop = asyncio.get_running_loop()
        queue.timer_at = at
        queue.timer = loop.call_later(max(0.0, at - self.clock()), self._timer_fired, queue)

    def _disarm(self, queue: PoolQueue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
            queue.timer_at = math.inf

    # ------------------------------------------------------------------ bookkeeping

    def _enqueue(self, queue: PoolQueue, waiter: Waiter) -> None:
        cls = waiter.cls
        if cls.depth == 0:
            # A class that comes back from idle starts at the lowest pass of the backlogged ones: it may not
            # spend credit saved while it had nothing to send.
            active = [c.pass_ for c in queue.classes if c.depth]
            if active:
                cls.pass_ = max(cls.pass_, min(active))
        cls.push(waiter)
        queue.depth += 1
        queue.per_tenant[waiter.tenant] = queue.per_tenant.get(waiter.tenant, 0) + 1
        for dep in self._candidates(waiter.plan):
            if dep.name not in queue.deployments:
                queue.deployments.add(dep.name)
                self._waiting_on.setdefault(dep.name, set()).add(queue)

    def _remove(self, queue: PoolQueue, waiter: Waiter) -> bool:
        if not waiter.cls.remove(waiter):
            return False
        self._dequeued(queue, waiter)
        self._schedule_dispatch(queue)  # the head may have changed
        return True

    def _dequeued(self, queue: PoolQueue, waiter: Waiter) -> None:
        queue.depth -= 1
        left = queue.per_tenant[waiter.tenant] - 1
        if left:
            queue.per_tenant[waiter.tenant] = left
        else:
            del queue.per_tenant[waiter.tenant]
        if queue.depth == 0:
            for name in queue.deployments:
                waiting = self._waiting_on.get(name)
                if waiting is not None:
                    waiting.discard(queue)
                    if not waiting:
                        del self._waiting_on[name]
            queue.deployments.clear()
            self._disarm(queue)

    def _candidates(self, plan: Plan) -> list[Deployment]:
        return plan.order if plan.order else self._capacity_candidates(plan)

    @staticmethod
    def _capacity_candidates(plan: Plan) -> list[Deployment]:
        """A plan left with no candidate only because of capacity (open circuits, limits) still names what it
        waits for; a plan emptied by the request itself (too long, a missing capability) does not."""
        skipped = {s.deployment: s.reason for s in plan.ctx.skipped}
        waiting = [dep for dep in plan.considered if dep.name in skipped]
        if not waiting:
            return []
        if all(_capacity_reason(skipped[dep.name]) for dep in waiting):
            return waiting
        return []

    def _pool(self, plan: Plan) -> str:
        """The queue a plan waits in: one per pool of deployments (models that share a deployment, and the
        deployment's own name, share one queue, so that no name is a way around another's order or bounds)."""
        order = plan.order
        first = order[0] if order else None
        if first is None:
            waiting = self._capacity_candidates(plan)
            first = waiting[0] if waiting else None
        if first is None:
            return plan.model
        return self._pools.get(first.name, first.name)

    def _call_reserve_s(self, plan: Plan) -> float:
        """How long the call itself is expected to take once dispatched: the slowest observed latency of the
        candidates (EWMA of the whole call), with a quarter more for its spread; 0 before any was observed."""
        slowest = 0.0
        for dep in self._candidates(plan):
            latency = self.health.get(dep.name).ewma_total_ms
            if latency is not None:
                slowest = max(slowest, latency)
        return slowest * 1.25 / 1000.0

    def _tiers(self, model: str) -> tuple[str, ...]:
        group = self.table.groups.get(model)
        return group.saturation_tiers if group is not None else ()

    def _bounds(self, model: str, ticket_wait_s: float) -> tuple[int, float]:
        settings = self.settings
        group = self.table.groups.get(model)
        own = group.group.queue if group is not None else None
        max_length = own.max_length if own is not None and own.max_length is not None else settings.max_length
        model_wait_ms = own.max_wait_ms if own is not None and own.max_wait_ms is not None else settings.max_wait_ms
        return max_length, min(ticket_wait_s, model_wait_ms / 1000.0)

    def _expected_wait(
        self, queue: PoolQueue, cls: ClassQueue, plan: Plan, tenant: str, tokens: int, now: float
    ) -> float | None:
        """Seconds until a new request would be dispatched: its key's tokens waiting in its class (its own
        included) over the key's part of the rate the class can expect now (`PoolQueue.class_rate`), shared
        equally by the keys active in the class (fair queuing by key: another key that keeps sending takes its
        turns while this one waits, however short its backlog is now). None while the capacity is not known
        (no shedding then: the deadline still holds)."""
        total = self._service_rate(queue, plan, tokens, now)
        if total is None:
            return None
        rate = cls.key_share(tenant, queue.class_rate(cls, total, now, strict=self.settings.strict), now)
        if rate <= 0.0:
            return math.inf
        return (cls.own_tokens(tenant) + tokens) / rate

    def _service_rate(self, queue: PoolQueue, plan: Plan, tokens: int, now: float) -> float | None:
        """Tokens per second the queue can expect to dispatch: its candidates' capacity when this process
        owns their buckets, else the rate it has been dispatching at lately; None when neither is known."""
        if self.rates is None:
            capacity = self._capacity_rate(plan, tokens)
            if capacity is not None:
                return capacity
        rate = queue.rate
        if rate.first >= 0 and now - rate.first >= 1.0 and now - rate.last <= RATE_HORIZON_S:
            return rate.per_s(now) or None
        return None

    def _capacity_rate(self, plan: Plan, tokens: int) -> float | None:
        """Tokens per second the candidates can take for requests like this one: what their RPM/TPM allow, and
        for a concurrency cap, the cap over the observed latency. None when a candidate's is not known (no
        limit, or a cap with no latency observed yet)."""
        total = 0.0
        for dep in self._candidates(plan):
            limits = dep.limits
            rate = math.inf
            if limits.rpm is not None:
                rate = limits.rpm / 60.0 * tokens
            if limits.tpm is not None:
                rate = min(rate, limits.tpm / 60.0)
            if limits.max_concurrency is not None:
                latency_ms = self.health.get(dep.name).ewma_total_ms
                if latency_ms:
                    rate = min(rate, limits.max_concurrency / (latency_ms / 1000.0) * tokens)
                elif rate == math.inf:
                    return None
            if rate == math.inf:
                return None
            total += rate
        return total or None

    def _drain_s(self, queue: PoolQueue, plan: Plan, tokens: int, now: float) -> float:
        """Seconds until `tokens` of the backlog have been dispatched (the `Retry-After` of a refusal)."""
        rate = self._service_rate(queue, plan, max(1, tokens // max(1, queue.depth or 1)), now)
        return tokens / rate if rate else 1.0

    def _shed(self, queue: PoolQueue, cls: ClassQueue, reason: str) -> None:
        if self.listener is not None:
            self.listener.on_shed(queue.model, cls.name, reason)

    # ------------------------------------------------------------------ observation

    def snapshot(self) -> dict[str, Any]:
        """Queue state for `GET /admin/queues`: per model and class, depth, queued tokens, service rate."""
        now = self.clock()
        models: dict[str, Any] = {}
        served: dict[str, list[str]] = {}  # pool name -> the models whose requests wait in it
        for name, group in self.table.groups.items():
            if group.candidates:
                served.setdefault(self._pools.get(group.candidates[0].name, name), []).append(name)
        for model, queue in list(self._queues.items()):
            models[model] = {
                "depth": queue.depth,
                "keys": len(queue.per_tenant),
                "tokens_per_s": round(queue.rate.per_s(now), 3),
                "next_wake_in_s": None if queue.timer is None else round(max(0.0, queue.timer_at - now), 3),
                "serves": served.get(model, [model]),
                "waiting_on": sorted(queue.deployments),
                "classes": {
                    cls.name: {
                        "depth": cls.depth,
                        "tokens": cls.tokens,
                        "keys": sum(1 for f in cls.flows.values() if f.waiters),
                        "weight": cls.weight,
                        "tokens_per_s": round(cls.rate.per_s(now), 3),
                        "oldest_wait_s": round(oldest_wait(cls, now), 3),
                    }
                    for cls in queue.classes
                },
            }
        shared = None
        if self.rates is not None:
            shared = "unavailable: local buckets" if getattr(self.rates, "degraded", False) else "ok"
        return {
            "enabled": self.settings.enabled,
            "strict": self.settings.strict,
            "shared_buckets": shared,
            "models": models,
        }

    def depths(self) -> list[tuple[str, str, int]]:
        """(model, class, depth) for every queue: the metrics gauge."""
        # A copy first: the metrics scrape may run on a worker thread while the loop adds a model's queue.
        return [(q.model, c.name, c.depth) for q in list(self._queues.values()) for c in q.classes]


def deployment_pools(table: RoutingTable) -> dict[str, str]:
    """Each deployment's pool: deployments connected by a model (its candidates and rule targets) are one
    pool, named after the first model (in config order) over it."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    names: dict[str, str] = {}
    for model, group in table.groups.items():
        members = [dep.name for dep in group.candidates]
        for rule in group.rules:
            members.extend(rule.use)
        if not members:
            continue
        root = find(members[0])
        for other in members[1:]:
            parent[find(other)] = root
        names.setdefault(find(root), model)
    pools: dict[str, str] = {}
    for name in list(parent):
        root = find(name)
        pools[name] = next((n for r, n in names.items() if find(r) == root), name)  # the first model in order
    return pools


def _capacity_reason(reason: str) -> bool:
    return reason.startswith(("circuit", "rpm limit", "tpm limit", "max_concurrency"))


def _refusal(message: str, code: str, retry_after_s: float) -> GatewayError:
    seconds = max(1, min(3600, math.ceil(retry_after_s))) if math.isfinite(retry_after_s) else 60
    return GatewayError(
        429,
        f"{message}; retry after {seconds} s",
        type="rate_limit_error",
        code=code,
        headers={"Retry-After": str(seconds)},
    )
