"""Online recalibration of `learned` routes from feedback (`POST /v1/feedback`; `recalibrate:` on a model).

The trained router's P(good) per model is a belief; feedback is evidence. Per route (model group) this keeps:

- a **quality correction** per (router model, task): the shrunk, weighted mean of `score - predicted` over the
  window's feedback (a task's mean shrunk towards the route-wide one, that one towards zero), bounded by
  `max_correction`; the learned strategy sees `predicted + correction`;
- a **knob shift**: the route's estimated quality (the weighted mean feedback score) against its target; when
  the target lies outside the estimate's 90% interval, λ moves by `knob_step` (up: cheaper, when quality is to
  spare; down when it is short), a threshold knob the other way, within `max_knob_shift`;
- **exploration**: a share (`explore`) of the route's requests, chosen by a hash of the request id, go to a
  candidate the router rates below its best, so an under-rated model keeps getting the feedback that can
  correct it.

Steering is bounded: each correction and the knob move at most `max_step` / `knob_step` per period; one key
counts for at most `max_per_key` samples per route in the window (its feedback is down-weighted beyond:
one tenant cannot steer a shared route), admin feedback counts fully.

Where the state lives: nowhere but the store's feedback rows. Every replica re-reads them every `refresh_s`
(`Store.feedback_samples`, ordered by (at, id), deduplicated by feedback id) and folds them from scratch,
period by period on the data's own clock (periods of `period_s` aligned to the epoch; only closed periods
count; a restart folds the periods of the last `window_s`): the same rows give the same state on every
replica, whenever it refreshes within a period. No table of its own, nothing to migrate.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from modelyard.config.model import RecalibrateSettings
from modelyard.state.feedback import FeedbackSample

log = logging.getLogger("modelyard.recalibration")

#: Feedback rows read per store call, and kept at most per refresh and route (the newest; the fold is linear
#: in them). Rows are read lean (no embedding or text), so 100,000 of them are a few tens of MB at most.
PAGE = 10_000
MAX_ROWS = 100_000
#: The 90% interval's z: the knob moves only when the target lies outside it (noise does not move it).
Z90 = 1.645
#: Changes smaller than this are not logged (rounding of a fold, not a decision).
LOG_EPSILON = 1e-4
_ADMIN = ""  # the bucket of admin feedback (source "admin"): trusted, not capped
#: The bucket of feedback without a key (a gateway in open mode): every anonymous caller shares it, capped
#: like one key, so no caller steers a route by not presenting a key. Not a possible key id.
_ANONYMOUS = "\x00anonymous"


class FeedbackReader(Protocol):
    """The store's side (state/store.py)."""

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None, lean: bool = False
    ) -> list[FeedbackSample]: ...


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One recalibrated route: its settings, its candidates' router models and its calibrated knob."""

    route: str
    settings: RecalibrateSettings
    #: deployment name -> the router model it is known by (only those the router knows).
    router_models: Mapping[str, str]
    target: float | None = None
    lam: float | None = None
    threshold: float | None = None


@dataclass(slots=True)
class RouteState:
    """What feedback changed for one route: corrections per (router model, task or None), the knob's shift."""

    corrections: dict[tuple[str, str | None], float] = field(default_factory=dict)
    #: The weight of feedback on each (router model, task or None) in the window: exploration goes to the least.
    observed: dict[tuple[str, str | None], float] = field(default_factory=dict)
    knob_shift: float = 0.0
    quality: float | None = None  # estimated: weighted mean feedback score in the last folded window
    weight: float = 0.0  # the effective number of samples behind `quality`
    samples: int = 0  # feedback rows read
    periods: int = 0  # periods folded that had feedback


@dataclass(frozen=True, slots=True)
class Change:
    """One logged change: `what` moved from `old` to `new` because of `why`, on `n` samples."""

    route: str
    what: str
    old: float
    new: float
    why: str
    n: float


def _step(old: float, target: float, max_step: float) -> float:
    return old + max(-max_step, min(max_step, target - old))


