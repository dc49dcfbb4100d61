"""The simulator's per-model rate limits: bucket arithmetic (burst, refill, the wait), the wire's own 429 with
`retry-after` / `retry-after-ms` on every format, the counters in `/_sim/stats`, PATCH and reset, and a burst
over loopback against a paced limit."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelyard.sim import FleetError, SimServer, create_app
from modelyard.sim.fleet import RateLimit, fleet_from_dict
from modelyard.sim.rate_limits import Bucket, Limiter, PeakRate, RateLimits
from tests.unit.sim.sim_helpers import asgi_call, chat_body, fleet

# ---------------------------------------------------------------------------------------------- arithmetic


def test_an_idle_bucket_admits_its_burst_then_refills_at_the_rate() -> None:
    limiter = Limiter(RateLimit(rpm=600, burst_s=1.0), now=0.0)  # 10 per second, 10 deep
    assert [limiter.admit(0.0, 0) for _ in range(10)] == [0.0] * 10
    assert limiter.admit(0.0, 0) == pytest.approx(0.1)  # one request refills in 60/600 s
    assert limiter.admit(0.05, 0) == pytest.approx(0.05)
    assert limiter.admit(0.1, 0) == 0.0
    assert limiter.admit(0.1, 0) == pytest.approx(0.1)
    # a long idle time refills only up to the depth
    assert [limiter.admit(100.0, 0) for _ in range(11)][-2:] == [0.0, pytest.approx(0.1)]


def test_a_refused_request_takes_nothing() -> None:
    limiter = Limiter(RateLimit(rpm=60, burst_s=2.0), now=0.0)  # 1 per second, 2 deep
    assert limiter.admit(0.0, 0) == 0.0 and limiter.admit(0.0, 0) == 0.0
    for _ in range(5):
        assert limiter.admit(0.5, 0) == pytest.approx(0.5)
    assert limiter.admit(1.0, 0) == 0.0


def test_depth_is_at_least_one_request() -> None:
    bucket = Bucket(per_minute=6, burst_s=1.0, now=0.0)  # 0.1 per second: 0.1 deep, lifted to 1
    assert bucket.capacity == 1.0 and bucket.wait(0.0, 1.0) == 0.0
    bucket.take(1.0)
    assert bucket.wait(0.0, 1.0) == pytest.approx(10.0)


def test_tokens_count_against_tpm_and_the_wait_is_the_larger_of_the_two() -> None:
    limiter = Limiter(RateLimit(rpm=60, tpm=6000, burst_s=60.0), now=0.0)  # 1 req/s (60 deep), 100 tok/s
    assert limiter.admit(0.0, 5900) == 0.0
    assert limiter.admit(0.0, 300) == pytest.approx(2.0)  # 100 tokens left, 200 short at 100/s
    assert limiter.admit(2.0, 300) == 0.0


def test_a_request_larger_than_the_token_bucket_waits_for_a_full_one_and_leaves_a_debt() -> None:
    limiter = Limiter(RateLimit(tpm=600, burst_s=60.0), now=0.0)  # 10 tok/s, 600 deep
    assert limiter.admit(0.0, 100) == 0.0
    assert limiter.admit(0.0, 1000) == pytest.approx(10.0)  # until the bucket is full again
    assert limiter.admit(10.0, 1000) == 0.0  # admitted: the level is now -400
    assert limiter.admit(10.0, 10) == pytest.approx(41.0)


def test_rate_limits_without_a_limit_admit_everything_and_forget_starts_full() -> None:
    limits = RateLimits()
    assert all(limits.admit("free", None, 0.0, 10**9) == 0.0 for _ in range(1000))
    limit = RateLimit(rpm=1)
    assert limits.admit("m", limit, 0.0, 1) == 0.0 and limits.admit("m", limit, 0.0, 1) > 0.0
    limits.forget("m")
    assert limits.admit("m", limit, 0.0, 1) == 0.0
    limits.clear()
    assert limits.admit("m", limit, 0.0, 1) == 0.0


def test_peak_rate_is_the_most_events_in_any_sliding_window() -> None:
    peak = PeakRate(60.0)
    for t in (0.0, 10.0, 20.0, 59.0):
        peak.add(t)
    assert peak.peak == 4
    for t in (60.0, 61.0, 119.5):  # the window slides: 0.0 leaves at 60, 10.0 at 70, ...
        peak.add(t)
    assert peak.peak == 5  # (10, 20, 59, 60, 61)
    assert list(peak.times) == [60.0, 61.0, 119.5]  # bounded: only the last window is kept


@pytest.mark.parametrize(
    ("limit", "path"),
    [
        ({"rpm": 0}, "models[0].rate_limit.rpm"),
        ({"tpm": -5}, "models[0].rate_limit.tpm"),
        ({"rpm": 10, "burst_s": 0}, "models[0].rate_limit.burst_s"),
        ({"rpm": 10, "burst_s": float("inf")}, "models[0].rate_limit"),
        ({"rpm": 10, "per_day": 5}, "models[0].rate_limit"),
    ],
)
def test_a_bad_rate_limit_names_its_path(limit: dict[str, Any], path: str) -> None:
    with pytest.raises(FleetError) as raised:
        fleet_from_dict({"models": [{"name": "m", "rate_limit": limit}]}, "fleet.yaml")
    assert str(raised.value).startswith("fleet.yaml: ") and f"`{path}`" in str(raised.value)


# ---------------------------------------------------------------------------------------------- over HTTP

WIRES = ["openai", "anthropic", "responses", "gemini"]


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    models = (
        {"name": "one", "rate_limit": {"rpm": 1}},  # a bucket of one request, refilled in 60 s
        # 1 token/s, 1200 deep: what refills while a test runs is negligible
        {"name": "tok", "rate_limit": {"tpm": 60, "burst_s": 1200}, "output_tokens": 50},
        {"name": "free", "output_tokens": 5},
    )
    with SimServer(fleet(*models)) as sim:
        yield sim


@pytest.fixture
def sim(server: SimServer) -> SimServer:
    server.reset()
    return server


def post(sim: SimServer, wire: str, model: str, max_tokens: int | None = None) -> httpx.Response:
    """A chat request for `model` on `wire` (with `max_tokens` where the wire has one)."""
    messages = [{"role": "user", "content": "hello"}]
    body: dict[str, Any]
    if wire == "openai":
        url, body = sim.openai_base + "/chat/completions", {"model": model, "messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
    elif wire == "anthropic":
        url, body = sim.url + "/v1/messages", {"model": model, "messages": messages, "max_tokens": max_tokens or 64}
    elif wire == "responses":
        url, body = sim.openai_base + "/responses", {"model": model, "input": "hello"}
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
    else:
        url = f"{sim.gemini_base}/models/{model}:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
        if max_tokens is not None:
            body["generationConfig"] = {"maxOutputTokens": max_tokens}
    return httpx.post(url, json=body, timeout=5.0)


@pytest.mark.parametrize("wire", WIRES)
def test_beyond_the_limit_is_the_wires_429_with_retry_after_from_the_bucket(sim: SimServer, wire: str) -> None:
    assert post(sim, wire, "one").status_code == 200
    r = post(sim, wire, "one")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"  # the one request refills in 60 s
    assert 59_000 < int(r.headers["retry-after-ms"]) <= 60_000
    error = r.json()["error"]
    field, value = {
        "openai": ("code", "rate_limit_exceeded"),
        "responses": ("code", "rate_limit_exceeded"),
        "anthropic": ("type", "rate_limit_error"),
        "gemini": ("status", "RESOURCE_EXHAUSTED"),
    }[wire]
    assert error[field] == value
    if wire == "gemini":
        assert error["details"][0]["retryDelay"] == "60s"
    stats = sim.stats()["models"]["one"]
    assert (stats["accepted"], stats["rate_limited"], stats["requests"], stats["successes"]) == (1, 1, 2, 1)
    assert stats["faults"]["rate_limit"] == 0  # a limit is not a random fault


def test_the_wires_share_one_bucket_per_model(sim: SimServer) -> None:
    assert post(sim, "openai", "one").status_code == 200
    assert [post(sim, wire, "one").status_code for wire in WIRES] == [429] * 4
    assert post(sim, "openai", "free").status_code == 200  # other models are not affected


def test_tpm_reserves_prompt_plus_max_tokens_at_admission(sim: SimServer) -> None:
    first = post(sim, "anthropic", "tok", max_tokens=1000)
    assert first.status_code == 200
    cost = first.json()["usage"]["input_tokens"] + 1000
    r = post(sim, "anthropic", "tok", max_tokens=1000)  # 1200 - cost left, cost needed, at 1 token/s
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) in (2 * cost - 1200, 2 * cost - 1200 - 1)
    assert math.ceil(int(r.headers["retry-after-ms"]) / 1000) == int(r.headers["retry-after"])
    assert post(sim, "anthropic", "tok", max_tokens=100).status_code == 200  # a small one still fits


def test_without_max_tokens_tpm_reserves_the_models_longest_answer(sim: SimServer) -> None:
    first = post(sim, "openai", "tok")
    reserved = first.json()["usage"]["prompt_tokens"] + 50  # "tok" answers at most 50 tokens
    codes = [first.status_code] + [post(sim, "openai", "tok").status_code for _ in range(39)]
    fit = 1200 // reserved  # 23 with a 2-token prompt
    assert codes.count(200) == fit and codes.count(429) == 40 - fit
    assert codes == sorted(codes)  # every 200 before every 429


def test_counters_and_peak_rates_in_stats(sim: SimServer) -> None:
    for _ in range(3):
        assert post(sim, "openai", "free").status_code == 200
    post(sim, "openai", "one")
    post(sim, "openai", "one")
    models = sim.stats()["models"]
    free, one = models["free"], models["one"]
    assert (free["accepted"], free["rate_limited"], free["max_per_minute"], free["max_per_second"]) == (3, 0, 3, 3)
    assert (one["accepted"], one["rate_limited"], one["max_per_minute"]) == (1, 1, 1)
    assert models["tok"]["accepted"] == 0 and models["tok"]["max_per_minute"] == 0


def test_patch_changes_the_limit_and_starts_the_bucket_full(sim: SimServer) -> None:
    assert post(sim, "openai", "one").status_code == 200
    assert post(sim, "openai", "one").status_code == 429
    r = httpx.patch(sim.url + "/_sim/models/one", json={"rate_limit": {"rpm": 120, "burst_s": 1}})
    assert r.status_code == 200 and r.json()["rate_limit"] == {"rpm": 120, "tpm": None, "burst_s": 1.0}
    codes = [post(sim, "openai", "one").status_code for _ in range(3)]  # 2 per second, 2 deep
    assert codes == [200, 200, 429]
    bad = httpx.patch(sim.url + "/_sim/models/one", json={"rate_limit": {"rpm": 0}})
    assert bad.status_code == 400 and "rate_limit.rpm" in bad.json()["error"]
    off = httpx.patch(sim.url + "/_sim/models/one", json={"rate_limit": None})
    assert off.status_code == 200 and off.json()["rate_limit"] is None
    assert [post(sim, "openai", "one").status_code for _ in range(5)] == [200] * 5
    sim.set_model("one", rate_limit={"rpm": 1, "burst_s": 60.0})


def test_reset_clears_the_counters_and_the_buckets(sim: SimServer) -> None:
    assert post(sim, "openai", "one").status_code == 200
    assert post(sim, "openai", "one").status_code == 429
    assert httpx.post(sim.url + "/_sim/reset").status_code == 200
    stats = sim.stats()["models"]["one"]
    assert (stats["accepted"], stats["rate_limited"], stats["max_per_minute"], stats["max_per_second"]) == (0,) * 4
    assert post(sim, "openai", "one").status_code == 200


async def test_a_refused_embedding_is_a_429_too() -> None:
    app = create_app(fleet({"name": "e", "kind": "embedding", "rate_limit": {"rpm": 1}}))
    body = {"model": "e", "input": "hello"}
    assert (await asgi_call(app, "POST", "/v1/embeddings", body)).status == 200
    r = await asgi_call(app, "POST", "/v1/embeddings", body)
    assert r.status == 429 and r.headers["retry-after"] == "60"


async def test_a_refused_request_draws_nothing_so_admitted_answers_replay_alike() -> None:
    limited = create_app(fleet({"name": "m", "rate_limit": {"rpm": 60, "burst_s": 2}}))
    plain = create_app(fleet({"name": "m"}))
    body = chat_body("m", seed=1)
    got = [await asgi_call(limited, "POST", "/v1/chat/completions", body) for _ in range(4)]
    assert [r.status for r in got] == [200, 200, 429, 429]
    want = [await asgi_call(plain, "POST", "/v1/chat/completions", body) for _ in range(2)]
    assert [r.json()["choices"] for r in got[:2]] == [r.json()["choices"] for r in want]


# ---------------------------------------------------------------------------------------------- timed


def test_a_burst_of_100_against_600_rpm_1s_deep_admits_about_10() -> None:
    spec = {"name": "paced", "rate_limit": {"rpm": 600, "burst_s": 1.0}, "output_tokens": 5}
    with SimServer(fleet(spec)) as sim:

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
                body = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
                url = sim.openai_base + "/chat/completions"
                return await asyncio.gather(*(client.post(url, json=body) for _ in range(100)))

        answers = asyncio.run(burst())
        ok = sum(r.status_code == 200 for r in answers)
        refused = [r for r in answers if r.status_code == 429]
        assert 10 <= ok <= 15  # 10 from the full bucket, plus the few refilled while the burst arrives
        assert len(refused) == 100 - ok
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all(1 <= int(r.headers["retry-after-ms"]) <= 100 for r in refused)  # one slot refills in 0.1 s
        stats = sim.stats()["models"]["paced"]
        assert (stats["accepted"], stats["rate_limited"]) == (ok, 100 - ok)
        assert stats["max_per_second"] == ok and stats["max_per_minute"] == ok
