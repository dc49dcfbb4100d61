"""Deployment health shared between replicas through Redis: breaker verdicts, the half-open probe, and latency
statistics, so N replicas discover an outage once, not N times.

No Redis call is made on the request path. Requests read and write the local `HealthTracker`
(routing/health.py) as without sharing; one background task per replica syncs every `sync_s` seconds (the
staleness bound) and at once when the tracker reports a local breaker transition (its listener only records
the verdict and sets an event).

What is shared, and how:

- **Breaker verdicts.** One hash `{prefix}:health:breakers`, a field per deployment name holding JSON
  `{"s": "open"|"closed", "u": open-until (Redis clock, s), "e": epoch, "r": replica}`. A verdict changes
  only through one Lua script, atomically: a local *trip* (closed -> open) is written when the stored verdict
  is not open (else this replica adopts the stored one: the first opener's open-until wins); a *probe result*
  (closed, or open again with a new open-until) is written only for the epoch its probe was won in (a failed
  probe taken locally during an outage also opens a verdict that is not open). Every
  write takes a new epoch, `max(epoch + 1, Redis time in ms)`, so epochs only grow, even after Redis lost
  its data. Each write is PUBLISHed on `{prefix}:health:events`; the other replicas apply it on receipt
  (about one round trip) and also read the hash on every sync (the bound when a message is lost). Times
  travel as "open for so many more seconds" against Redis's own clock, so replicas' clocks never meet.
- **The probe.** With sharing on, a deployment whose cooldown has passed stays open locally
  (`HealthTracker.shared`). The sync task then tries `SET {prefix}:health:probe:<name>:<epoch> NX PX
  probe_ttl_s` once for that epoch; the one replica that wins lets exactly one request through (half-open),
  the others stay open until the verdict arrives: closed (close) or open again (a new epoch, a new
  open-until, the next probe key). A loser tries the same epoch again only after the key's TTL, which also
  frees a probe whose winner died or had no traffic; while the winner's probe request runs, each sync extends
  the key's TTL, so a slow probe does not let a second replica in.
- **Latency statistics.** Each replica writes its own EWMAs (total, TTFT), its own p95 and its recent sample
  count (decayed, half-life 30 s) per deployment into the hash `{prefix}:health:stats` under its replica id,
  stamped with Redis time; each sync reads the others' (entries older than `stats_ttl_s` are ignored and
  deleted) and blends them, weighted by sample count, into the fields strategies read. The p95 blend is a
  weighted mean of p95s (an approximation; the local ring refreshes it between syncs).

Redis unreachable: the tracker falls back to its local view at once (local cooldowns, local probes; one
warning per outage, `unavailable`/`outages` for /metrics) and `RedisLink` probes until Redis answers; then the
locally open breakers are published again (a restarted Redis is empty) and sharing resumes.

Deployment entries are keyed by name; a reload that changes a deployment's identity resets it locally (epoch 0),
so it adopts whatever the fleet holds for that name at the next sync. `names` (the deployments this replica
serves) keeps other configurations' deployments out of the local tracker during a rolling change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from modelyard.state.redis_link import RedisLink, cancel_until_done, make_client
from modelyard.state.redis_link import replica_id as new_replica_id

log = logging.getLogger("modelyard.state")

Stats = tuple[float | None, float | None, float | None, float]

# KEYS: the breakers hash. ARGV: name, kind ('trip', 'probe_ok', 'probe_failed'), the epoch the probe was won
# in, seconds to stay open, replica id, channel. Returns {written (1/0), the stored JSON or '', Redis now}.
# Not open in Redis: a trip or a failed probe (one taken locally during an outage) opens it. Open: only the
# result of the probe of that epoch changes it; a trip adopts it.
_VERDICT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, kind = ARGV[1], ARGV[2]
local cur = redis.call('HGET', KEYS[1], name)
local state, epoch = 'closed', 0
if cur then
  local v = cjson.decode(cur)
  state, epoch = v['s'], tonumber(v['e'])
end
local new
if state ~= 'open' then
  if kind ~= 'probe_ok' then new = 'open' end
elseif kind ~= 'trip' and epoch == tonumber(ARGV[3]) then
  if kind == 'probe_ok' then new = 'closed' else new = 'open' end
end
local now_s = string.format('%.6f', now)
if not new then return {0, cur or '', now_s} end
local e = math.max(epoch + 1, now_ms)
local u = 0
if new == 'open' then u = now + tonumber(ARGV[4]) end
local value = '{"s":"' .. new .. '","u":' .. string.format('%.6f', u) .. ',"e":' .. string.format('%d', e)
  .. ',"r":' .. cjson.encode(ARGV[5]) .. '}'
redis.call('HSET', KEYS[1], name, value)
redis.call('PUBLISH', ARGV[6], cjson.encode(name) .. '\\n' .. value .. '\\n' .. now_s)
return {1, value, now_s}
"""


