"""Prices and the cost of one answer, from actual usage.

Every kind of token is priced on its own: uncached input, cached input (read), cache writes, output and
reasoning (which providers bill as output unless a price says otherwise). A failed attempt that produced
no tokens costs nothing.
"""

from __future__ import annotations

from modelyard.config.model import Price
from modelyard.schema.chat import Usage

PER_TOKEN = 1e-6  # prices are per 1M tokens


def cost_usd(usage: Usage, price: Price | None) -> float:
    """The cost of `usage` at `price`; 0 when the price is unknown (reported as such elsewhere)."""
    if price is None:
        return 0.0
    cached = min(usage.cached, usage.prompt)
    cache_write = min(usage.cache_write, usage.prompt - cached)
    uncached = usage.prompt - cached - cache_write
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input if price.cache_write is None else price.cache_write
    reasoning = min(usage.reasoning, usage.completion)
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    visible_output = usage.completion - reasoning
    total = (
        uncached * price.input
        + cached * cached_price
        + cache_write * write_price
        + visible_output * price.output
        + reasoning * reasoning_price
    )
    cost = total * PER_TOKEN
    if usage.web_searches and price.web_search:  # server tools the provider bills per use
        cost += usage.web_searches * price.web_search / 1000.0
    if usage.audio_seconds or usage.characters or usage.images or usage.search_units:
        cost += units_cost_usd(usage, price)
    return cost


def units_cost_usd(usage: Usage, price: Price) -> float:
    """The cost of the non-chat endpoints' units (audio minutes, characters, images, search units); a unit
    without a price costs nothing, as an unpriced token does."""
    return (
        usage.audio_seconds / 60.0 * (price.audio_minute or 0.0)
        + usage.characters * (price.characters or 0.0) * PER_TOKEN
        + usage.images * (price.image or 0.0)
        + usage.search_units * (price.search_unit or 0.0) / 1000.0
    )


def estimate_cost_usd(prompt_tokens: int, output_tokens: int, price: Price | None) -> float:
    """Pre-call estimate: all input uncached, the output at its cap."""
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + output_tokens * price.output) * PER_TOKEN
