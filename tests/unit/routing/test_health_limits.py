"""Circuit breakers, latency EWMA/p95 and RPM/TPM windows."""

from __future__ import annotations

import pytest

from modelyard.config.model import Limits
from modelyard.routing.health import BreakerPolicy, BreakerState, HealthTracker
from modelyard.routing.limits import DeploymentLimits
from modelyard.schema.errors import ErrorKind
from modelyard.state.windows import SlidingWindow


def test_breaker_opens_after_n_failures_in_window_then_half_open_probe_closes_it():
    transitions = []
    health = HealthTracker(BreakerPolicy(failures=3, window_s=10, cooldown_s=5))
    health.listeners.append(lambda name, old, new: transitions.append((old.value, new.value)))
    for t in (0.0, 1.0, 2.0):
        health.on_start("a", t)
        health.on_failure("a", t, ErrorKind.SERVER)
    assert health.get("a").state is BreakerState.OPEN
    assert not health.available("a", 4.0)
    assert health.available("a", 7.5)  # cooldown over: one probe may go
    health.on_start("a", 7.5)
    assert health.get("a").state is BreakerState.HALF_OPEN
    assert not health.available("a", 7.6)  # only one probe at a time
    health.on_success("a", 8.0, 100)
    assert health.get("a").state is BreakerState.CLOSED
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probe_reopens_and_old_failures_leave_the_window():
    health = HealthTracker(BreakerPolicy(failures=2, window_s=10, cooldown_s=5))
    health.on_start("a", 0)
    health.on_failure("a", 0, ErrorKind.TIMEOUT)
    health.on_start("a", 20)
    health.on_failure("a", 20, ErrorKind.TIMEOUT)  # the first one left the 10 s window
    assert health.get("a").state is BreakerState.CLOSED
    health.on_start("a", 21)
    health.on_failure("a", 21, ErrorKind.TIMEOUT)
    assert health.get("a").state is BreakerState.OPEN
    health.on_start("a", 27)
    health.on_failure("a", 27.5, ErrorKind.CONNECTION)
    assert health.get("a").state is BreakerState.OPEN and health.get("a").opened_at == 27.5


def test_client_errors_do_not_trip_the_breaker():
    health = HealthTracker(BreakerPolicy(failures=1))
    health.on_start("a", 0)
    health.on_failure("a", 0, ErrorKind.BAD_REQUEST)
    assert health.get("a").state is BreakerState.CLOSED


def test_error_rate_rule():
    health = HealthTracker(BreakerPolicy(failures=1000, error_rate=0.5, min_requests=10, window_s=60))
    for i in range(10):
        health.on_start("a", i)
        if i % 2:
            health.on_failure("a", i, ErrorKind.SERVER)
        else:
            health.on_success("a", i, 10)
    assert health.get("a").state is BreakerState.OPEN


def test_latency_ewma_p95_and_in_flight():
    health = HealthTracker(alpha=0.5)
    for ms in (100, 200):
        health.on_start("a", 0)
        health.on_success("a", 0, ms, ttft_ms=ms / 10)
    h = health.get("a")
    assert h.ewma_total_ms == 150 and h.ewma_ttft_ms == 15 and h.in_flight == 0
    for ms in range(1, 111):  # 112 samples in all: the p95 is refreshed every 16th, so it is current now
        h.add_latency(ms)
    assert 103 <= (h.p95_ms or 0) <= 107
    h.add_latency(10_000)  # one outlier is not seen until the next refresh...
    assert (h.p95_ms or 0) < 200
    for _ in range(15):
        h.add_latency(10_000)
    assert h.p95_ms == 10_000  # ...16 of them (over 12% of the window) are


def test_minute_window_slides_and_corrects():
    window = SlidingWindow()
    window.add(0.5, 10)
    window.add(30.2, 5)
    assert window.value(59.9) == 15
    assert window.value(60.5) == 5  # the bucket of second 0 expired
    window.correct(30.2, -3)
    assert window.value(61) == 2
    assert window.value(200) == 0


def test_deployment_limits_are_token_buckets_refilled_continuously():
    limits = DeploymentLimits()
    rpm2 = Limits(rpm=2)  # a bucket of two requests, one more every 30 s
    assert limits.headroom("a", rpm2, 0, 1) is None
    limits.take("a", rpm2, 0, 100)
    limits.take("a", rpm2, 1, 100)
    assert "rpm" in (limits.headroom("a", rpm2, 2, 1) or "")
    assert limits.wait_s("a", rpm2, 2, 1) == pytest.approx(28.0)  # the first refill: 30 s after the first take
    assert limits.headroom("a", rpm2, 31, 1) is None
    tpm = Limits(tpm=250, burst_s=60)
    limits.take("b", tpm, 0, 200)
    assert "tpm" in (limits.headroom("b", tpm, 0, 100) or "")
    assert limits.wait_s("b", tpm, 0, 100) == pytest.approx(12.0)  # 50 tokens over at 250/60 per second
    limits.correct_tokens("b", -150)  # the answer was shorter than estimated
    assert limits.headroom("b", tpm, 0, 100) is None


def test_a_request_larger_than_the_bucket_goes_into_a_full_one_and_pays_its_debt():
    limits = DeploymentLimits()
    small = Limits(tpm=600, burst_s=1)  # a 10-token bucket, 10 tokens per second
    assert limits.headroom("a", small, 0, 50) is None
    limits.take("a", small, 0, 50)
    assert limits.wait_s("a", small, 0, 1) == pytest.approx(4.1)  # 5 s of debt, then room for one token
    assert limits.headroom("a", small, 5.0, 50) is None


def test_paced_bucket_dispatches_at_the_steady_rate():
    limits = DeploymentLimits()
    paced = Limits(rpm=600, burst_s=1)  # "600 RPM" enforced as 10 per second
    taken = 0
    now = 0.0
    while now < 60.0:
        if limits.headroom("a", paced, now, 1) is None:
            limits.take("a", paced, now, 1)
            taken += 1
        now += 0.01
    assert 600 <= taken <= 611  # a minute's rate plus the one-second burst at the start


def test_give_back_and_hold():
    limits = DeploymentLimits()
    one = Limits(rpm=1)
    limits.take("a", one, 10.0, 5)
    assert limits.held("a", 10.0) == (pytest.approx(1.0), 0.0)
    limits.give_back("a", 5)
    assert limits.held("a", 10.0) == (0.0, 0.0)
    limits.hold("a", one, 10.0, 7.0)  # another replica used the shared bucket: nothing fits for 7 s
    assert limits.wait_s("a", one, 10.0, 1) == pytest.approx(7.0)
