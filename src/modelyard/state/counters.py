"""Live counters per key: RPM/TPM windows and budget reservations, checked and reserved in one step.

`admit` either takes everything a request needs (one request in the RPM window, its estimated tokens in
the TPM window, its estimated cost from the budget) or takes nothing and says why. Doing the three as one
atomic step matters: a request refused for its budget must not eat RPM, and two requests racing for the
last dollar must not both win. In memory that step is a synchronous function on the event loop; in
Redis it is one Lua script, so the bound holds across replicas.

A budget is *seeded* (started from the spend log) before its first reservation, and again whenever its
counters are found missing (Redis restarted empty): an `Ask` with `seed_required` gets the verdict
"unseeded" instead of a budget that silently starts from zero, and the caller seeds and asks again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from modelyard.accounting.budgets import BudgetLedger, Reservation
from modelyard.state.windows import SlidingWindow


@dataclass(slots=True)
class Ask:
    """What one request needs from its key's counters. None = that limit does not apply."""

    account: str
    rpm: int | None
    tpm: int | None
    tokens: int
    budget_nano: int | None
    period: int
    estimate_nano: int
    #: Seconds the budget's counters must live (until the period ends, plus slack); Redis only.
    ttl_s: int = 86400
    #: Refuse with "unseeded" (instead of starting at zero) when the budget has no counters yet.
    seed_required: bool = False


@dataclass(slots=True)
class Verdict:
    ok: bool
    reason: str = ""  # "rpm" | "tpm" | "budget" | "unseeded"
    retry_after: float = 0.0
    reservation: Reservation | None = None


#: What a budget starts from: nano-dollars, or a coroutine function computing them (called after the counters
#: have noted the reservations they hold, so nothing settling meanwhile is missed).
SpentSource = int | Callable[[], Awaitable[int]]

#: Bounds on what is sent to a counter: above every limit the gateway accepts (rpm/tpm, budgets <= 1e9 USD)
#: and inside Redis's 64-bit integers, so a hostile `max_tokens` cannot overflow a counter.
MAX_TOKENS = 2**53
MAX_NANO = 2**62


def clamp(value: int, bound: int) -> int:
    """`value` limited to [-bound, bound]."""
    return max(-bound, min(bound, value))


async def spent_value(spent: SpentSource) -> int:
    return spent if isinstance(spent, int) else await spent()


class Counters(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(self, ask: Ask) -> Verdict: ...

    def settle(self, reservation: Reservation, actual_nano: int, actual_tokens: int) -> None:
        """Swap the estimate for the actual cost and tokens; must not block (Redis does it in a task)."""
        ...

    async def seed_budget(self, account: str, period: int, spent_nano: SpentSource, ttl_s: int) -> None:
        """Start a budget period from the spend log's total, unless it has already started (atomically, across
        replicas: only if absent)."""
        ...

    async def reseed_budget(
        self, account: str, period: int, spent_nano: SpentSource, ttl_s: int, *, replace: bool
    ) -> None:
        """Restart a budget period after its key's budget or period was edited, at once and for every replica
        sharing the counters: `replace` sets its spend to `spent_nano` (the period's bounds changed, so what
        the counters hold may belong to another window); otherwise the higher of the two is kept (same
        window: nothing spent is lost, a budget that was off meanwhile catches up with the spend log)."""
        ...

    async def budget_state(self, account: str, period: int) -> tuple[int, int]:
        """(spent, reserved) nano-dollars."""
        ...

    async def budget_started(self, account: str, period: int) -> bool:
        """Whether the period's budget counters exist (seeded, or reserved in)."""
        ...

    @property
    def degraded(self) -> bool:
        """True while the shared counters are unreachable (answering from the outage policy)."""
        ...


class _KeyWindows:
    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests = SlidingWindow()
        self.tokens = SlidingWindow()


class MemoryCounters:
    """Counters of one process. Exact because `admit` never awaits between the check and the write."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._now = clock
        self._windows: dict[str, _KeyWindows] = {}
        self.ledger = BudgetLedger()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, ask: Ask) -> Verdict:
        return self.admit_now(ask, self._now())

    def admit_now(self, ask: Ask, now: float) -> Verdict:
        """The synchronous core of `admit` (tests drive the clock through `now`)."""
        second = int(now)
        windows = self._windows.get(ask.account)
        if windows is None:
            windows = self._windows[ask.account] = _KeyWindows()
        if ask.rpm is not None:
            used = windows.requests.value(second)
            if used + 1 > ask.rpm:
                return Verdict(False, "rpm", windows.requests.wait_s(now, used + 1 - ask.rpm))
        if ask.tpm is not None:
            used = windows.tokens.value(second)
            if used > 0 and used + ask.tokens > ask.tpm:
                return Verdict(False, "tpm", windows.tokens.wait_s(now, used + ask.tokens - ask.tpm))
        ledger = self.ledger
        period = -1
        if ask.budget_nano is not None:
            period = ask.period
            if ask.seed_required and not ledger.seeded(ask.account, period):
                return Verdict(False, "unseeded")
            if not ledger.can_reserve(ask.account, period, ask.estimate_nano, ask.budget_nano):
                return Verdict(False, "budget")
            ledger.reserve(ask.account, period, ask.estimate_nano)
        if ask.rpm is not None:
            windows.requests.add(second, 1)
        if ask.tpm is not None:
            windows.tokens.add(second, ask.tokens)
        reservation = Reservation(
            ask.account,
            period,
            ask.estimate_nano if period >= 0 else 0,
            ask.tokens if ask.tpm is not None else 0,
            second,
        )
        return Verdict(True, reservation=reservation)

    def settle(self, reservation: Reservation, actual_nano: int, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.period >= 0:
            self.ledger.settle(reservation.account, reservation.period, reservation.estimate_nano, actual_nano)
        if reservation.tokens:
            windows = self._windows.get(reservation.account)
            if windows is not None:
                windows.tokens.correct(reservation.second, actual_tokens - reservation.tokens)

    async def seed_budget(self, account: str, period: int, spent_nano: SpentSource, ttl_s: int) -> None:
        if self.ledger.seeded(account, period):
            return
        value = await spent_value(spent_nano)
        self.ledger.seed(account, period, value)  # ignored if a concurrent seed got there first
        self.ledger.forget_before(account, period)

    async def reseed_budget(
        self, account: str, period: int, spent_nano: SpentSource, ttl_s: int, *, replace: bool
    ) -> None:
        value = await spent_value(spent_nano)
        ledger = self.ledger
        if not ledger.seeded(account, period):
            ledger.seed(account, period, value)
            return
        balance = ledger.balances[(account, period)]  # its reservations in flight stay (they settle into it)
        balance.spent = value if replace else max(balance.spent, value)

    async def budget_state(self, account: str, period: int) -> tuple[int, int]:
        return self.ledger.state(account, period)

    async def budget_started(self, account: str, period: int) -> bool:
        return self.ledger.seeded(account, period)

    @property
    def degraded(self) -> bool:
        return False
