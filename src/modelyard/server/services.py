"""The services around the router that money and access need, built from the config in one place.

store (keys + spend log) → access (keys, limits, budgets) → spend writer (spool + store), metrics, tracing
(observers).
`Gateway` gets them as one object: it delegates `admit` to `access`, settles reservations when a request
ends, registers `routes()` and starts/stops everything with its lifespan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.accounting.price_table import PriceTable, unpriced
from modelyard.accounting.spend import SpendRecord, SpendWriter
from modelyard.config.model import Config, SpendSettings
from modelyard.routing.attempts import attempts_header
from modelyard.routing.router import Router
from modelyard.routing.trace import attempts_json, route_json
from modelyard.server import admin
from modelyard.server.access import Access, estimate_prices
from modelyard.server.admin_routes import AdminRoutes, admin_routes
from modelyard.server.context import learning_fields
from modelyard.server.http import Headers, Send, send_json
from modelyard.server.metrics import Metrics, metrics_endpoint
from modelyard.server.observe import FanOut, NullObserver, Observer, Outcome
from modelyard.server.response_cache import ResponseCache, build_response_cache
from modelyard.server.servable import price_table
from modelyard.server.ui.app import PREFIX as UI_PREFIX
from modelyard.server.ui.app import UiApp
from modelyard.server.ui.pages import build as build_ui
from modelyard.state.counters import Counters, MemoryCounters
from modelyard.state.store import Store, open_store, sqlite_path

if TYPE_CHECKING:
    from modelyard.server.context import ErrorWriter, Handler, RequestContext

log = logging.getLogger("modelyard.server")

MASTER_KEY_ENV = "MODELYARD_MASTER_KEY"


async def _json_error(send: Send, status: int, body: dict[str, Any], headers: Headers) -> None:
    await send_json(send, status, body, headers)


def spend_record(outcome: Outcome) -> SpendRecord:
    """The spend log's row for one request (built when the request commits it to the spool: a few µs), with
    its routing decision and its attempts as bounded JSON (routing/trace.py)."""
    ctx = outcome.ctx
    usage = outcome.usage
    records = outcome.records
    plan = ctx.plan
    task, predicted, embedding = learning_fields(ctx, outcome.deployment)
    return SpendRecord(
        id=ctx.request_id,
        at=outcome.at,
        key_id=ctx.key_id,
        key_name=ctx.key_name,
        model=ctx.requested_model,
        deployment=outcome.deployment,
        provider=outcome.provider,
        endpoint=ctx.endpoint,
        attempts=len(records),
        attempt_log=attempts_header(records) if records else "",
        prompt_tokens=usage.prompt,
        completion_tokens=usage.completion,
        cached_tokens=usage.cached,
        cache_write_tokens=usage.cache_write,
        reasoning_tokens=usage.reasoning,
        cost_usd=outcome.cost_usd,
        latency_ms=outcome.latency_ms,
        ttft_ms=outcome.ttft_ms,
        status=outcome.status,
        error_kind=outcome.error_kind,
        content=ctx.content,
        guardrails=outcome.guards.summary() if outcome.guards is not None else None,
        route=route_json(plan) if plan is not None else None,
        attempt_detail=attempts_json(records, _request_start(ctx)) if records else None,
        task=task,
        predicted=predicted,
        embedding=embedding,
    )


def _request_start(ctx: RequestContext) -> float:
    """When the request started, on the executor's clock (its attempts' `started` are on it; the context's
    `started` is on time.perf_counter, which need not be the same clock): both read now, the elapsed time
    taken off."""
    router = ctx.gateway.router
    clock = router.executor.clock if router.started else time.monotonic  # closed after a reload: the default
    return clock() - (time.perf_counter() - ctx.started)


@dataclass(slots=True)
class Services:
    router: Router
    store: Store
    access: Access | None = None
    spend: SpendWriter | None = None
    metrics: Metrics | None = None
    observers: list[Any] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)
    #: The exact-match response cache (one per process: a reload keeps it).
    response_cache: ResponseCache | None = None
    #: The dashboard (`/ui`, server/ui/): built when the config enables it; `ui.enabled` is read per request.
    ui: UiApp | None = None
    #: The admin API's endpoints beyond admin.py's own (server/admin_routes.py).
    admin: AdminRoutes = field(default_factory=admin_routes)

    def observer(self, base: Observer | None = None) -> Observer:
        """The gateway's observer: `base` (failure logging by default) plus ours."""
        return FanOut([base or NullObserver(), *self.observers])

    def routes(self) -> dict[tuple[str, str], tuple[Handler, ErrorWriter]]:
        routes: dict[tuple[str, str], tuple[Handler, ErrorWriter]] = {
            ("POST", admin.KEYS_PATH): (admin.create_key, _json_error),
            ("GET", admin.KEYS_PATH): (admin.list_keys, _json_error),
            ("GET", "/admin/spend"): (admin.spend, _json_error),
            ("GET", admin.QUEUES_PATH): (admin.queues, _json_error),
            ("POST", admin.RELOAD_PATH): (admin.reload, _json_error),
            ("GET", admin.RELOAD_PATH): (admin.last_reload, _json_error),
        }
        if self.metrics is not None:
            routes[("GET", "/metrics")] = (metrics_endpoint, _json_error)
        for path_key, handler in self.admin.exact.items():
            routes[path_key] = (handler, _json_error)
        if self.ui is not None:
            routes.update(self.ui.routes(_json_error))
        return routes

    def match(self, method: str, path: str) -> tuple[Handler, ErrorWriter] | None:
        """Routes with a path parameter (only `DELETE /admin/keys/{id}`); called on exact-route misses."""
        if method == "DELETE" and path.startswith(admin.KEYS_PATH + "/") and path.count("/") == 3:
            return admin.revoke_key, _json_error
        if self.ui is not None and path.startswith(UI_PREFIX):
            return self.ui.match(method, path, _json_error)
        handler = self.admin.match(method, path)
        return (handler, _json_error) if handler is not None else None

    def adopt(self, router: Router) -> None:
        """A reload: access checks, metrics and the admin API read the new router from now on; the store,
        the spend writer, the key counters and the response cache carry on unchanged."""
        self.router = router
        if self.access is not None:
            self.access.adopt(router.table)
        if self.metrics is not None:
            self.metrics.adopt(router)
        self.unpriced = unpriced(router.config.deployments, router.table.prices)
        if self.metrics is not None:
            self.metrics.unpriced = list(self.unpriced)
        self._warn_unpriced()

    def _warn_unpriced(self) -> None:
        for name in self.unpriced:
            dep = self.router.config.deployment(name)
            log.warning(
                "price unknown for deployment %s (model %s): its cost is counted as 0 and it shows "
                "in modelyard_price_unknown; set `price:` on it in the config",
                name,
                dep.model if dep else "?",
            )

    async def start(self) -> None:
        await self.store.open()
        if self.response_cache is not None:
            await self.response_cache.start()
        if self.access is not None:
            await self.access.start()
        if self.spend is not None:
            await self.spend.start()  # replays what a crashed process left in the spool
        self._warn_unpriced()

    async def close(self) -> None:
        if self.spend is not None:
            await self.spend.close()  # after the last request, before the store goes
        if self.access is not None:
            await self.access.close()
        if self.response_cache is not None:
            await self.response_cache.close()
        await self.store.close()


