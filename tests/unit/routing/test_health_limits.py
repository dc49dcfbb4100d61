"""Circuit breakers, latency EWMA/p95 and RPM/TPM windows."""

from __future__ import annotations

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


def test_deployment_limits_headroom():
    limits = DeploymentLimits()
    assert limits.headroom("a", 0, rpm=2, tpm=None, tokens=1) is None
    limits.record("a", 0, 100)
    limits.record("a", 1, 100)
    assert "rpm" in (limits.headroom("a", 2, rpm=2, tpm=None, tokens=1) or "")
    assert "tpm" in (limits.headroom("a", 2, rpm=None, tpm=250, tokens=100) or "")
    assert limits.headroom("a", 70, rpm=2, tpm=250, tokens=100) is None
