"""Access control on the request path: authenticate → authorise the model → rate limit → reserve budget.

Cheap by construction: a presented key is hashed (SHA-256) and looked up in an in-memory cache of every
key; the store is read only on a cache miss (a key made by another replica since the last refresh) and
unknown hashes are remembered so a flood of bad keys cannot hammer it. Counters live in memory unless
Redis is configured. Nothing is logged or formatted on success.

Open mode: with no master key and no virtual key in the store, anyone may call the gateway. That is said
loudly at start, because it is the right default for a laptop and the wrong one for a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from modelyard.accounting.budgets import (
    Reservation,
    nano_to_usd,
    parse_duration,
    period_bounds,
    period_index,
    usd_to_nano,
)
from modelyard.config.model import KeyLimits
from modelyard.routing.features import RequestFeatures
from modelyard.routing.reach import Scope, dearest_per_token, dearest_units_nano, reached, request_reach
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.errors import GatewayError
from modelyard.state.counters import MAX_NANO, MAX_TOKENS, Ask, Counters
from modelyard.state.key_limits import limits_problem
from modelyard.state.keys import KeyRecord, hash_key, new_key
from modelyard.state.outage import StateUnavailable, StoreGuard, state_unavailable
from modelyard.state.store import Store

if TYPE_CHECKING:
    from modelyard.routing.table import RoutingTable
    from modelyard.server.context import RequestContext
    from modelyard.server.observe import Outcome

log = logging.getLogger("modelyard.access")

MASTER_ID = "master"
_UNKNOWN_CACHE = 10_000
_SCOPE_CACHE = 1_000
#: Output tokens reserved for a deployment with neither `max_output_tokens` nor `context_window` when
#: `access.reserve_output: max_output` is on (set either on the deployment for an exact bound).
UNKNOWN_MAX_OUTPUT = 32_768
_OPEN_BANNER = """
************************************************************************
*  modelyard is running in OPEN MODE: no master key and no virtual     *
*  keys, so ANY client may call it and spend your provider credits.    *
*  Set access.master_key (or MODELYARD_MASTER_KEY) to require keys.    *
************************************************************************"""


ADMIN_ROLE = "admin"
#: With `spend.log_content`, the prompt text kept per request (characters); longer ones end with CUT_MARK.
MAX_LOGGED_CONTENT = 32 * 1024
CUT_MARK = "\n…(cut: spend.log_content keeps the first 32 kB)"


def has_admin_role(metadata: dict[str, str]) -> bool:
    """A key whose metadata says `role: admin` may use the admin API and the dashboard."""
    return (metadata.get("role") or "").strip().lower() == ADMIN_ROLE


@dataclass(slots=True)
class KeyState:
    """A key as the request path needs it: flat fields, budgets in nano-dollars."""

    id: str
    name: str
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_nano: int | None = None
    period_s: float = 30 * 86400.0
    anchor: float = 0.0
    expires_at: float | None = None
    revoked: bool = False
    unlimited: bool = False
    #: The budget period in force (recomputed when `period_end` passes), so a request does no date math.
    period: int = -1
    period_end: float = 0.0
    #: Anthropic pass-through policy from the key's metadata (`anthropic_betas`: comma-separated, replaces
    #: `server.anthropic_betas`; `anthropic_server_tools: allow|deny`); None: the server's setting.
    anthropic_betas: frozenset[str] | None = None
    anthropic_server_tools: bool | None = None
    #: Guardrail sets every request of this key runs (metadata `guardrails: "set1,set2"`, names of the
    #: config's `guardrails:` sets); a request can add checks, never drop these.
    guardrails: tuple[str, ...] = ()
    #: Admission queue (metadata `priority`, `max_priority`, `max_queue_ms`; server/priority.py reads them):
    #: the key's default class, the highest it may ask for, and the longest its requests wait.
    priority: str | None = None
    max_priority: str | None = None
    max_queue_s: float | None = None
    #: Metadata `role: admin`: the admin API and the dashboard accept this key as they accept the master key.
    admin: bool = False

    def current_period(self, now: float) -> int:
        if now >= self.period_end or self.period < 0:
            self.period = period_index(self.anchor, self.period_s, now)
            self.period_end = period_bounds(self.anchor, self.period_s, self.period)[1]
        return self.period

    @property
    def limited(self) -> bool:
        if self.unlimited:
            return False
        return self.rpm is not None or self.tpm is not None or self.budget_nano is not None

    @classmethod
    def from_record(cls, record: KeyRecord) -> KeyState:
        state = cls._from_record(record)
        betas = record.metadata.get("anthropic_betas")
        if betas is not None:
            state.anthropic_betas = frozenset(b.strip() for b in betas.split(",") if b.strip())
        tools = record.metadata.get("anthropic_server_tools")
        if tools is not None:
            state.anthropic_server_tools = tools.strip().lower() in ("allow", "true", "yes", "on")
        sets = record.metadata.get("guardrails")
        if sets:
            state.guardrails = tuple(dict.fromkeys(s.strip() for s in str(sets).split(",") if s.strip()))
        state.priority = (record.metadata.get("priority") or "").strip() or None
        state.max_priority = (record.metadata.get("max_priority") or "").strip() or None
        state.max_queue_s = queue_seconds(record.metadata.get("max_queue_ms"))
        state.admin = has_admin_role(record.metadata)
        return state

    @classmethod
    def _from_record(cls, record: KeyRecord) -> KeyState:
        return cls(
            record.id,
            record.name,
            frozenset(record.models) if record.models is not None else None,
            record.rpm,
            record.tpm,
            usd_to_nano(record.budget_usd) if record.budget_usd is not None else None,
            record.period_s or 30 * 86400.0,
            record.created_at,
            record.expires_at,
            record.revoked_at is not None,
        )

    @classmethod
    def master(cls, limits: KeyLimits, unlimited: bool) -> KeyState:
        return cls(
            MASTER_ID,
            MASTER_ID,
            None,
            limits.rpm,
            limits.tpm,
            usd_to_nano(limits.budget_usd) if limits.budget_usd is not None else None,
            parse_duration(limits.period),
            0.0,
            None,
            False,
            unlimited,
        )


def queue_seconds(value: str | None) -> float | None:
    """A key's `max_queue_ms` metadata in seconds: a finite number of milliseconds > 0 (the admin API
    refuses anything else; a value written to the store by other means that is not one is ignored)."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms / 1000.0 if math.isfinite(ms) and ms > 0 else None


