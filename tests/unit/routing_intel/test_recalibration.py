"""Online recalibration from feedback (routing/recalibration.py): the fold, its bounds, its determinism,
exploration, the per-key cap, and the gateway's use of it (a fake store stands in for `feedback_samples`)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from modelyard.config.loader import ConfigError, parse_config
from modelyard.config.model import RecalibrateSettings
from modelyard.config.routing_options import as_struct
from modelyard.routing.intelligence import Insight, Intelligence
from modelyard.routing.recalibration import Recalibration, RouteSpec, fold, unit_hash
from modelyard.state.feedback import FeedbackSample

ROUTES = {"cheap@sim": "cheap", "strong@sim": "strong"}


def settings(**changes: object) -> RecalibrateSettings:
    base = {"period_s": 10.0, "window_s": 3600.0, "prior": 10.0, "max_step": 0.1, "max_correction": 0.5}
    return as_struct({**base, **changes}, RecalibrateSettings)


def spec(**changes: object) -> RouteSpec:
    target = changes.pop("target", 0.9)
    return RouteSpec("smart", settings(**changes), ROUTES, target=target, lam=0.2)  # type: ignore[arg-type]


def sample(i: int, at: float, dep: str, score: float, predicted: float, key: str | None = "k1", task: str = "a"):
    return FeedbackSample(
        feedback_id=f"fb_{i:06d}",
        request_id=f"req_{i:06d}",
        at=at,
        score=score,
        source="key" if key else "admin",
        key_id=key,
        model="smart",
        deployment=dep,
        task=task,
        predicted=predicted,
    )


def honest(n: int, start: float = 0.0, dt: float = 1.0, seed: int = 0, key: str = "k1") -> list[FeedbackSample]:
    """The cheap model is right 92% of the time on task a but predicted at 0.3; strong right 95%, predicted 0.95."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        dep = "cheap@sim" if i % 2 == 0 else "strong@sim"
        right = rng.random() < (0.92 if dep == "cheap@sim" else 0.95)
        predicted = 0.3 if dep == "cheap@sim" else 0.95
        rows.append(sample(seed * 100_000 + i, start + i * dt, dep, float(right), predicted, key=key))
    return rows


def test_under_rated_model_is_corrected_towards_its_observed_quality() -> None:
    rows = honest(400)
    state = fold(spec(), rows, now=10_000.0)
    cheap = state.corrections[("cheap", "a")]
    # Observed 0.92 vs predicted 0.3: the shrunk mean of +0.62 on ~200 samples, capped at max_correction.
    assert cheap == pytest.approx(0.5, abs=1e-9)
    assert abs(state.corrections[("strong", "a")]) < 0.05
    assert state.quality == pytest.approx(sum(s.score for s in rows) / len(rows))


def test_each_period_moves_a_correction_by_at_most_max_step() -> None:
    rows = honest(400, dt=0.01)  # all in one period of 10 s
    state = fold(spec(max_step=0.05), rows, now=10_000.0)
    assert state.periods == 1
    assert state.corrections[("cheap", "a")] == pytest.approx(0.05)
    # The same feedback over 4 periods: 4 steps.
    spread = [msgspec.structs.replace(s, at=(i % 4) * 10.0 + i * 1e-3) for i, s in enumerate(rows)]
    spread.sort(key=lambda s: (s.at, s.feedback_id))
    assert fold(spec(max_step=0.05), spread, now=10_000.0).corrections[("cheap", "a")] == pytest.approx(0.2)


def test_the_open_period_is_not_folded_yet() -> None:
    rows = honest(50, start=100.0, dt=0.1)  # 100..105: the period [100, 110)
    assert fold(spec(), rows, now=105.0).periods == 0
    assert fold(spec(), rows, now=110.0).periods == 1