def spool_directory(spend: SpendSettings, dsn: str | None) -> Path | None:
    """Where the spend spool lives: `spend.spool_dir`, else beside the SQLite file, else (PostgreSQL) one directory
    per DSN under the user's state directory; None without a spool or for an in-memory store (whose rows die
    with the process anyway)."""
    if not spend.spool:
        return None
    if spend.spool_dir:
        return Path(spend.spool_dir).expanduser()
    if not dsn:
        return None
    if dsn.startswith(("postgres://", "postgresql://")):
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "modelyard" / "spool" / hashlib.sha256(dsn.encode()).hexdigest()[:16]
    path = sqlite_path(dsn)
    return None if path == ":memory:" else Path(f"{path}.spool")


def master_key(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """access.master_key, else server.master_key, else $MODELYARD_MASTER_KEY."""
    environ = os.environ if env is None else env
    return config.access.master_key or config.server.master_key or environ.get(MASTER_KEY_ENV) or None


def build_counters(config: Config) -> Counters:
    if config.state.redis_url:
        from modelyard.state.redis_counters import RedisCounters

        state = config.state
        return RedisCounters(
            config.state.redis_url,
            prefix=state.prefix,
            on_unavailable=state.on_unavailable,
            timeout_s=state.redis_timeout_s,
            max_pending=state.max_pending_settlements,
        )
    return MemoryCounters()


def build_router(config: Config, prices: PriceTable | None = None) -> Router:
    """A router whose prices come from the config (`price:`), else its `prices_from:` file, else the shipped
    price table."""
    table = prices or price_table(config)
    return Router(config, resolve_price=table.resolve)


def build_services(
    config: Config,
    router: Router | None = None,
    *,
    store: Store | None = None,
    counters: Counters | None = None,
    env: Mapping[str, str] | None = None,
) -> Services:
    """Everything the config asks for; `store`/`counters` may be injected (tests, benchmarks)."""
    router = router or build_router(config)
    spend_cfg = config.spend
    dsn = config.access.keys_store or spend_cfg.store
    store = store or open_store(dsn, sqlite_inserts=spend_cfg.sqlite_inserts, memory_rows=spend_cfg.memory_rows)
    if spend_cfg.store is None and config.access.keys_store is None:
        log.warning(
            "no spend.store configured: keys and the spend log are kept in memory only (the log: the newest "
            "%d requests, spend.memory_rows)",
            spend_cfg.memory_rows,
        )
    missing = unpriced(config.deployments, router.table.prices)
    services = Services(router=router, store=store, unpriced=missing, response_cache=build_response_cache(config))
    access_cfg = config.access
    services.access = Access(
        store=store,
        counters=counters or build_counters(config),
        master_key=master_key(config, env),
        master_limits=access_cfg.master_limits,
        master_unlimited=access_cfg.master_unlimited,
        prices=estimate_prices(router.table),
        refresh_s=access_cfg.refresh_s,
        capture_content=spend_cfg.log_content,
        table=router.table,
        reserve_max_output=access_cfg.reserve_output == "max_output",
        store_timeout_s=config.state.store_timeout_s,
    )
    if spend_cfg.enabled:
        # Not an observer: RequestContext commits each authenticated request's record to the spool before
        # the response's last byte (RequestContext.commit), and the writer drains the spool into the store.
        services.spend = SpendWriter(
            store,
            convert=spend_record,
            batch_size=spend_cfg.batch_size,
            max_queue=spend_cfg.max_queue,
            flush_interval_s=spend_cfg.flush_interval_s,
            spool_dir=spool_directory(spend_cfg, dsn),
            segment_bytes=spend_cfg.spool_segment_bytes,
        )
        services.access.unsettled = services.spend.pending_cost  # a re-seeded budget counts the unwritten spend
    services.ui = build_ui(config.ui, services.access) if config.ui.enabled else None
    services.metrics = Metrics(router, spend=services.spend, unpriced=services.unpriced)
    services.metrics.counters = services.access.counters  # modelyard_state_unavailable
    services.observers.append(services.metrics)
    if config.tracing.enabled:
        from modelyard.server.tracing import Tracing

        services.observers.append(Tracing(service_name=config.tracing.service_name))
    return services
