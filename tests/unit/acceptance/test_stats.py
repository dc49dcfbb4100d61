"""Wilson 95% interval and the median."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelyard.acceptance.stats import median, wilson_interval


def test_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 → 0.2553-0.3662; 0/10 → 0-0.2775.
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(10, 10)
    assert round(low, 4) == 0.7225 and high == 1.0


def test_no_samples_is_the_whole_range_and_bad_counts_raise() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@given(st.integers(1, 5000), st.data())
def test_interval_holds_the_rate_inside_zero_one(total: int, data: st.DataObject) -> None:
    passed = data.draw(st.integers(0, total))
    low, high = wilson_interval(passed, total)
    assert 0.0 <= low <= passed / total <= high <= 1.0


@given(st.integers(1, 200))
def test_more_samples_narrow_the_interval(n: int) -> None:
    small = wilson_interval(n, 2 * n)
    large = wilson_interval(4 * n, 8 * n)
    assert large[1] - large[0] < small[1] - small[0]


def test_median() -> None:
    assert median([]) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert not math.isnan(median([1.0]) or math.nan)
