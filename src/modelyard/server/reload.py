"""Live reload: re-read the config (and its price table), validate it fully, and swap it in atomically.

Triggers: SIGHUP, `modelyard serve --watch` (server/watch.py), `POST /admin/reload`, and `modelyard reload
--all` over Redis pub/sub (state/redis_reload.py). Every one ends here, one reload at a time.

The swap: the gateway uvicorn holds (the *root*) forwards each request to its current *generation*, a
`Gateway` built from one config. A reload builds the next generation beside it (a new routing table, prices,
guardrails, queue policy; the router's successor keeps the process state of every deployment whose identity
did not change: health, statistics, buckets, connections) and replaces the pointer. A request reads the
pointer once, when it arrives, so requests and streams in flight finish on the generation they started with.
On any error (a bad file, at its `file:line`; a missing embedding stack) nothing is swapped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.config.diff import ConfigChanges, config_changes
from modelyard.config.loader import ConfigError, ConfigErrors
from modelyard.config.model import Config
from modelyard.config.quality_file import results_path
from modelyard.routing.intelligence import Intelligence
from modelyard.server.servable import load_servable, prices_path
from modelyard.state.redis_link import cancel_until_done

if TYPE_CHECKING:
    from modelyard.server.app import Gateway


log = logging.getLogger("modelyard.reload")

#: How long a replaced generation's embedding thread is kept for requests still analysing on it.
RETIRE_AFTER_S = 120.0


@dataclass(slots=True)
class ReloadResult:
    """What one reload did: `ok` and the changes, or the errors (each `file:line: key: message`)."""

    ok: bool
    reason: str
    generation: int
    duration_ms: float
    errors: list[str] = field(default_factory=list)
    changes: ConfigChanges | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "generation": self.generation,
            "duration_ms": round(self.duration_ms, 1),
            "errors": self.errors,
            "changes": self.changes.as_dict() if self.changes is not None else None,
            "summary": self.changes.summary() if self.changes is not None else None,
        }


def watched_files(config: Config) -> list[Path]:
    """The files a config was built from: itself, its price table, its acceptance results."""
    files = [Path(config.source)] if not config.source.startswith("<") else []
    prices = prices_path(config)
    if prices is not None:
        files.append(prices)
    if config.quality_from:
        files.append(results_path(config.quality_from, config.source))
    return files


def _intelligence_shape(config: Config) -> bytes:
    """What the embedding models loaded depend on: when it is unchanged a reload keeps them (and the
    semantic cache's entries), instead of loading them again."""
    groups = {
        name: (group.strategy == "learned", group.semantic_cache, group.recalibrate)
        for name, group in sorted(config.models.items())
        if group.strategy == "learned" or group.semantic_cache is not None
    }
    mapping = sorted((dep.name, dep.router_model or dep.model) for dep in config.deployments)
    return msgspec.json.encode([groups, config.semantic, config.routing.learned_router, mapping], order="sorted")


async def share_semantic_cache(intelligence: Intelligence, config: Config) -> None:
    """With Redis, a semantic-cache entry stored by one replica is a hit on all (state/redis_semantic.py)."""
    state = config.state
    if state.redis_url and state.shared_semantic_cache:
        await intelligence.start_sharing(state.redis_url, state.prefix, state.redis_timeout_s)


async def _retire(intelligence: Intelligence) -> None:
    """A replaced generation's embedding models: kept for requests still analysing on them, then released
    (at once when the process stops first: the wait is cancelled, the release still runs)."""
    try:
        await asyncio.sleep(RETIRE_AFTER_S)
    finally:
        await intelligence.close_sharing()
        intelligence.close()


class Reloader:
    """Reloads one gateway process's config; results are counted for /metrics."""

    def __init__(self, root: Gateway) -> None:
        self.root = root
        self.generation = 0
        self.ok = 0
        self.failed = 0
        self.last: ReloadResult | None = None
        self.last_ok_at = time.time()
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """The process stops: replaced generations' embedding models are released now."""
        await cancel_until_done(self._retiring)

    @property
    def path(self) -> Path | None:
        source = self.root.current.config.source
        return None if source.startswith("<") else Path(source)

    async def reload(self, reason: str) -> ReloadResult:
        async with self._lock:
            started = time.perf_counter()
            try:
                result = await self._reload(reason, started)
            except Exception as exc:  # the old generation keeps serving whatever went wrong
                log.exception("reload (%s) failed; the old config stays", reason)
                result = self._failed(reason, started, [f"{type(exc).__name__}: {exc}"])
            self.last = result
            return result

    def _failed(self, reason: str, started: float, errors: list[str]) -> ReloadResult:
        self.failed += 1
        for line in errors:
            log.error("reload (%s) refused, the old config stays: %s", reason, line)
        return ReloadResult(False, reason, self.generation, (time.perf_counter() - started) * 1000, errors)

    async def _reload(self, reason: str, started: float) -> ReloadResult:
        path = self.path
        if path is None:
            return self._failed(reason, started, ["this gateway's config was not read from a file"])
        try:
            config, prices = await asyncio.to_thread(load_servable, path)
        except ConfigError as exc:
            errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            return self._failed(reason, started, [str(error) for error in errors])
        root = self.root
        old = root.current
        router = old.router.successor(config, resolve_price=prices.resolve)
        changes = config_changes(old.config, config, old.router.table.prices, router.table.prices)
        intelligence = old.intelligence
        if _intelligence_shape(old.config) != _intelligence_shape(config):
            intelligence = Intelligence.from_config(config)
            if intelligence.needed:
                await asyncio.to_thread(intelligence.start)
                await share_semantic_cache(intelligence, config)
                if root.services is not None:
                    intelligence.start_recalibration(root.services.store)  # a fold of the store: no state moves
        else:
            intelligence.config = config
        generation = type(root)(
            config,
            router=router,
            observer=root.observer,
            services=root.services,
            intelligence=intelligence,
            root=root,
        )
        if root.services is not None:
            root.services.adopt(router)
        root.current = generation
        if intelligence is not old.intelligence:
            retiring = asyncio.get_running_loop().create_task(_retire(old.intelligence))
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)
        self.generation += 1
        self.ok += 1
        self.last_ok_at = time.time()
        access = root.access
        if access is not None:
            try:
                await access.reload()  # the key cache, re-read (a revocation made elsewhere shows at once)
            except Exception as exc:
                log.warning("reload: keys not re-read (%s); they are refreshed every access.refresh_s", exc)
        result = ReloadResult(True, reason, self.generation, (time.perf_counter() - started) * 1000, changes=changes)
        log.warning("config reloaded (%s, generation %d): %s", reason, self.generation, changes.summary())
        return result
