"""Budgets: reserve the pre-call estimate, settle the actual cost, never let concurrency overspend.

Money is counted in integer nano-dollars (1e-9 USD), never floats, so the memory and Redis ledgers give
the same answer to the last unit and a thousand settlements add up exactly. A request may start only if
`spent + reserved + its estimate <= limit`; the check and the reservation are one atomic step (one
synchronous call on the event loop here, one Lua script in Redis), so N concurrent requests against a
budget that covers k of them let exactly k through. Settling swaps the estimate for the actual cost.

Budgets run in fixed periods anchored at the key's creation time: a "30d" budget created on the 3rd
renews on the 3rd of the next period, whatever the calendar says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modelyard.config.model import Price

NANO = 1_000_000_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def usd_to_nano(usd: float) -> int:
    return round(usd * NANO)


def nano_to_usd(nano: int) -> float:
    return nano / NANO


def parse_duration(text: str | float | int) -> float:
    """Seconds in "30d", "12h", "90m", "45s", "2w" or a plain number of seconds."""
    if isinstance(text, int | float):
        try:
            seconds = float(text)
        except OverflowError:  # an integer beyond a float's range (JSON has no bound on digits)
            raise ValueError(f"a duration of {len(str(text))} digits is out of range") from None
    else:
        match = _DURATION.match(text.lower())
        if match is None:
            raise ValueError(f"invalid duration {text!r} (write e.g. 30d, 12h, 90m, 45s, 2w)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def period_index(anchor: float, period_s: float, now: float) -> int:
    """Which budget period `now` falls in (0 = the one starting at `anchor`)."""
    return max(0, int((now - anchor) // period_s))


def period_bounds(anchor: float, period_s: float, index: int) -> tuple[float, float]:
    start = anchor + index * period_s
    return start, start + period_s


def estimate_nano(prompt_tokens: int, output_tokens: int, price: Price | None) -> int:
    """Pre-call cost estimate: the whole prompt uncached, the output at its cap (an upper bound)."""
    if price is None:
        return 0
    return round((prompt_tokens * price.input + output_tokens * price.output) * 1000)  # per 1M → nano


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds until it settles (budget and TPM estimate)."""

    account: str  # key id
    period: int  # budget period index (-1 when the key has no budget)
    estimate_nano: int
    tokens: int  # TPM estimate recorded in the window
    second: int  # window second the tokens were recorded in (for the correction)
    settled: bool = False


@dataclass(slots=True)
class _Balance:
    spent: int = 0
    reserved: int = 0


@dataclass(slots=True)
class BudgetLedger:
    """In-process budget arithmetic per (account, period); exact because it never awaits."""

    balances: dict[tuple[str, int], _Balance] = field(default_factory=dict)

    def seed(self, account: str, period: int, spent_nano: int) -> None:
        """Start a period from what the spend log says was already spent (once; later calls are ignored)."""
        key = (account, period)
        if key not in self.balances:
            self.balances[key] = _Balance(spent=spent_nano)

    def seeded(self, account: str, period: int) -> bool:
        return (account, period) in self.balances

    def can_reserve(self, account: str, period: int, estimate: int, limit: int) -> bool:
        balance = self.balances.get((account, period))
        used = 0 if balance is None else balance.spent + balance.reserved
        return used + max(estimate, 1) <= limit

    def reserve(self, account: str, period: int, estimate: int) -> None:
        balance = self.balances.get((account, period))
        if balance is None:
            balance = self.balances[(account, period)] = _Balance()
        balance.reserved += estimate

    def settle(self, account: str, period: int, estimate: int, actual: int) -> None:
        balance = self.balances.get((account, period))
        if balance is None:
            balance = self.balances[(account, period)] = _Balance()
        balance.reserved = max(0, balance.reserved - estimate)
        balance.spent += actual

    def state(self, account: str, period: int) -> tuple[int, int]:
        """(spent, reserved) in nano-dollars."""
        balance = self.balances.get((account, period))
        return (0, 0) if balance is None else (balance.spent, balance.reserved)

    def forget_before(self, account: str, period: int) -> None:
        """Drop finished periods of `account` that hold no reservation (keeps the ledger small)."""
        stale = [k for k, b in self.balances.items() if k[0] == account and k[1] < period and not b.reserved]
        for key in stale:
            del self.balances[key]