def estimate_prices(table: RoutingTable) -> dict[str, tuple[float, float]]:
    """Per model name (and deployment name): the dearest (input, output) nano-dollars per token it may
    be served at, fallbacks and rule targets included, so a reservation is an upper bound whatever the
    router picks."""
    out = {name: dearest_per_token(table.prices, [name]) for name in table.deployments}
    for name in table.groups:
        out[name] = dearest_per_token(table.prices, reached(table, [name])[1])
    return out


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Access:
    """Keys, limits and budgets for one gateway."""

    def __init__(
        self,
        *,
        store: Store,
        counters: Counters,
        master_key: str | None = None,
        master_limits: KeyLimits | None = None,
        master_unlimited: bool = False,
        prices: dict[str, tuple[float, float]] | None = None,
        refresh_s: float = 30.0,
        capture_content: bool = False,
        clock: Callable[[], float] = time.time,
        table: RoutingTable | None = None,
        reserve_max_output: bool = False,
        unsettled: Callable[[str, float], float] | None = None,
        store_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        #: USD a key has spent since a time that is not in the store yet (the spend writer's spool and queue):
        #: a budget re-seeded after Redis lost it counts it too.
        self.unsettled = unsettled
        #: Every store call from a request or admin path goes through it: bounded, a 503 when the store is down.
        self.store_guard = StoreGuard(store_timeout_s)
        #: The routing table, for what a request may reach (authorisation and the reservation's price).
        self.table = table
        self.reserve_max_output = reserve_max_output
        self._scopes: dict[frozenset[str], Scope] = {}
        self._output_bounds: dict[str, tuple[int, int]] = {}  # per model: (largest fixed cap, largest window)
        self.capture_content = capture_content
        self.counters = counters
        self.prices = prices or {}
        self.refresh_s = refresh_s
        self.clock = clock
        self.master_hash = hash_key(master_key) if master_key else None
        self.master = KeyState.master(master_limits or KeyLimits(), master_unlimited)
        self.open = False
        self._keys: dict[str, KeyState] = {}
        self._by_id: dict[str, str] = {}
        self._unknown: dict[str, None] = {}
        #: Seeds in flight per (key, period): concurrent requests that find the budget unseeded wait for one.
        self._seeding: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._refresher: asyncio.Task[None] | None = None
        #: Counts this process's own key edits: a refresh whose read began before one must not undo it.
        self._edits = 0

    def adopt(self, table: RoutingTable) -> None:
        """A reload: authorisation and reservations read the new routing table and its prices from now on
        (scopes and output bounds computed from the old one are dropped)."""
        self.table = table
        self.prices = estimate_prices(table)
        self._scopes = {}
        self._output_bounds = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.counters.start()
        await self.reload()
        self.open = self.master_hash is None and not self._keys
        if self.open:
            log.warning(_OPEN_BANNER)
        if self.refresh_s > 0:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="modelyard-key-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.counters.close()

    async def reload(self) -> None:
        """Re-read every key (revocations and keys made elsewhere show up; unknown hashes are retried)."""
        edits = self._edits
        records = await self.store_guard.call(self.store.list_keys(include_revoked=True))
        keys: dict[str, KeyState] = {}
        by_id: dict[str, str] = {}
        for record in records:
            problem = limits_problem(record)
            if problem is not None:  # one bad row must not stop the gateway: that key alone is refused
                log.warning("ignoring key %s (%s): %s", record.id, record.name[:64], problem)
                continue
            keys[record.key_hash] = KeyState.from_record(record)
            by_id[record.id] = record.key_hash
        if self.master_hash is not None:
            keys[self.master_hash] = self.master
        if self._edits != edits:  # read before an edit made here meanwhile: keep ours, the next refresh catches up
            return
        self._keys, self._by_id = keys, by_id
        self._unknown.clear()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.reload()
            except Exception as exc:  # keep serving from the cache we have
                log.warning("could not refresh keys from the store: %s", exc)

    # ------------------------------------------------------------------ the request path

    def authenticate_cached(self, credential: str | None) -> KeyState | None:
        if not credential:
            return None
        return self._keys.get(hashlib.sha256(credential.encode()).hexdigest())

    async def authenticate(self, credential: str | None) -> KeyState:
        """The key presented, or a 401 (missing, unknown, revoked, expired)."""
        if not credential:
            raise GatewayError(
                401,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
                code="invalid_api_key",
            )
        digest = hashlib.sha256(credential.encode()).hexdigest()
        key = self._keys.get(digest)
        if key is None:
            key = await self._miss(digest)
        if key is None or key.revoked:
            raise GatewayError(401, f"Incorrect API key provided: {_shown(credential)}.", code="invalid_api_key")
        if key.expires_at is not None and self.clock() >= key.expires_at:
            raise GatewayError(401, f"API key {_shown(credential)} has expired.", code="invalid_api_key")
        return key

    async def _miss(self, digest: str) -> KeyState | None:
        if digest in self._unknown:
            return None
        record = await self.store_guard.call(self.store.find_key(digest))  # store down: 503, not a 500 or a hang
        if record is not None and limits_problem(record) is not None:
            log.warning("ignoring key %s (%s): %s", record.id, record.name[:64], limits_problem(record))
            record = None
        if record is None:
            if len(self._unknown) >= _UNKNOWN_CACHE:
                self._unknown.pop(next(iter(self._unknown)))
            self._unknown[digest] = None
            return None
        key = self._keys[digest] = KeyState.from_record(record)
        self._by_id[record.id] = digest
        return key

    async def admit(
        self, ctx: RequestContext, model: str, features: RequestFeatures, overrides: ModelyardOptions | None = None
    ) -> None:
        """Authorise everything the request may reach and reserve its budget, or raise the client's error.

        The key was authenticated from the headers before the body was read (`Gateway._http`); here the
        parsed request is checked: its model, and every deployment its overrides could lead to.
        """
        if self.capture_content:
            text = features.prompt_text
            # Bounded: the spend log is not a prompt archive (a 10 MB body was a 10 MB row and a 30 MB page).
            ctx.content = text if len(text) <= MAX_LOGGED_CONTENT else text[:MAX_LOGGED_CONTENT] + CUT_MARK
        if self.open:
            return
        key = ctx.key if ctx.key is not None else await self.authenticate(ctx.credential)
        ctx.key_id = key.id
        ctx.key_name = key.name
        features.key_name = key.name
        if self.table is not None:
            model = self.table.resolve(model)  # an alias (`claude-*` → smart) is checked as its target
        if key.models is not None:
            if model not in key.models:
                raise GatewayError(
                    403,
                    f"This key may not use model `{model[:64]}` (allowed: {', '.join(sorted(key.models)) or 'none'}).",
                    type="permission_error",
                    param="model",
                    code="model_not_allowed",
                )
            if self.table is not None:
                scope = self.scope_of(key.models, self.table)
                refused = scope.refusal(overrides)
                if refused is not None:
                    raise GatewayError(
                        403,
                        f"This key may not route there: {refused[1]}.",
                        type="permission_error",
                        param=refused[0],
                        code="model_not_allowed",
                    )
                features.allowed = scope.deployments
        if key.limited:
            ctx.reservation = await self._reserve(key, model, features, overrides)

    def scope_of(self, models: frozenset[str], table: RoutingTable) -> Scope:
        """The deployments a set of allowed models reaches (computed once per distinct set)."""
        scope = self._scopes.get(models)
        if scope is None:
            if len(self._scopes) >= _SCOPE_CACHE:
                self._scopes.clear()
            scope = self._scopes[models] = Scope.of(table, models)
        return scope

    def estimate_nano(
        self, model: str, features: RequestFeatures, overrides: ModelyardOptions | None, output: int
    ) -> int:
        """An upper bound on the request's cost: its prompt and `output` tokens (from `output_tokens`) at the
        dearest deployment it may reach."""
        if self.table is not None and overrides is not None and (overrides.candidates or overrides.fallbacks):
            per_in, per_out = self._dearest(model, overrides, features.allowed)
        else:
            # The model's own reach, priced once at start; for a restricted key it lies inside the key's scope
            # by construction (the scope is what its models reach), so no per-request walk is needed.
            per_in, per_out = self.prices.get(model, (0.0, 0.0))
        estimate = features.prompt_tokens * per_in + output * per_out
        if features.units is not None and self.table is not None:
            reach = request_reach(self.table, model, overrides)
            estimate += dearest_units_nano(
                self.table.prices, reach if features.allowed is None else reach & features.allowed, features.units
            )
        return round(estimate)

    def output_tokens(self, model: str, features: RequestFeatures) -> int:
        """Output tokens to reserve for: the request's cap, else (with `reserve_output: max_output`) the
        largest output any deployment of the model allows, else a typical answer; times `n`."""
        if features.kind != "chat":  # embeddings and the non-chat endpoints: no output tokens (units instead)
            return 0
        cap = features.max_output_tokens
        if cap is None and self.reserve_max_output and self.table is not None:
            cap = self._max_output(model, features.prompt_tokens)
        return features.output_estimate() * max(1, features.choices) if cap is None else cap * max(1, features.choices)

    def _dearest(
        self, model: str, overrides: ModelyardOptions | None, allowed: frozenset[str] | None
    ) -> tuple[float, float]:
        assert self.table is not None
        reach = request_reach(self.table, model, overrides)
        return dearest_per_token(self.table.prices, reach if allowed is None else reach & allowed)

    def _max_output(self, model: str, prompt_tokens: int) -> int:
        """The most any deployment `model` reaches may answer: a fixed cap, or a window less the prompt."""
        bounds = self._output_bounds.get(model)
        if bounds is None:
            assert self.table is not None
            fixed, window = 0, 0
            for name in reached(self.table, [model])[1]:
                dep = self.table.deployments[name]
                if dep.max_output_tokens is not None:
                    fixed = max(fixed, dep.max_output_tokens)
                elif dep.context_window is not None:
                    window = max(window, dep.context_window)
                else:
                    fixed = max(fixed, UNKNOWN_MAX_OUTPUT)
            bounds = (fixed, window)
            if model in self.table.groups or model in self.table.deployments:  # config names only: bounded
                self._output_bounds[model] = bounds
        fixed, window = bounds
        return max(1, fixed, window - prompt_tokens)

    async def _reserve(
        self, key: KeyState, model: str, features: RequestFeatures, overrides: ModelyardOptions | None = None
    ) -> Reservation | None:
        output = self.output_tokens(model, features)
        tokens = min(features.prompt_tokens + output, MAX_TOKENS)
        period = -1
        estimate = 0
        ttl = 86400
        if key.budget_nano is not None:
            now = self.clock()
            period = key.current_period(now)
            ttl = int(key.period_end - now) + 86400
            estimate = min(self.estimate_nano(model, features, overrides, output), MAX_NANO)
        ask = Ask(key.id, key.rpm, key.tpm, tokens, key.budget_nano, period, estimate, ttl, seed_required=True)
        try:
            verdict = await self.counters.admit(ask)
            for _ in range(3):  # the budget has no counters (first use, or Redis lost them): seed, ask again
                if verdict.reason != "unseeded":
                    break
                await self._seed(key, period, ttl)
                verdict = await self.counters.admit(ask)
        except StateUnavailable as exc:
            raise state_unavailable(exc.retry_after) from None
        if not verdict.ok:
            if verdict.reason == "unseeded":  # seeded three times and gone each time: Redis is not keeping it
                raise state_unavailable()
            raise self._refusal(key, verdict.reason, verdict.retry_after, period)
        return verdict.reservation

    async def _seed(self, key: KeyState, period: int, ttl: int) -> None:
        """Start this period's budget in the counters from what the key has spent: the store's spend log plus
        what is not in it yet (`unsettled`: the spend writer's spool and queue). Called whenever the counters
        lack the budget, not once per process, so a Redis restart never resets spending. One seed per key
        and period at a time here (concurrent callers wait); across replicas the counters seed only if absent.
        """
        slot = (key.id, period)
        pending = self._seeding.get(slot)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
            return  # the caller asks again (and seeds itself if that seed failed)
        pending = self._seeding[slot] = asyncio.get_running_loop().create_future()
        start, _ = period_bounds(key.anchor, key.period_s, period)
        try:
            await self.counters.seed_budget(key.id, period, self._spent_since(key.id, start), ttl)
        finally:
            del self._seeding[slot]
            pending.set_result(None)

    def _spent_since(self, key_id: str, start: float) -> Callable[[], Awaitable[int]]:
        """What a key has spent since `start` in nano-dollars, computed when the counters call it: the store's
        spend log plus what is not in it yet (`unsettled`)."""

        async def spent() -> int:
            # The unsettled part first: a record moving into the store meanwhile is counted twice, never missed.
            unsettled = self.unsettled(key_id, start) if self.unsettled is not None else 0.0
            total = await self.store_guard.call(self.store.spent_since(key_id, start)) + unsettled
            return usd_to_nano(total) if 0.0 <= total < MAX_NANO / 1e9 else (0 if not total > 0 else MAX_NANO)

        return spent

    def _refusal(self, key: KeyState, reason: str, retry_after: float, period: int) -> GatewayError:
        if reason == "budget":
            assert key.budget_nano is not None
            _, end = period_bounds(key.anchor, key.period_s, period)
            renews = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return GatewayError(
                429,
                f"You exceeded your current quota: key `{key.name}` has used its "
                f"budget of ${nano_to_usd(key.budget_nano):.2f} for this period "
                f"(renews {renews}).",
                type="insufficient_quota",
                code="insufficient_quota",
            )
        what, limit = (
            ("requests per minute (RPM)", key.rpm) if reason == "rpm" else ("tokens per minute (TPM)", key.tpm)
        )
        wait = _retry_after(retry_after)
        return GatewayError(
            429,
            f"Rate limit reached for key `{key.name}` on {what}: limit {limit}. Please try again in {wait}s.",
            type="requests" if reason == "rpm" else "tokens",
            code="rate_limit_exceeded",
            headers={"Retry-After": wait},
        )

    def settle(self, ctx: RequestContext, outcome: Outcome) -> None:
        """After the answer: the budget is charged what the request cost (0 if it failed before any token)."""
        reservation = ctx.reservation
        if reservation is None:
            return
        ctx.reservation = None
        cost = outcome.cost_usd
        nano = usd_to_nano(cost) if 0.0 <= cost < MAX_NANO / 1e9 else (0 if not cost > 0 else MAX_NANO)
        self.counters.settle(reservation, nano, min(outcome.usage.total, MAX_TOKENS))

    def release(self, ctx: RequestContext) -> None:
        """A request that ended without an outcome (crashed, cancelled): give its reservation back."""
        reservation = ctx.reservation
        if reservation is not None:
            ctx.reservation = None
            self.counters.settle(reservation, 0, 0)

    # ------------------------------------------------------------------ admin

    async def admin_subject(self, credential: str | None) -> str | None:
        """Who may use the admin API and the dashboard with this credential: `master` for the master key, the
        key's id for an active key with `role: admin`, None for anyone else (a missing, unknown, revoked or
        expired key included: the caller answers 401 either way). Never more than one bounded store read."""
        if not credential or self.master_hash is None:
            return None
        if self.is_master(credential):
            return MASTER_ID
        try:
            key = await self.authenticate(credential)
        except GatewayError as error:
            if error.status == 401:
                return None
            raise
        return key.id if key.admin else None

    def is_master(self, credential: str | None) -> bool:
        if not credential or self.master_hash is None:
            return False
        return hashlib.sha256(credential.encode()).hexdigest() == self.master_hash

    async def create_key(self, name: str, **options: object) -> tuple[str, KeyRecord]:
        raw, record = new_key(name, **options)  # type: ignore[arg-type]
        await self.store.create_key(record)
        self._keys[record.key_hash] = KeyState.from_record(record)
        self._by_id[record.id] = record.key_hash
        self._unknown.pop(record.key_hash, None)
        return raw, record

    async def revoke_key(self, key_id: str) -> bool:
        revoked = await self.store.revoke_key(key_id, self.clock())
        digest = self._by_id.get(key_id)
        if digest is not None and digest in self._keys:
            self._keys[digest].revoked = True  # takes effect at once here; other replicas at their refresh
        self._edits += 1
        return revoked

    async def update_key(self, before: KeyRecord, changes: dict[str, object]) -> KeyRecord | None:
        """Write validated `changes` to the key `before` (None: it is gone or revoked) and apply them here at
        once: this replica's KeyState is replaced (models, limits, budget, metadata). When the budget or the
        period was set, the current period's budget is re-seeded in the counters (in Redis: for every
        replica at once) from the spend log, without losing what the period has spent: the same window keeps
        the higher of the counters' and the log's figure; a new period length starts the new window from the
        log. Other replicas read the new record itself at their `access.refresh_s` refresh."""
        record = await self.store_guard.call(self.store.update_key(before.id, dict(changes)))
        if record is None:
            return None
        if limits_problem(record) is not None:  # cannot happen after the admin API's checks; never serve it
            raise GatewayError(500, f"key {record.id} was stored with unusable limits: {limits_problem(record)}")
        state = KeyState.from_record(record)
        old_digest = self._by_id.get(record.id)
        if old_digest is not None and old_digest != record.key_hash:
            self._keys.pop(old_digest, None)
        self._keys[record.key_hash] = state
        self._by_id[record.id] = record.key_hash
        self._unknown.pop(record.key_hash, None)
        self._edits += 1
        if state.budget_nano is not None and ("budget_usd" in changes or "period_s" in changes):
            now = self.clock()
            period = state.current_period(now)
            start, end = period_bounds(state.anchor, state.period_s, period)
            old_period = before.period_s or 30 * 86400.0
            try:
                await self.counters.reseed_budget(
                    state.id,
                    period,
                    self._spent_since(state.id, start),
                    int(end - now) + 86400,
                    replace=old_period != state.period_s,
                )
            except StateUnavailable as exc:
                wait = str(max(1, round(exc.retry_after)))
                raise GatewayError(
                    503,
                    "The key was updated, but its budget could not be re-seeded in the shared counters (they are "
                    f"unreachable): send the same update again in {wait}s.",
                    type="server_error",
                    code="state_unavailable",
                    headers={"Retry-After": wait},
                ) from None
        return record

    async def key_spend(self, record: KeyRecord) -> dict[str, float] | None:
        """Spent and reserved USD in the key's current budget period (None without a usable budget): from the
        counters when they hold the period, else from the store (bounded; a 503 when it is down)."""
        if record.budget_usd is None or limits_problem(record) is not None:
            return None
        key = KeyState.from_record(record)
        period = period_index(key.anchor, key.period_s, self.clock())
        start, end = period_bounds(key.anchor, key.period_s, period)
        spent_usd: float | None = None
        reserved = 0
        try:
            if await self.counters.budget_started(key.id, period):
                spent, reserved = await self.counters.budget_state(key.id, period)
                spent_usd = nano_to_usd(spent)
        except StateUnavailable:  # Redis is down: what the spend log says
            reserved = 0
        if spent_usd is None:
            spent_usd = await self.store_guard.call(self.store.spent_since(key.id, start))
            if self.unsettled is not None:
                spent_usd += self.unsettled(key.id, start)
        return {
            "spent_usd": round(spent_usd, 10),
            "reserved_usd": round(nano_to_usd(reserved), 10),
            "period_start": start,
            "period_end": end,
        }


def credential_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a client presents: `Authorization: Bearer <key>` (OpenAI SDK, anthropic SDK 2.x with a
    bearer token) or `x-api-key: <key>` (anthropic SDK)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
    return api_key


def _shown(credential: str) -> str:
    """Enough of a key to recognise it in an error, never enough to use it."""
    return f"{credential[:8]}…" if len(credential) > 12 else "…"