def _clip(value: float, bound: float) -> float:
    return max(-bound, min(bound, value))


class _Window:
    """The sliding window's sums, per key, so each period's estimate is O(keys x groups), not O(rows)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.score: dict[str, float] = defaultdict(float)
        #: (key, router model, task) -> [n, sum of score - predicted]
        self.resid: dict[tuple[str, str, str | None], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, s: FeedbackSample, rm: str | None, sign: int) -> None:
        key = _ADMIN if s.source == "admin" else (s.key_id if s.key_id is not None else _ANONYMOUS)
        self.count[key] += sign
        self.score[key] += sign * s.score
        if rm is not None and s.predicted is not None:
            cell = self.resid[(key, rm, s.task)]
            cell[0] += sign
            cell[1] += sign * (s.score - s.predicted)

    def weights(self, cap: float) -> dict[str, float]:
        return {k: 1.0 if k == _ADMIN else min(1.0, cap / c) for k, c in self.count.items() if c > 0}


def fold(spec: RouteSpec, samples: Sequence[FeedbackSample], now: float, start: RouteState | None = None) -> RouteState:
    """The route's state after the closed periods of `samples` (sorted by (at, id), deduplicated): pure and
    deterministic, so every replica folding the same rows gets the same state."""
    cfg = spec.settings
    state = RouteState(
        corrections=dict(start.corrections) if start else {}, knob_shift=start.knob_shift if start else 0.0
    )
    state.samples = len(samples)
    period = cfg.period_s
    closed_before = math.floor(now / period) * period
    periods = sorted({math.floor(s.at / period) for s in samples if s.at < closed_before})
    window = _Window()
    head = tail = 0
    for k in periods:
        end = (k + 1) * period
        while head < len(samples) and samples[head].at < end:
            window.add(samples[head], spec.router_models.get(samples[head].deployment or ""), +1)
            head += 1
        while tail < head and samples[tail].at < end - cfg.window_s:
            window.add(samples[tail], spec.router_models.get(samples[tail].deployment or ""), -1)
            tail += 1
        _period_step(spec, window, state)
        state.periods += 1
    return state


def _period_step(spec: RouteSpec, window: _Window, state: RouteState) -> None:
    """One period: estimate, then move corrections and knob towards it by at most a step."""
    cfg = spec.settings
    w = window.weights(cfg.max_per_key)
    n_eff = sum(w[k] * window.count[k] for k in w)
    state.weight = n_eff
    state.quality = sum(w[k] * window.score[k] for k in w) / n_eff if n_eff > 0 else None
    per_model: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    per_task: dict[tuple[str, str | None], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (key, rm, task), (n, r) in window.resid.items():
        wk = w.get(key, 0.0)
        if n <= 0 or wk <= 0:
            continue
        per_model[rm][0] += wk * n
        per_model[rm][1] += wk * r
        if task is not None:
            per_task[(rm, task)][0] += wk * n
            per_task[(rm, task)][1] += wk * r
    state.observed = {(rm, None): n for rm, (n, _) in per_model.items()}
    state.observed.update({cell: n for cell, (n, _) in per_task.items()})
    pooled = {rm: r / (n + cfg.prior) if n + cfg.prior > 0 else 0.0 for rm, (n, r) in per_model.items()}
    targets: dict[tuple[str, str | None], float] = {(rm, None): v for rm, v in pooled.items()}
    for (rm, task), (n, r) in per_task.items():
        targets[(rm, task)] = (r + cfg.prior * pooled[rm]) / (n + cfg.prior) if n + cfg.prior > 0 else pooled[rm]
    for cell in set(state.corrections) - set(targets):  # no feedback left in the window: back towards the pool
        targets[cell] = pooled.get(cell[0], 0.0) if cell[1] is not None else 0.0
    for cell, target in targets.items():
        old = state.corrections.get(cell, 0.0)
        state.corrections[cell] = _step(old, _clip(target, cfg.max_correction), cfg.max_step)
    if spec.target is not None and state.quality is not None and n_eff >= cfg.min_samples:
        q = state.quality
        half = Z90 * math.sqrt(max(q * (1 - q), 0.01) / n_eff)
        if q < spec.target - half:
            state.knob_shift = _clip(state.knob_shift - cfg.knob_step, cfg.max_knob_shift)
        elif q > spec.target + half:
            state.knob_shift = _clip(state.knob_shift + cfg.knob_step, cfg.max_knob_shift)


def changes(route: str, old: RouteState, new: RouteState, target: float | None) -> list[Change]:
    """What moved between two states of a route, one `Change` each."""
    out = []
    for cell in sorted(set(old.corrections) | set(new.corrections), key=lambda c: (c[0], c[1] or "")):
        a, b = old.corrections.get(cell, 0.0), new.corrections.get(cell, 0.0)
        if abs(a - b) > LOG_EPSILON:
            rm, task = cell
            what = f"correction[{rm}{'/' + task if task else ''}]"
            out.append(Change(route, what, a, b, "feedback score - predicted", new.weight))
    if abs(old.knob_shift - new.knob_shift) > LOG_EPSILON:
        q = "none" if new.quality is None else f"{new.quality:.3f}"
        why = f"estimated quality {q} vs target {target if target is None else round(target, 3)}"
        out.append(Change(route, "knob_shift", old.knob_shift, new.knob_shift, why, new.weight))
    return out


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from strings: the same request id gets the same draw on every replica."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Recalibration:
    """The recalibrated routes' state (replaced whole on each refresh) and the per-request adjustments."""

    def __init__(self, specs: Mapping[str, RouteSpec], clock: Callable[[], float] = time.time) -> None:
        self.specs = dict(specs)
        self.state: dict[str, RouteState] = {route: RouteState() for route in self.specs}
        self.clock = clock
        self.refreshed_at: float | None = None
        self.errors = 0
        self.last_error: str | None = None

    def __contains__(self, route: str) -> bool:
        return route in self.specs

    @property
    def refresh_s(self) -> float:
        return min((s.settings.refresh_s for s in self.specs.values()), default=30.0)

    # ------------------------------------------------------------------ per request (pure reads)

    def adjusted(self, route: str, task: str | None, predicted: Mapping[str, float]) -> dict[str, float]:
        """The router's P(good) per router model with this route's corrections added (clipped to [0, 1])."""
        state = self.state.get(route)
        if state is None or not state.corrections:
            return dict(predicted)
        get = state.corrections.get
        out = {}
        for rm, p in predicted.items():
            c = get((rm, task)) if task is not None else None
            if c is None:
                c = get((rm, None), 0.0)
            out[rm] = min(1.0, max(0.0, p + c))
        return out

    def knobs(self, route: str) -> tuple[float | None, float | None]:
        """(λ, threshold) for a route that configures neither: the calibrated knob, shifted."""
        spec, state = self.specs.get(route), self.state.get(route)
        if spec is None or state is None:
            return None, None
        lam = None if spec.lam is None else max(0.0, spec.lam + state.knob_shift)
        threshold = None if spec.threshold is None else min(1.0, max(0.0, spec.threshold - state.knob_shift))
        return lam, threshold

    def explore(
        self, route: str, request_key: str, task: str | None, allowed: frozenset[str] | None = None
    ) -> str | None:
        """The deployment this request explores (a share `explore` of requests, by the request id's hash),
        else None: the candidate with the least feedback in the window for this task (the one the router
        learns least about: at first the one it under-rates, later the one it stopped choosing), among the
        deployments the request's key may reach (`allowed`; None: all)."""
        spec, state = self.specs.get(route), self.state.get(route)
        if spec is None or state is None or spec.settings.explore <= 0.0:
            return None
        reachable = {d: rm for d, rm in spec.router_models.items() if allowed is None or d in allowed}
        if len(reachable) < 2 or unit_hash("explore", route, request_key) >= spec.settings.explore:
            return None
        seen = state.observed
        weights = {dep: seen.get((rm, task), 0.0) for dep, rm in reachable.items()}
        least = min(weights.values())
        tied = sorted(dep for dep, w in weights.items() if w == least)
        return tied[int(unit_hash("pick", route, request_key) * len(tied))]

    # ------------------------------------------------------------------ refresh (every replica)

    async def read(self, store: FeedbackReader, route: str, since: float) -> list[FeedbackSample]:
        """The route's feedback since `since`, ordered by (at, id), each feedback once."""
        seen: set[str] = set()
        rows: deque[FeedbackSample] = deque(maxlen=MAX_ROWS)  # beyond it, the oldest go
        cursor = since
        while True:
            page = await store.feedback_samples(cursor, PAGE, model=route, lean=True)
            fresh = 0
            for s in page:
                if s.feedback_id not in seen and s.model == route:
                    seen.add(s.feedback_id)
                    rows.append(s)
                    fresh += 1
            if len(page) < PAGE or not fresh or page[-1].at <= cursor:
                break
            cursor = page[-1].at
        return sorted(rows, key=lambda s: (s.at, s.feedback_id))

    async def refresh(self, store: FeedbackReader) -> list[Change]:
        """Re-read every route's window of feedback and fold it; the changes, each logged."""
        now = self.clock()
        done: list[Change] = []
        for route, spec in self.specs.items():
            cfg = spec.settings
            first = math.floor((now - cfg.window_s) / cfg.period_s) * cfg.period_s  # aligned: replicas agree
            samples = await self.read(store, route, first - cfg.window_s)
            folded = [s for s in samples if s.at >= first - cfg.window_s]
            new = await asyncio.to_thread(fold, spec, folded, now)  # CPU: off the event loop
            old = self.state.get(route, RouteState())
            moved = changes(route, old, new, spec.target)
            for c in moved:
                log.info("%s: %s %.4f -> %.4f (%s; n=%.1f)", c.route, c.what, c.old, c.new, c.why, c.n)
            self.state[route] = new
            done.extend(moved)
        self.refreshed_at = now
        return done

    async def run(self, store: FeedbackReader) -> None:
        """Refresh forever (a background task); a store error keeps the last state and is retried."""
        while True:
            try:
                await self.refresh(store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store down, a bad row: serve on the last state, try again
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("recalibration refresh failed (keeping the last state): %s", self.last_error)
            await asyncio.sleep(self.refresh_s)

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> dict[str, object]:
        """The state for `GET /admin/recalibration`: estimate vs target per route, corrections, knob."""
        routes = {}
        for route, spec in self.specs.items():
            state = self.state.get(route, RouteState())
            lam, threshold = self.knobs(route)
            routes[route] = {
                "target": spec.target,
                "estimated_quality": state.quality,
                "weight": round(state.weight, 3),
                "samples": state.samples,
                "periods": state.periods,
                "knob_shift": state.knob_shift,
                "lambda": lam,
                "threshold": threshold,
                "explore": spec.settings.explore,
                "corrections": [
                    {
                        "router_model": rm,
                        "task": task,
                        "correction": round(c, 6),
                        "weight": state.observed.get((rm, task)),
                    }
                    for (rm, task), c in sorted(state.corrections.items(), key=lambda i: (i[0][0], i[0][1] or ""))
                ],
            }
        return {
            "object": "recalibration",
            "refreshed_at": self.refreshed_at,
            "errors": self.errors,
            "last_error": self.last_error,
            "routes": routes,
        }


def route_target(settings: RecalibrateSettings, point: Mapping[str, object] | None) -> float | None:
    """The quality a route must keep: `recalibrate.target`, else the calibration's target x best quality."""
    if settings.target is not None:
        return settings.target
    if point is None:
        return None
    target, best = point.get("target"), point.get("best_quality")
    if isinstance(target, int | float) and isinstance(best, int | float):
        return float(target) * float(best)
    return None
