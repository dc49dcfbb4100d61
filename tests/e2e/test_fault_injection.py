"""Resilience under provider faults: 2,000 requests (half streaming) at concurrency 50 through the gateway
to three deployments of one model — 30% 429s and 10% hangs on the first, 20% connection resets on the
second, the third healthy — with hedging off and on, in one run (`modelyard.testing.faults`)."""

from __future__ import annotations

import pytest

from modelyard.testing.faults import SuiteSettings, run_fault_suite

FIRST_TOKEN_S = 0.5
TOTAL_S = 1.5


@pytest.fixture(scope="module")
def reports():
    base = dict(requests=2000, concurrency=50, first_token_timeout_s=FIRST_TOKEN_S, total_timeout_s=TOTAL_S)
    return run_fault_suite(SuiteSettings(**base)), run_fault_suite(SuiteSettings(**base, hedge_after_ms=100))


@pytest.mark.parametrize("which", [0, 1], ids=["hedging-off", "hedging-on"])
def test_nearly_everything_succeeds_nothing_is_lost_and_attempts_add_up(reports, which):
    report = reports[which]
    data = report.as_dict()
    assert report.lost == 0, data
    assert report.ok + report.failed == report.settings.requests
    assert report.success_rate >= 0.999, data
    # every attempt the gateway reported reached the simulator and nothing else did, except that a hedge leg
    # abandoned in the same instant it started may never have left the gateway
    assert report.upstream_requests <= report.attempts_reported, data
    assert report.attempts_reported - report.upstream_requests <= report.cancelled_attempts, data
    if report.settings.hedge_after_ms is None:
        assert report.attempts_reported == report.upstream_requests, data
    assert all(n >= 1 for n in report.attempts)
    assert max(report.attempts) <= 8


def test_the_breaker_opens_and_closes(reports):
    transitions = reports[0].breaker_transitions
    assert ("a", "closed", "open") in transitions
    assert any(t[1:] == ("open", "half_open") for t in transitions)
    assert any(t[1:] == ("half_open", "closed") for t in transitions)


def test_latency_is_bounded_by_the_timeouts(reports):
    for report in reports:
        # a request waits at most one total timeout on a hung attempt, plus the other attempts' work
        assert report.percentile(0.99) < (TOTAL_S + 1.0) * 1000, report.as_dict()


def test_hedging_lowers_p99(reports):
    off, on = reports
    assert on.percentile(0.99) < off.percentile(0.99), (off.as_dict(), on.as_dict())