class HealthView(Protocol):
    """What the sync needs of routing/health.py's `HealthTracker` (state/ may not import routing/)."""

    shared: bool
    remote: bool
    unhealthy: set[str]

    def subscribe(self, listener: Callable[[str, str, str], None]) -> None: ...
    def unsubscribe(self, listener: Callable[[str, str, str], None]) -> None: ...
    def breaker(self, name: str) -> tuple[str, int, float]: ...
    def apply_shared(self, name: str, *, open: bool, open_until: float, epoch: int) -> str | None: ...
    def probe_due(self, name: str, now: float) -> int | None: ...
    def grant_probe(self, name: str, until: float) -> None: ...
    def own_stats(self, now: float) -> dict[str, Stats]: ...
    def blend(self, name: str, others: list[Stats]) -> None: ...
    def knows(self, name: str) -> bool: ...


class SharedHealth:
    """Keeps one replica's `HealthTracker` in step with the fleet's (see the module docstring)."""

    def __init__(
        self,
        tracker: HealthView,
        url: str,
        *,
        prefix: str,
        sync_s: float,
        timeout_s: float,
        replica_id: str | None = None,
        probe_ttl_s: float = 10.0,
        stats_ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: bool = True,
        names: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.url = url
        self.sync_s = sync_s
        self.timeout_s = timeout_s
        self.replica_id = replica_id or new_replica_id()
        self.probe_ttl_s = probe_ttl_s
        self.stats_ttl_s = stats_ttl_s if stats_ttl_s is not None else max(10 * sync_s, 3.0)
        self.clock = clock
        #: Apply other replicas' verdicts as they are published (pub/sub); off: only the sync's read.
        self.events = events
        #: The deployments this replica serves (None: every name the fleet mentions).
        self.names = names
        self._breakers = f"{prefix}:health:breakers"
        self._stats = f"{prefix}:health:stats"
        self._probe = f"{prefix}:health:probe:"
        self._channel = f"{prefix}:health:events"
        self._client: Any = None
        self._verdict: Any = None
        self.link = RedisLink(lambda: self._client, what="shared health", timeout_s=timeout_s, on_return=self._returned)
        #: Local transitions not yet written: name -> (kind, epoch, open-until). Bounded by the deployments.
        self._pending: dict[str, tuple[str, int, float]] = {}
        #: Probe epochs lost to another replica: name -> (epoch, retry after) (one SET NX per probe).
        self._lost: dict[str, tuple[int, float]] = {}
        #: Probes this replica won and has not finished: name -> epoch (their keys' TTL is extended).
        self._held: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for /metrics.
        self.remote_opens = 0
        self.remote_closes = 0
        self.probes_won = 0
        self.probes_lost = 0
        self.verdicts_written = 0
        self.syncs = 0
        self.last_sync_ms = 0.0
        #: Verdicts and statistics in Redis that did not parse (not written by a replica of ours): skipped.
        self.malformed = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def unavailable(self) -> bool:
        return not self.link.available

    @property
    def outages(self) -> int:
        return self.link.outages

    async def start(self) -> None:
        """Subscribe to the tracker and start syncing; an unreachable Redis leaves the local view in charge."""
        self._client = make_client(self.url, self.timeout_s)
        self._verdict = self._client.register_script(_VERDICT)
        self.tracker.subscribe(self._on_transition)
        self.tracker.shared = True
        try:
            await self.sync()
        except self.link.errors as exc:
            self._went_down(exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sync_loop(), name="modelyard-health-sync")]
        if self.events:
            self._tasks.append(loop.create_task(self._listen(), name="modelyard-health-events"))

    async def close(self) -> None:
        self.tracker.unsubscribe(self._on_transition)
        self.tracker.shared = False
        self._closing = True
        self._wake.set()
        await cancel_until_done(self._tasks)
        self._tasks = []
        await self.link.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------ request path: no I/O

    def _on_transition(self, name: str, old: str, new: str) -> None:
        """A local breaker transition: remember it for the sync task and wake it (O(1), no await)."""
        if self.tracker.remote:
            return  # a fleet verdict being applied, not news
        _, epoch, open_until = self.tracker.breaker(name)
        if new == "open":
            self._pending[name] = ("probe_failed" if old == "half_open" else "trip", epoch, open_until)
        elif new == "closed":
            self._pending[name] = ("probe_ok", epoch, 0.0)
        else:
            return  # half-open is this replica's own business
        self._wake.set()

    # ------------------------------------------------------------------ sync

    async def _sync_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sync_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if not self.link.available:
                continue  # the link's probe brings it back (and resyncs)
            try:
                await self.sync()
            except self.link.errors as exc:
                self._went_down(exc)
            except Exception:  # a bug must not end sharing silently for the process's life
                log.exception("shared health sync failed")

    async def sync(self) -> None:
        """One round: write local verdicts, read the fleet's, publish and blend statistics, contend for probes."""
        started = time.perf_counter()
        await self._write_verdicts()
        await self._read_fleet()
        await self._contend()
        self.syncs += 1
        self.last_sync_ms = (time.perf_counter() - started) * 1000

    async def _write_verdicts(self) -> None:
        while self._pending:
            name, (kind, epoch, open_until) = next(iter(self._pending.items()))
            del self._pending[name]
            now = self.clock()
            open_for = max(0.0, open_until - now)
            try:
                written, value, redis_now = await self._verdict(
                    keys=[self._breakers],
                    args=[name, kind, epoch, f"{open_for:.6f}", self.replica_id, self._channel],
                )
            except BaseException:
                self._pending.setdefault(name, (kind, epoch, open_until))  # retried when Redis answers
                raise
            self.verdicts_written += int(written)
            if value:
                self._apply(name, value, float(redis_now), now)

    async def _read_fleet(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self._breakers)
        pipe.hgetall(self._stats)
        redis_time, breakers, stats = await pipe.execute()
        now = self.clock()
        redis_now = redis_time[0] + redis_time[1] / 1e6
        for raw_name, value in breakers.items():
            self._apply(raw_name.decode(), value, redis_now, now)
        await self._share_stats(stats, redis_now, now)

    def _apply(self, name: str, value: str | bytes, redis_now: float, now: float) -> None:
        """Adopt a stored verdict (JSON) read at Redis time `redis_now`, local time `now`. A malformed one (not
        written by a replica of ours) costs only itself: skipped and counted, never the rest of the round."""
        if self.names is not None and name not in self.names():
            return
        parsed = _verdict(value)
        if parsed is None:
            self.malformed += 1
            return
        is_open, until, epoch, replica = parsed
        old = self.tracker.apply_shared(name, open=is_open, open_until=now + (until - redis_now), epoch=epoch)
        if old is None or replica == self.replica_id:
            return
        if is_open and old != "open":
            self.remote_opens += 1
        elif not is_open and old != "closed":
            self.remote_closes += 1

    async def _share_stats(self, stored: dict[bytes, bytes], redis_now: float, now: float) -> None:
        mine = self.tracker.own_stats(now)
        fleet: dict[str, list[Stats]] = {}
        stale: list[bytes] = []
        for who, raw in stored.items():
            if who == self.replica_id.encode():
                continue
            entry = _stats_entry(raw)
            if entry is None:
                self.malformed += 1
                stale.append(who)  # nobody of ours wrote it: removed, like a stale one
                continue
            written_at, rows = entry
            if redis_now - written_at > self.stats_ttl_s:
                stale.append(who)
                continue
            for name, row in rows.items():
                stats = _stats_row(row)
                if stats is None:
                    self.malformed += 1
                elif self._serves(name):
                    fleet.setdefault(name, []).append(stats)
        for name, others in fleet.items():
            self.tracker.blend(name, others)
        pipe = self._client.pipeline(transaction=False)
        if mine:
            own = {"t": redis_now, "d": {name: list(row) for name, row in mine.items()}}
            pipe.hset(self._stats, self.replica_id, json.dumps(own, separators=(",", ":")))
            pipe.pexpire(self._stats, int(self.stats_ttl_s * 1000) * 2)
        if stale:
            pipe.hdel(self._stats, *stale)
        if mine or stale:
            await pipe.execute()

    def _serves(self, name: str) -> bool:
        """Whether to blend statistics for `name`: one of this replica's deployments (without `names`, one its
        tracker knows), so another replica's entries for other names never grow the tracker."""
        if self.names is not None:
            return name in self.names()
        return self.tracker.knows(name)

    async def _contend(self) -> None:
        """One `SET NX PX` per probe: for each open deployment whose cooldown has passed, once per epoch."""
        await self._extend_held()
        now = self.clock()
        due: list[tuple[str, int]] = []
        for name in list(self.tracker.unhealthy):
            epoch = self.tracker.probe_due(name, now)
            if epoch is None:
                continue
            lost = self._lost.get(name)
            if lost is not None and lost[0] == epoch and now < lost[1]:
                continue
            due.append((name, epoch))
        if not due:
            return
        pipe = self._client.pipeline(transaction=False)
        ttl_ms = int(self.probe_ttl_s * 1000)
        for name, epoch in due:
            pipe.set(f"{self._probe}{name}:{epoch}", self.replica_id, nx=True, px=ttl_ms)
        won = await pipe.execute()
        now = self.clock()
        for (name, epoch), ok in zip(due, won, strict=True):
            if ok:
                self.tracker.grant_probe(name, now + self.probe_ttl_s)
                self._held[name] = epoch
                self._lost.pop(name, None)
                self.probes_won += 1
            else:
                self._lost[name] = (epoch, now + self.probe_ttl_s)
                self.probes_lost += 1

    async def _extend_held(self) -> None:
        """Keep the probe key of a probe request still running (half-open here); forget finished ones."""
        if not self._held:
            return
        pipe = self._client.pipeline(transaction=False)
        extend = False
        for name, epoch in list(self._held.items()):
            state, current, _ = self.tracker.breaker(name)
            if current != epoch or state == "closed":
                del self._held[name]  # decided (or superseded): the key just expires
            elif state == "half_open":
                pipe.pexpire(f"{self._probe}{name}:{epoch}", int(self.probe_ttl_s * 1000))
                extend = True
        if extend:
            await pipe.execute()

    # ------------------------------------------------------------------ pub/sub: verdicts at once

    async def _listen(self) -> None:
        """Apply other replicas' verdicts as they are published; the hash read of each sync covers a gap."""
        delay = 0.05
        while not self._closing:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                delay = 0.05
                while not self._closing:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone or restarting: the sync loop notes the outage
                log.debug("shared health events: %r", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _on_message(self, data: bytes) -> None:
        name_json, value, redis_now = data.decode().split("\n")
        if json.loads(value).get("r") == self.replica_id or not self.tracker.shared:
            return
        self._apply(json.loads(name_json), value, float(redis_now), self.clock())

    # ------------------------------------------------------------------ outage

    def _went_down(self, exc: BaseException) -> None:
        if self.link.went_down(exc, "each replica uses its local health view"):
            self.tracker.shared = False  # local cooldowns and probes until Redis returns

    async def _returned(self) -> str:
        """Redis answers again: publish this replica's open breakers (a restarted Redis is empty), resync."""
        for name in list(self.tracker.unhealthy):
            state, epoch, open_until = self.tracker.breaker(name)
            if state == "open":
                self._pending.setdefault(name, ("trip", epoch, open_until))
        await self.sync()
        self.tracker.shared = True
        return "health shared again"


def _finite(value: Any) -> float | None:
    """`value` as a finite float, or None (anything else: not a number, NaN, an infinity, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _verdict(value: str | bytes) -> tuple[bool, float, int, Any] | None:
    """(open, open-until, epoch, replica) of a stored verdict, or None when it is not one."""
    try:
        verdict = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(verdict, dict) or verdict.get("s") not in ("open", "closed"):
        return None
    until, epoch = _finite(verdict.get("u")), verdict.get("e")
    if until is None or isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return None
    return verdict["s"] == "open", until, epoch, verdict.get("r")


def _stats_entry(raw: bytes) -> tuple[float, dict[str, Any]] | None:
    """(written at, rows by deployment) of another replica's statistics, or None when it is not that."""
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("d"), dict):
        return None
    written_at = _finite(entry.get("t"))
    return None if written_at is None else (written_at, entry["d"])


def _stats_row(row: Any) -> Stats | None:
    """One deployment's (EWMA total, EWMA TTFT, p95, weight): each latency absent or finite and not negative,
    the weight finite and not negative; None otherwise (a NaN blended in would be read by every decision)."""
    if not isinstance(row, list) or len(row) != 4:
        return None
    latencies: list[float | None] = []
    for value in row[:3]:
        number = _finite(value)
        if value is not None and (number is None or number < 0):
            return None
        latencies.append(number)
    weight = _finite(row[3])
    if weight is None or weight < 0:
        return None
    return (latencies[0], latencies[1], latencies[2], weight)