def test_one_key_flooding_bad_feedback_moves_a_route_no_more_than_its_cap() -> None:
    # Ten honest tenants (60 rows each, capped at 50 like everyone) and one flooding 5,000 zeros on cheap.
    base = [s for k in range(10) for s in honest(60, start=k * 0.1, seed=k + 1, key=f"k{k}")]
    base.sort(key=lambda s: (s.at, s.feedback_id))
    flood = [sample(900_000 + i, 0.25 + i * 0.01, "cheap@sim", 0.0, 0.3, key="mallory") for i in range(5000)]
    both = sorted(base + flood, key=lambda s: (s.at, s.feedback_id))
    calm = fold(spec(max_per_key=50.0, max_correction=1.0), base, now=10_000.0)
    flooded = fold(spec(max_per_key=50.0, max_correction=1.0), both, now=10_000.0)
    uncapped = fold(spec(max_per_key=1e6, max_correction=1.0), both, now=10_000.0)
    moved = calm.corrections[("cheap", "a")] - flooded.corrections[("cheap", "a")]
    # Mallory counts for 50 samples of (0 - 0.3) against the honest cheap rows' weight (and the prior of 10):
    # the correction moves by at most 50 x (honest mean residual + 0.3) / (weight + 50 + 10).
    w_cheap = 10 * 30 * (50 / 60)
    bound = 50 * (calm.corrections[("cheap", "a")] * (w_cheap + 10) / w_cheap + 0.3) / (w_cheap + 50 + 10)
    assert 0.0 < moved <= bound + 1e-9
    assert moved < 0.15
    assert uncapped.corrections[("cheap", "a")] < flooded.corrections[("cheap", "a")] - 0.3  # the cap is what held
    assert flooded.weight == pytest.approx(11 * 50)


def test_admin_feedback_is_not_capped() -> None:
    rows = [sample(i, i * 0.01, "cheap@sim", 1.0, 0.3, key=None) for i in range(500)]
    assert fold(spec(max_per_key=5.0), rows, now=10_000.0).weight == pytest.approx(500)


def test_knob_moves_only_when_the_target_is_outside_the_estimate_interval() -> None:
    good = [sample(i, i * 1.0, "strong@sim", 1.0 if i % 50 else 0.0, 0.95) for i in range(600)]  # 0.98
    up = fold(spec(target=0.9, knob_step=0.02, max_knob_shift=0.1), good, now=10_000.0)
    assert up.knob_shift == pytest.approx(0.1)  # bounded by max_knob_shift
    bad = [sample(i, i * 1.0, "strong@sim", 1.0 if i % 4 else 0.0, 0.95) for i in range(600)]  # 0.75
    assert fold(spec(target=0.9, knob_step=0.02), bad, now=10_000.0).knob_shift < 0
    near = [sample(i, i * 1.0, "strong@sim", 1.0 if i % 10 else 0.0, 0.95) for i in range(100)]  # 0.90
    assert fold(spec(target=0.9), near, now=10_000.0).knob_shift == 0.0


@dataclass
class FakeStore:
    rows: list[FeedbackSample]
    calls: int = 0
    lean_calls: int = 0

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
    ):
        """As the stores do: `lean` leaves the embedding and text out."""
        self.calls += 1
        self.lean_calls += lean
        out = sorted((s for s in self.rows if s.at >= since and (model is None or s.model == model)), key=_order)
        if lean:
            out = [msgspec.structs.replace(s, embedding=None, content=None) for s in out]
        return out[:limit]


def _order(s: FeedbackSample) -> tuple[float, str]:
    return (s.at, s.feedback_id)


def test_replicas_folding_the_same_rows_agree_whenever_they_refresh_within_a_period() -> None:
    rows = honest(500, start=1000.0, dt=0.5)
    shuffled = list(rows) + rows[:40]  # duplicates, in any order: the store orders, the fold dedupes
    random.Random(3).shuffle(shuffled)
    a = Recalibration({"smart": spec(window_s=600.0)}, clock=lambda: 1300.0)
    b = Recalibration({"smart": spec(window_s=600.0)}, clock=lambda: 1309.0)
    asyncio.run(a.refresh(FakeStore(rows)))
    asyncio.run(b.refresh(FakeStore(shuffled)))
    assert a.state["smart"] == b.state["smart"]
    assert a.state["smart"].corrections[("cheap", "a")] > 0.2


def test_reading_pages_through_the_store_keeping_the_newest_rows_read_without_their_embedding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import modelyard.routing.recalibration as recal

    rows = [msgspec.structs.replace(s, embedding="space|AAAA", content="text") for s in honest(250, dt=0.1)]
    store = FakeStore(rows)
    monkeypatch.setattr(recal, "PAGE", 40)
    got = asyncio.run(Recalibration({"smart": spec()}).read(store, "smart", 0.0))
    assert [s.feedback_id for s in got] == [s.feedback_id for s in rows]
    assert store.calls >= 7 and store.lean_calls == store.calls  # every page read lean: no ~2 KB a row
    assert all(s.embedding is None and s.content is None for s in got)
    monkeypatch.setattr(recal, "MAX_ROWS", 100)
    newest = asyncio.run(Recalibration({"smart": spec()}).read(FakeStore(rows), "smart", 0.0))
    assert [s.feedback_id for s in newest] == [s.feedback_id for s in rows[-100:]]


