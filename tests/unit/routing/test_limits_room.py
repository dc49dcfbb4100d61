"""`DeploymentLimits.room`: the headroom the dashboard shows is what the buckets could take now, read without
taking anything."""

from __future__ import annotations

import pytest

from modelyard.config.model import Limits
from modelyard.routing.limits import DeploymentLimits


def test_room_is_the_capacity_less_what_was_taken_and_refills() -> None:
    limits = Limits(rpm=60, tpm=6000)
    buckets = DeploymentLimits()
    assert buckets.room("a", limits, 100.0) == (60.0, 6000.0, 60.0, 6000.0)  # never used: full
    for _ in range(3):
        buckets.take("a", limits, 100.0, 100)
    rpm_left, tpm_left, rpm_cap, tpm_cap = buckets.room("a", limits, 100.0)
    assert (rpm_left, tpm_left, rpm_cap, tpm_cap) == pytest.approx((57.0, 5700.0, 60.0, 6000.0))
    assert buckets.room("a", limits, 102.0)[0] == pytest.approx(59.0)  # 1 request/s refilled
    assert buckets.room("a", limits, 102.0) == buckets.room("a", limits, 102.0)  # a read takes nothing


def test_room_follows_the_burst_and_has_none_without_a_limit() -> None:
    paced = Limits(rpm=600, burst_s=1)
    assert DeploymentLimits().room("a", paced, 0.0) == (10.0, None, 10.0, None)
    assert DeploymentLimits().room("a", Limits(max_concurrency=3), 0.0) == (None, None, None, None)
    tiny = Limits(rpm=1, burst_s=1)  # the depth is at least one request
    assert DeploymentLimits().room("a", tiny, 0.0)[2] == pytest.approx(1.0)
