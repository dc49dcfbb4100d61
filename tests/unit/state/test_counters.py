"""Counters contract on memory and on Redis (the real server): RPM, TPM, exact budget reservations."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.accounting.budgets import NANO
from modelyard.state.counters import Ask, Counters, MemoryCounters
from modelyard.state.windows import SlidingWindow


def ask(
    account: str = "k",
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    tokens: int = 0,
    budget: int | None = None,
    estimate: int = 0,
    period: int = 0,
) -> Ask:
    return Ask(account, rpm, tpm, tokens, budget, period, estimate)


async def test_rpm_admits_exactly_the_limit(counters: Counters) -> None:
    verdicts = [await counters.admit(ask(rpm=3)) for _ in range(5)]
    assert [v.ok for v in verdicts] == [True, True, True, False, False]
    refused = verdicts[3]
    assert refused.reason == "rpm"
    assert 0.0 < refused.retry_after <= 60.0


async def test_accounts_are_independent(counters: Counters) -> None:
    assert (await counters.admit(ask("a", rpm=1))).ok
    assert not (await counters.admit(ask("a", rpm=1))).ok
    assert (await counters.admit(ask("b", rpm=1))).ok


async def test_tpm_counts_estimated_tokens(counters: Counters) -> None:
    results = [(await counters.admit(ask(tpm=1000, tokens=400))).ok for _ in range(3)]
    assert results == [True, True, False]
    refused = await counters.admit(ask(tpm=1000, tokens=400))
    assert refused.reason == "tpm" and refused.retry_after > 0


async def test_one_request_larger_than_tpm_passes_an_empty_window(counters: Counters) -> None:
    assert (await counters.admit(ask(tpm=100, tokens=500))).ok
    assert not (await counters.admit(ask(tpm=100, tokens=1))).ok


async def test_settle_corrects_tokens_to_actual_usage(counters: Counters) -> None:
    first = await counters.admit(ask(tpm=1000, tokens=900))
    assert first.ok and first.reservation is not None
    assert not (await counters.admit(ask(tpm=1000, tokens=200))).ok
    counters.settle(first.reservation, 0, 300)  # the answer used 300 tokens, not 900
    await _drain(counters)
    assert (await counters.admit(ask(tpm=1000, tokens=200))).ok


async def test_budget_under_100_concurrent_requests_is_exact(counters: Counters) -> None:
    estimate = 1_234_567  # nano-dollars per request
    budget = 10 * estimate + estimate // 2  # covers 10.5 requests: exactly 10 may start
    calls = (counters.admit(ask(budget=budget, estimate=estimate)) for _ in range(100))
    verdicts = await asyncio.gather(*calls)
    admitted = [v for v in verdicts if v.ok]
    assert len(admitted) == 10
    assert all(v.reason == "budget" for v in verdicts if not v.ok)
    assert await counters.budget_state("k", 0) == (0, 10 * estimate)
    for verdict in admitted:
        assert verdict.reservation is not None
        counters.settle(verdict.reservation, estimate // 2, 0)  # each cost half its estimate
    await _drain(counters)
    spent, reserved = await counters.budget_state("k", 0)
    assert (spent, reserved) == (10 * (estimate // 2), 0)
    assert spent <= budget
    more = await asyncio.gather(*(counters.admit(ask(budget=budget, estimate=estimate)) for _ in range(20)))
    assert sum(v.ok for v in more) == (budget - spent) // estimate


async def test_budget_refusal_takes_no_rpm(counters: Counters) -> None:
    assert not (await counters.admit(ask(rpm=1, budget=10, estimate=11))).ok
    assert (await counters.admit(ask(rpm=1, budget=10, estimate=10))).ok


async def test_spent_budget_refuses_even_free_requests(counters: Counters) -> None:
    verdict = await counters.admit(ask(budget=NANO, estimate=NANO))
    assert verdict.ok and verdict.reservation is not None
    counters.settle(verdict.reservation, NANO, 0)
    await _drain(counters)
    assert not (await counters.admit(ask(budget=NANO, estimate=0))).ok


async def test_seed_starts_a_period_once(counters: Counters) -> None:
    await counters.seed_budget("k", 3, 900, 3600)
    await counters.seed_budget("k", 3, 0, 3600)  # ignored: the period already started
    assert await counters.budget_state("k", 3) == (900, 0)
    assert (await counters.admit(ask(budget=1000, estimate=100, period=3))).ok
    assert not (await counters.admit(ask(budget=1000, estimate=1, period=3))).ok
    assert (await counters.admit(ask(budget=1000, estimate=100, period=4))).ok  # a new period


async def test_settle_twice_counts_once(counters: Counters) -> None:
    verdict = await counters.admit(ask(budget=1000, estimate=100))
    assert verdict.reservation is not None
    counters.settle(verdict.reservation, 50, 0)
    counters.settle(verdict.reservation, 50, 0)
    await _drain(counters)
    assert await counters.budget_state("k", 0) == (50, 0)


async def _drain(counters: Counters) -> None:
    drain = getattr(counters, "drain", None)
    if drain is not None:
        await drain()


# --------------------------------------------------------------------------- memory: the clock is ours


def test_window_slides_and_says_when_room_returns() -> None:
    counters = MemoryCounters()
    assert counters.admit_now(ask(rpm=2), 1000.2).ok
    assert counters.admit_now(ask(rpm=2), 1030.5).ok
    refused = counters.admit_now(ask(rpm=2), 1040.0)
    assert not refused.ok
    assert refused.retry_after == pytest.approx(1060.0 - 1040.0)  # the 1000s bucket leaves at 1060
    assert counters.admit_now(ask(rpm=2), 1060.0).ok
    assert not counters.admit_now(ask(rpm=2), 1061.0).ok
    assert counters.admit_now(ask(rpm=2), 1091.0).ok  # the 1030s bucket has left


def test_window_wait_covers_several_buckets() -> None:
    window = SlidingWindow()
    window.add(100, 300)
    window.add(110, 300)
    window.add(120, 300)
    assert window.value(125) == 900
    assert window.wait_s(125.0, 500) == pytest.approx(170.0 - 125.0)  # two buckets must leave
    assert window.wait_s(125.0, 10_000) == 60.0
    window.correct(110, -250)
    assert window.value(125) == 650
    assert window.value(175) == 300
