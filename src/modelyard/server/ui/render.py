"""HTML out: the dashboard's Jinja environment (autoescaped everywhere) and the filters pages share."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import jinja2


def money(value: Any) -> str:
    """USD with as many decimals as a small amount needs ($0.000123, $12.35)."""
    try:
        usd = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(usd):
        return "-"
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    digits = max(2, 2 - math.floor(math.log10(abs(usd))))  # three significant digits
    return f"${usd:.{min(digits, 10)}f}"


def milliseconds(value: Any) -> str:
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(ms):
        return "-"
    return f"{ms / 1000:.2f} s" if ms >= 10_000 else f"{ms:,.0f} ms"


def timestamp(value: Any) -> str:
    """Unix seconds as UTC date and time (the dashboard speaks UTC, like the spend log)."""
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def percent(value: Any) -> str:
    try:
        share = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{100 * share:.1f}%" if math.isfinite(share) else "-"


def number(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError, OverflowError):
        return "-"


def environment() -> jinja2.Environment:
    """One per process: templates from the package (shipped in the wheel), autoescaped, undefined names
    an error rather than an empty string."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("modelyard.server.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, ms=milliseconds, ts=timestamp, pct=percent, num=number)
    return env
