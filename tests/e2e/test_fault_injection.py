"""Resilience under provider faults: 2,000 requests (half streaming) at concurrency 50 through the gateway
to three deployments of one model — 30% 429s and 10% hangs on the first, 20% connection resets on the
second, the third healthy — with hedging off and on, in one run (`modelyard.testing.faults`)."""

from __future__ import annotations

import pytest

from modelyard.testing.faults import SuiteReport, SuiteSettings, run_fault_suite

FIRST_TOKEN_S = 0.5
TOTAL_S = 1.5


def _pair() -> tuple[SuiteReport, SuiteReport]:
    """The suite with hedging off, then on (100 ms)."""
    base = dict(requests=2000, concurrency=50, first_token_timeout_s=FIRST_TOKEN_S, total_timeout_s=TOTAL_S)
    return run_fault_suite(SuiteSettings(**base)), run_fault_suite(SuiteSettings(**base, hedge_after_ms=100))


@pytest.fixture(scope="module")
def reports():
    return _pair()


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


def test_the_breaker_opens_under_the_faults(reports):
    """Under this load the first deployment's breaker opens (100 failures in 10 s). Whether its 1 s cooldown
    ends, and a probe closes it, inside a run of about two seconds depends on timing and on the probe's luck
    against a 40% fault rate; the deterministic open -> half-open -> closed cycle is `test_breaker_lifecycle`."""
    transitions = [t for report in reports for t in report.breaker_transitions]
    assert ("a", "closed", "open") in transitions
    assert all(t[0] != "c" for t in transitions)  # the healthy deployment never trips


def test_breaker_lifecycle(tmp_path):
    """Open after N failures, stay open for the cooldown (requests go elsewhere), half-open lets one probe
    through, a successful probe closes it: driven through the gateway with the simulator's fault switch."""
    import time

    import httpx

    from modelyard.config.loader import parse_config
    from modelyard.server.background import BackgroundServer
    from modelyard.server.factory import create_app
    from modelyard.sim.server import SimServer

    with SimServer(instant=True) as sim:
        config = parse_config(f"""
deployments:
  - {{name: primary, provider: openai, model: sim-small, api_base: "{sim.url}/v1"}}
  - {{name: backup, provider: openai, model: sim-medium, api_base: "{sim.url}/v1"}}
models:
  m: {{strategy: priority, candidates: [primary, backup]}}
routing: {{retries: 0, breaker: {{failures: 3, window_s: 30, cooldown_s: 0.5}}}}
""")
        gateway = create_app(config)
        transitions: list[tuple[str, str]] = []
        gateway.router.health.listeners.append(lambda name, old, new: transitions.append((old.value, new.value)))

        def served() -> str:
            response = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200
            return response.headers["x-modelyard-model"]

        with BackgroundServer(gateway) as server:
            sim.set_faults("sim-small", server_error=1.0)
            assert [served() for _ in range(3)] == ["backup"] * 3  # each failed over; the third opens it
            assert transitions == [("closed", "open")]
            before = sim.stats()["models"]["sim-small"]["requests"]
            assert served() == "backup"  # open: primary is not even tried
            assert sim.stats()["models"]["sim-small"]["requests"] == before
            sim.set_faults("sim-small", server_error=0.0)
            time.sleep(0.6)  # the cooldown passes
            assert served() == "primary"  # the half-open probe succeeds...
            assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
            assert served() == "primary"  # ...and the breaker is closed again


def test_latency_is_bounded_by_the_timeouts(reports):
    for report in reports:
        # a request waits at most one total timeout on a hung attempt, plus the other attempts' work
        assert report.percentile(0.99) < (TOTAL_S + 1.0) * 1000, report.as_dict()


def _hedging_wins(off, on) -> bool:
    """Hedging at 100 ms rescues the requests stuck on a hung attempt, which without it wait for the 500 ms
    first-token timeout: the tail must be clearly lower (locally 0.2-0.5 of hedging-off's p99)."""
    return on.percentile(0.99) < 0.8 * off.percentile(0.99)


def test_hedging_lowers_p99(reports):
    """A p99 over 2,000 requests is the 20th slowest: one stall of the machine (CI once saw 20 requests of the
    hedged run take 950 ms) can decide it. So hedging must win two pairs of up to three, each by a margin
    that a broken hedge (both runs alike) would not reach."""
    pairs = [reports]
    base = dict(requests=2000, concurrency=50, first_token_timeout_s=FIRST_TOKEN_S, total_timeout_s=TOTAL_S)
    while sum(_hedging_wins(*pair) for pair in pairs) < 2 and len(pairs) < 3:
        pairs.append(
            (run_fault_suite(SuiteSettings(**base)), run_fault_suite(SuiteSettings(**base, hedge_after_ms=100)))
        )
    wins = sum(_hedging_wins(*pair) for pair in pairs)
    assert wins >= 2, [(off.as_dict(), on.as_dict()) for off, on in pairs]
