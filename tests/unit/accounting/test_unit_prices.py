"""The non-chat endpoints' units are priced (audio minutes, characters, images, search units), unpriced units
cost nothing, and a budget reservation takes the dearest reachable deployment's price for the units."""

from __future__ import annotations

import pytest

from modelyard.accounting.prices import cost_usd, units_cost_usd
from modelyard.config.model import Price
from modelyard.routing.reach import dearest_units_nano
from modelyard.schema.chat import Usage

WHISPER = Price(audio_minute=0.006)
TTS = Price(characters=15.0)
IMAGE = Price(image=0.04)
RERANK = Price(search_unit=2.0)


@pytest.mark.parametrize(
    ("usage", "price", "expected"),
    [
        (Usage(audio_seconds=90.0), WHISPER, 0.009),
        (Usage(characters=2_000), TTS, 0.03),
        (Usage(images=3), IMAGE, 0.12),
        (Usage(search_units=5), RERANK, 0.01),
        (Usage(images=3), WHISPER, 0.0),  # a unit without a price costs nothing
        (Usage(prompt=1_000, completion=500, images=1), Price(input=1.0, output=2.0, image=0.04), 0.002 + 0.04),
    ],
)
def test_units_are_priced(usage: Usage, price: Price, expected: float) -> None:
    assert cost_usd(usage, price) == pytest.approx(expected)


def test_units_cost_is_the_sum_of_each_kind() -> None:
    everything = Price(audio_minute=0.006, characters=15.0, image=0.04, search_unit=2.0)
    usage = Usage(audio_seconds=60.0, characters=1_000_000, images=1, search_units=1_000)
    assert units_cost_usd(usage, everything) == pytest.approx(0.006 + 15.0 + 0.04 + 2.0)


def test_the_reservation_takes_the_dearest_reachable_price() -> None:
    prices = {"cheap": Price(image=0.01), "dear": Price(image=0.08), "free": None}
    assert dearest_units_nano(prices, ["cheap", "dear", "free"], Usage(images=2)) == pytest.approx(0.16e9)
    assert dearest_units_nano(prices, ["cheap"], Usage(images=2)) == pytest.approx(0.02e9)
    assert dearest_units_nano(prices, ["free"], Usage(images=2)) == 0.0