def test_every_change_is_logged_with_route_old_new_why_and_n(caplog: pytest.LogCaptureFixture) -> None:
    recal = Recalibration({"smart": spec(max_per_key=1000.0)}, clock=lambda: 1000.0)
    with caplog.at_level(logging.INFO, logger="modelyard.recalibration"):
        moved = asyncio.run(recal.refresh(FakeStore(honest(300))))
    lines = [r.getMessage() for r in caplog.records if r.name == "modelyard.recalibration"]
    assert len(lines) == len(moved) >= 2
    assert any(line.startswith("smart: correction[cheap/a] 0.0000 -> 0.5000") and "n=300.0" in line for line in lines)
    again = asyncio.run(recal.refresh(FakeStore(honest(300))))
    assert again == []  # nothing new: nothing logged


def test_a_store_error_keeps_the_last_state() -> None:
    class Down:
        async def feedback_samples(
            self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
        ):
            raise OSError("store down")

    recal = Recalibration({"smart": spec(refresh_s=0.01)}, clock=lambda: 1000.0)
    asyncio.run(recal.refresh(FakeStore(honest(300))))
    before = recal.state["smart"]
    assert before.corrections[("cheap", "a")] > 0.2

    async def briefly() -> None:
        task = asyncio.ensure_future(recal.run(Down()))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(briefly())
    assert recal.errors >= 1 and "store down" in (recal.last_error or "")
    assert recal.state["smart"] is before


def test_exploration_is_a_bounded_deterministic_share_to_the_least_observed_candidate() -> None:
    recal = Recalibration({"smart": spec(explore=0.05)})
    recal.state["smart"].observed = {("strong", "a"): 40.0, ("cheap", "a"): 2.0, ("strong", "b"): 1.0}
    picks = [recal.explore("smart", f"req_{i}", "a") for i in range(20_000)]
    share = sum(p is not None for p in picks) / len(picks)
    assert 0.04 < share < 0.06
    assert set(picks) == {None, "cheap@sim"}
    assert picks == [recal.explore("smart", f"req_{i}", "a") for i in range(20_000)]
    # Task b: cheap has no feedback at all, strong one: cheap; an unseen task: a tie, split by the hash.
    assert {recal.explore("smart", f"req_{i}", "b") for i in range(2000)} == {None, "cheap@sim"}
    assert {recal.explore("smart", f"req_{i}", "c") for i in range(2000)} == {None, "cheap@sim", "strong@sim"}
    assert Recalibration({"smart": spec(explore=0.0)}).explore("smart", "req_1", "a") is None
    assert 0.0 <= unit_hash("x") < 1.0
    # A key that may reach one candidate only explores nothing (never a deployment outside its scope).
    only_strong = frozenset({"strong@sim"})
    assert {recal.explore("smart", f"req_{i}", "a", only_strong) for i in range(2000)} == {None}
    both = frozenset({"strong@sim", "cheap@sim"})
    assert [recal.explore("smart", f"req_{i}", "a", both) for i in range(2000)] == picks[:2000]


def test_the_fold_counts_what_it_observed_per_model_and_task() -> None:
    state = fold(spec(max_per_key=1e6), honest(300), now=10_000.0)
    assert state.observed[("cheap", "a")] == pytest.approx(150) and state.observed[("strong", None)] == 150


def test_adjusted_predictions_and_the_shifted_knob() -> None:
    recal = Recalibration({"smart": spec()})
    recal.state["smart"].corrections = {("cheap", "a"): 0.4, ("cheap", None): 0.1}
    recal.state["smart"].knob_shift = 0.05
    assert recal.adjusted("smart", "a", {"cheap": 0.3, "strong": 0.9}) == pytest.approx({"cheap": 0.7, "strong": 0.9})
    assert recal.adjusted("smart", "b", {"cheap": 0.95})["cheap"] == 1.0  # the route-wide one, clipped
    assert recal.knobs("smart") == (pytest.approx(0.25), None)
    assert recal.snapshot()["routes"]["smart"]["lambda"] == pytest.approx(0.25)  # type: ignore[index]


def test_a_threshold_knob_moves_the_other_way_and_stays_a_probability() -> None:
    recal = Recalibration({"smart": RouteSpec("smart", settings(), ROUTES, target=0.9, threshold=0.7)})
    recal.state["smart"].knob_shift = 0.2  # quality to spare: a lower floor, so cheaper
    assert recal.knobs("smart") == (None, pytest.approx(0.5))
    recal.specs["smart"] = RouteSpec("smart", settings(), ROUTES, target=0.9, threshold=0.05)
    assert recal.knobs("smart") == (None, 0.0)
    assert Recalibration({}).knobs("smart") == (None, None)


