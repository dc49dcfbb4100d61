"""Budget arithmetic: durations, periods anchored at creation, the exact ledger."""

from __future__ import annotations

import pytest

from modelyard.accounting.budgets import (
    NANO,
    BudgetLedger,
    nano_to_usd,
    parse_duration,
    period_bounds,
    period_index,
    usd_to_nano,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400.0),
        ("12h", 43200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("2w", 1209600.0),
        ("10", 10.0),
        ("1.5h", 5400.0),
        (3600, 3600.0),
        (" 7D ", 7 * 86400.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "3 months", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_periods_are_anchored_at_creation() -> None:
    anchor, period = 1000.0, 100.0
    assert period_index(anchor, period, 1000.0) == 0
    assert period_index(anchor, period, 1099.9) == 0
    assert period_index(anchor, period, 1100.0) == 1
    assert period_index(anchor, period, 500.0) == 0  # clock behind the creation time: still the first
    assert period_bounds(anchor, period, 3) == (1300.0, 1400.0)


def test_money_is_counted_in_integer_nanodollars() -> None:
    assert usd_to_nano(50.0) == 50 * NANO
    assert usd_to_nano(0.000_000_001) == 1
    total = sum(usd_to_nano(0.1) for _ in range(10))
    assert total == usd_to_nano(1.0)  # 10 x 0.1 is exactly 1 here, unlike float addition
    assert nano_to_usd(1_500_000_000) == 1.5


def test_ledger_reserve_settle() -> None:
    ledger = BudgetLedger()
    assert ledger.can_reserve("k", 0, 600, 1000)
    ledger.reserve("k", 0, 600)
    assert not ledger.can_reserve("k", 0, 600, 1000)
    assert ledger.can_reserve("k", 0, 400, 1000)
    ledger.settle("k", 0, 600, 250)
    assert ledger.state("k", 0) == (250, 0)
    assert ledger.can_reserve("k", 0, 750, 1000)
    assert not ledger.can_reserve("k", 0, 751, 1000)


def test_ledger_zero_estimates_still_stop_at_the_limit() -> None:
    ledger = BudgetLedger()
    ledger.seed("k", 0, 1000)
    assert not ledger.can_reserve("k", 0, 0, 1000)
    assert ledger.can_reserve("k", 0, 0, 1001)


def test_ledger_forgets_finished_periods() -> None:
    ledger = BudgetLedger()
    ledger.seed("k", 0, 10)
    ledger.reserve("k", 1, 5)
    ledger.seed("k", 2, 0)
    ledger.forget_before("k", 2)
    assert not ledger.seeded("k", 0)
    assert ledger.seeded("k", 1)  # still holds a reservation
