"""`Counters.reseed_budget` (a key's budget or period edited through PATCH /admin/keys/{id}), on memory and
on the real Redis: the same window keeps the higher spend and every reservation; a new window starts from
the spend log, with the reservations this replica holds carried in and settling exactly once."""

from __future__ import annotations

from modelyard.state.counters import Ask, Counters


def ask(estimate: int, budget: int = 10_000, period: int = 0) -> Ask:
    return Ask("k", None, None, 0, budget, period, estimate, 3600, seed_required=True)


async def drain(counters: Counters) -> None:
    wait = getattr(counters, "drain", None)
    if wait is not None:
        await wait()


async def test_keep_raises_a_lower_spend_and_keeps_reservations(counters: Counters) -> None:
    await counters.seed_budget("k", 0, 300, 3600)
    held = await counters.admit(ask(100))
    assert held.ok and held.reservation is not None
    await counters.reseed_budget("k", 0, 500, 3600, replace=False)  # the log knows more: taken
    assert await counters.budget_state("k", 0) == (500, 100)
    await counters.reseed_budget("k", 0, 200, 3600, replace=False)  # the counters know more: kept
    assert await counters.budget_state("k", 0) == (500, 100)
    counters.settle(held.reservation, 40, 0)
    await drain(counters)
    assert await counters.budget_state("k", 0) == (540, 0)


async def test_keep_seeds_a_budget_that_has_no_counters(counters: Counters) -> None:
    assert not await counters.budget_started("k", 2)
    await counters.reseed_budget("k", 2, 700, 3600, replace=False)
    assert await counters.budget_state("k", 2) == (700, 0)
    assert (await counters.admit(ask(300, budget=1000, period=2))).ok
    assert not (await counters.admit(ask(1, budget=1000, period=2))).ok


async def test_replace_starts_the_window_from_the_log_and_settles_reservations_once(counters: Counters) -> None:
    await counters.seed_budget("k", 0, 9_000, 3600)  # another window's spend, left in this hash
    held = await counters.admit(ask(100, budget=100_000))
    assert held.ok and held.reservation is not None
    await counters.reseed_budget("k", 0, 250, 3600, replace=True)
    assert await counters.budget_state("k", 0) == (250, 100)  # the reservation in flight is carried
    counters.settle(held.reservation, 60, 0)
    counters.settle(held.reservation, 60, 0)  # a second settle is a no-op
    await drain(counters)
    assert await counters.budget_state("k", 0) == (310, 0)
    assert not (await counters.admit(ask(10_000 - 310 + 1, budget=10_000))).ok  # exactly what is left, no more
    assert (await counters.admit(ask(10_000 - 310, budget=10_000))).ok