CONFIG = """
deployments:
  - {name: cheap@sim, provider: openai, model: m1, router_model: cheap, price: {input: 0.1, output: 0.1}}
  - {name: strong@sim, provider: openai, model: m2, router_model: strong, price: {input: 5, output: 5}}
models:
  smart:
    strategy: learned
    candidates: [cheap@sim, strong@sim]
    recalibrate: {explore: 0.1, target: 0.9}
"""


def test_config_is_typed_and_needs_a_learned_model() -> None:
    group = parse_config(CONFIG).models["smart"]
    assert group.recalibrate is not None and group.recalibrate.explore == 0.1 and group.recalibrate.prior == 20.0
    with pytest.raises(ConfigError, match="explore"):
        parse_config(CONFIG.replace("explore: 0.1", "explore: 0.9"))
    with pytest.raises(ConfigError, match="needs `strategy: learned`"):
        parse_config(CONFIG.replace("strategy: learned", "strategy: cost"))


class FakePredictor:
    models = ["cheap", "strong"]
    calibration = [{"models": ["cheap", "strong"], "mode": "lambda", "knob": 0.2, "target": 0.95, "best_quality": 0.96}]

    def predict(self, prompt: str) -> dict[str, float]:
        return {"cheap": 0.3, "strong": 0.95}

    def operating_point(self, models, mode=None):
        return next((c for c in self.calibration if mode in (None, c["mode"])), None)


def test_the_gateway_plans_on_corrected_quality_and_explores_by_request_id() -> None:
    config = parse_config(CONFIG)
    intel = Intelligence.from_config(config)
    intel.learned = FakePredictor()  # type: ignore[assignment]
    intel._check_mapping()
    recal = intel.recalibration
    assert recal is not None and recal.specs["smart"].target == 0.9 and recal.specs["smart"].lam == 0.2
    recal.state["smart"].corrections = {("cheap", "a"): 0.6}
    recal.state["smart"].observed = {("cheap", "a"): 100.0, ("strong", "a"): 3.0}
    deps = {d.name: d for d in config.deployments}
    seen = {}
    for i in range(200):
        insight = Insight(predicted=FakePredictor().predict(""), default_lambda=0.2)
        intel._recalibrate("smart", "a", insight, f"req_{i}")
        quality = intel.quality_fn(insight)
        assert quality is not None and insight.predicted == {"cheap": 0.3, "strong": 0.95}  # the router's own
        seen[i] = (insight.explore, quality(deps["cheap@sim"]), quality(deps["strong@sim"]))
    explored = [i for i, (e, _, _) in seen.items() if e is not None]
    assert 5 <= len(explored) <= 40
    assert all(seen[i][0] == "strong@sim" and seen[i][1:] == (0.0, 1.0) for i in explored)  # the least observed
    plain = [v for v in seen.values() if v[0] is None]
    assert all(v[1:] == pytest.approx((0.9, 0.95)) for v in plain)
    assert [seen[i][0] for i in range(200)] == [recal.explore("smart", f"req_{i}", "a") for i in range(200)]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_real_stores_give_the_fold_its_rows_and_replicas_agree(kind: str, tmp_path: Path) -> None:
    """Spend rows and feedback written to a real store; two replicas (refreshing at different moments of the
    same period) read them back through `feedback_samples` and fold the same state as the rows in memory."""
    from modelyard.accounting.spend import SpendRecord
    from modelyard.state.feedback import FeedbackRecord
    from tests.unit.state.conftest import make_store

    rows = honest(300, start=1_700_000_000.0, dt=0.5)
    store = await make_store(kind, tmp_path)
    try:
        await store.write_spend(
            [
                SpendRecord(
                    id=s.request_id,
                    at=s.at - 1,
                    model="smart",
                    deployment=s.deployment or "",
                    key_id=s.key_id,
                    task=s.task,
                    predicted=s.predicted,
                )
                for s in rows
            ]
        )
        feedback = [
            FeedbackRecord(id=s.feedback_id, request_id=s.request_id, at=s.at, score=s.score, source="key", key_id="k1")
            for s in rows
        ]
        await store.write_feedback(feedback[::-1])  # in any order
        now = rows[-1].at + 30
        a = Recalibration({"smart": spec(window_s=900.0)}, clock=lambda: now)
        b = Recalibration({"smart": spec(window_s=900.0)}, clock=lambda: now + 5)
        await a.refresh(store)
        await b.refresh(store)
    finally:
        drop = getattr(store, "drop", None)
        if drop is not None:
            await drop()
        await store.close()
    assert a.state["smart"].samples == 300
    assert a.state["smart"] == b.state["smart"]
    assert a.state["smart"].corrections == fold(spec(window_s=900.0), rows, now).corrections
