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


# ---------------------------------------------------------------- reload and the fleet (state/redis_health.py)


def _trip(health: HealthTracker, name: str, now: float) -> None:
    for _ in range(health.policy_for(name).failures):
        health.on_start(name, now)
        health.on_failure(name, now, ErrorKind.SERVER)


def test_reconfigure_keeps_named_deployments_and_starts_the_others_afresh():
    health = HealthTracker(BreakerPolicy(failures=1, cooldown_s=5), alpha=0.5)
    health.watch_latency(100.0)
    for name in ("kept", "changed"):
        health.on_start(name, 0)
        health.on_success(name, 0, 500.0)
        _trip(health, name, 1)
    assert health.unhealthy == {"kept", "changed"} and health.slow_over(100.0) == {"kept", "changed"}
    health.reconfigure(BreakerPolicy(failures=3, cooldown_s=60), alpha=0.1, keep={"kept"})
    assert health.policy.failures == 3 and health.alpha == 0.1
    assert health.unhealthy == {"kept"} and "changed" not in health.all()
    assert health.get("kept").state is BreakerState.OPEN and health.get("kept").ewma_total_ms == 500.0
    assert health.get("changed").state is BreakerState.CLOSED and health.get("changed").ewma_total_ms is None
    assert health.slow_over(100.0) is None  # bounds are the caller's to watch again
    health.watch_latency(400.0)
    assert health.slow_over(400.0) == {"kept"}
    assert not health.available("kept", 10)  # the new 60 s cooldown applies to the kept breaker


def test_with_sharing_a_passed_cooldown_waits_for_the_fleets_probe_grant():
    health = HealthTracker(BreakerPolicy(failures=1, cooldown_s=5))
    health.shared = True
    _trip(health, "a", 0)
    assert health.probe_due("a", 4) is None  # still cooling down
    assert not health.available("a", 6) and health.probe_due("a", 6) == 0
    health.on_start("a", 6)
    assert health.get("a").state is BreakerState.OPEN  # no grant: no probe, whatever the request does
    health.on_cancel("a")
    health.grant_probe("a", until=9)
    assert health.probe_due("a", 7) is None and health.available("a", 7)
    health.on_start("a", 7)
    assert health.get("a").state is BreakerState.HALF_OPEN
    health.on_failure("a", 8, ErrorKind.SERVER)
    # Reopened: the grant was spent on that probe, so the next cooldown needs a new one.
    assert not health.available("a", 8 + 5.5) and health.probe_due("a", 8 + 5.5) == 0
    health.shared = False
    assert health.available("a", 8 + 5.5)  # Redis gone: local cooldowns again


def test_apply_shared_adopts_newer_verdicts_only_and_tells_listeners_they_are_remote():
    health = HealthTracker(BreakerPolicy(failures=1, cooldown_s=5))
    seen: list[tuple[str, bool]] = []
    health.subscribe(lambda name, old, new: seen.append((new.value, health.remote)))
    assert health.apply_shared("a", open=True, open_until=15.0, epoch=7) is BreakerState.CLOSED
    assert health.breaker("a") == (BreakerState.OPEN, 7, 15.0)
    assert health.apply_shared("a", open=False, open_until=0, epoch=7) is None  # not newer
    assert health.apply_shared("a", open=False, open_until=0, epoch=9) is BreakerState.OPEN
    assert health.get("a").state is BreakerState.CLOSED and "a" not in health.unhealthy
    assert seen == [("open", True), ("closed", True)]
    _trip(health, "a", 20)
    assert seen[-1] == ("open", False)


def test_blend_mixes_the_fleet_in_and_own_stats_takes_it_back_out():
    health = HealthTracker(alpha=0.5)
    health.watch_latency(150.0)
    for _ in range(4):
        health.on_start("a", 0)
        health.on_success("a", 0, 100.0, 10.0)
    own = health.own_stats(0)["a"]
    assert own[:3] == (100.0, 10.0, 100.0) and own[3] == 4
    health.blend("a", [(300.0, 30.0, 300.0, 4.0)])
    a = health.get("a")
    assert a.ewma_total_ms == pytest.approx(200.0) and a.ewma_ttft_ms == pytest.approx(20.0)
    assert a.p95_ms == pytest.approx(200.0) and health.slow_over(150.0) == {"a"}
    for _ in range(3):  # strategies' field moves from the blend; this replica's own EWMA stays 100
        health.on_start("a", 0)
        health.on_success("a", 0, 100.0, 10.0)
    assert a.ewma_total_ms == pytest.approx(100.0 + 100.0 * 0.5**3)
    assert health.own_stats(0)["a"][:2] == pytest.approx((100.0, 10.0))


def test_a_replica_without_samples_publishes_nothing_and_recovers_its_first_ones_exactly():
    health = HealthTracker(alpha=0.2)
    assert health.own_stats(0) == {}
    health.blend("a", [(300.0, None, 300.0, 10.0)])
    assert health.get("a").ewma_total_ms == 300.0 and health.own_stats(0) == {}
    health.on_start("a", 0)
    health.on_success("a", 0, 50.0, 5.0)
    total, ttft, p95, weight = health.own_stats(0)["a"]
    assert total == pytest.approx(50.0) and ttft == pytest.approx(5.0) and p95 == 50.0 and weight == 1
