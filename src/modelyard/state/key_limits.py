"""Sane bounds on a virtual key's limits, shared by the admin API (refuse before writing) and the key loader
(skip a bad row already in the store instead of refusing to start).

The bounds are far above any real use and far below what breaks arithmetic: nano-dollar budgets stay inside
a 64-bit integer, periods and expiry dates inside what a datetime can show.
"""

from __future__ import annotations

import math

from modelyard.state.keys import KeyRecord

MAX_RATE = 10**12  # rpm / tpm: above any real limit (keys made with 1e11 exist), far below 2**53
MAX_BUDGET_USD = 1e9
MIN_PERIOD_S = 1.0
MAX_PERIOD_S = 100 * 366 * 86400.0  # also the longest `expires_in` and `since`
MAX_TIMESTAMP = 32503680000.0  # year 3000: the latest `expires_at`


def rate_problem(value: int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATE:
        return f"must be an integer from 1 to {MAX_RATE}"
    return None


def budget_problem(value: float | None) -> str | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_BUDGET_USD
    ):
        return f"must be a number from 0 to {MAX_BUDGET_USD:.0f}"
    return None


def period_problem(value: float | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or not math.isfinite(value) or not MIN_PERIOD_S <= value <= MAX_PERIOD_S:
        return f"must be between {MIN_PERIOD_S:g}s and {MAX_PERIOD_S / 86400:.0f}d"
    return None


def timestamp_problem(value: float | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
        return "must be a unix time before the year 3000"
    return None


def limits_problem(record: KeyRecord) -> str | None:
    """Why a stored key's limits cannot be used (None when they can)."""
    checks = (
        ("rpm", rate_problem(record.rpm)),
        ("tpm", rate_problem(record.tpm)),
        ("budget_usd", budget_problem(record.budget_usd)),
        ("period_s", period_problem(record.period_s)),
        ("created_at", timestamp_problem(record.created_at)),
        ("expires_at", timestamp_problem(record.expires_at)),
    )
    for name, problem in checks:
        if problem is not None:
            return f"{name} {problem}"
    return None
