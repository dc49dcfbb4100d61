"""Cost of every usage kind at the default table's prices, against figures computed by hand."""

from __future__ import annotations

import pytest

from modelyard.accounting.budgets import estimate_nano, nano_to_usd
from modelyard.accounting.price_table import PriceTable
from modelyard.accounting.prices import cost_usd
from modelyard.schema.chat import Usage

TABLE = PriceTable.load()


@pytest.mark.parametrize(
    ("model", "usage", "by_hand"),
    [
        # 600 uncached x 2.50 + 400 cached x 1.25 + 500 output x 10.00
        ("openai/gpt-4o", Usage(prompt=1000, cached=400, completion=500), 600 * 2.5 + 400 * 1.25 + 500 * 10.0),
        # reasoning tokens are part of completion_tokens and billed as output: 1000 x 4.40 + 200 x 1.10
        ("openai/o3-mini", Usage(prompt=200, completion=1000, reasoning=800), 1000 * 4.4 + 200 * 1.1),
        # Anthropic: 2000 uncached x 3 + 6000 cache reads x 0.30 + 2000 cache writes x 3.75 + 300 x 15
        (
            "anthropic/claude-sonnet-4",
            Usage(prompt=10_000, cached=6000, cache_write=2000, completion=300),
            2000 * 3.0 + 6000 * 0.3 + 2000 * 3.75 + 300 * 15.0,
        ),
        # Opus cache writes at 18.75 and reads at 1.50
        ("anthropic/claude-opus-4-1", Usage(prompt=1000, cache_write=1000, completion=10), 1000 * 18.75 + 10 * 75.0),
        # Gemini: thinking tokens inside the output count; 4000 x 0.30 + 1000 x 0.03 + 2000 x 2.50
        (
            "google/gemini-2.5-flash",
            Usage(prompt=5000, cached=1000, completion=2000, reasoning=1500),
            4000 * 0.3 + 1000 * 0.03 + 2000 * 2.5,
        ),
        # DeepSeek cache hits: 100 x 0.28 + 900 x 0.028 + 100 x 0.42
        (
            "deepseek/deepseek-chat",
            Usage(prompt=1000, cached=900, completion=100),
            100 * 0.28 + 900 * 0.028 + 100 * 0.42,
        ),
        # Mistral has no cached price: cached tokens are billed as input
        ("mistral/mistral-small", Usage(prompt=1000, cached=500, completion=1000), 1000 * 0.1 + 1000 * 0.3),
        # an embedding: input only
        ("openai/text-embedding-3-small", Usage(prompt=1_000_000), 1_000_000 * 0.02),
    ],
)
def test_cost_of_each_usage_kind(model: str, usage: Usage, by_hand: float) -> None:
    assert cost_usd(usage, TABLE.prices[model]) == pytest.approx(by_hand / 1e6, rel=1e-12)


def test_unknown_price_costs_nothing_rather_than_guessing() -> None:
    assert cost_usd(Usage(prompt=100, completion=100), None) == 0.0


def test_estimate_is_prompt_uncached_and_output_at_its_cap() -> None:
    price = TABLE.prices["openai/gpt-4o"]
    assert nano_to_usd(estimate_nano(1000, 256, price)) == pytest.approx((1000 * 2.5 + 256 * 10.0) / 1e6)
    assert estimate_nano(1000, 256, None) == 0
    # the estimate bounds the actual cost when the answer stays under its cap
    actual = cost_usd(Usage(prompt=1000, cached=500, completion=200), price)
    assert actual <= nano_to_usd(estimate_nano(1000, 256, price))
