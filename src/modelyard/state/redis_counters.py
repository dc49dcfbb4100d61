"""Counters in Redis, so RPM/TPM limits and budgets hold across every replica of the gateway.

Each `admit` is one Lua script: it reads the key's windows and budget, decides, and writes, atomically on
the Redis server, with the server's clock (replicas with skewed clocks still agree). The arithmetic is the
one of `MemoryCounters` (one-second buckets over 60 s, integer nano-dollars), so both pass the same tests.
Keys share a `{account}` hash tag, so the script also runs on Redis Cluster.

Settlement happens after the response, from a synchronous callback: it is sent in a background task
(tracked, and awaited by `close()`), never on the request's path.

Surviving Redis (see docs/accounting.md, "When Redis goes away"):

- A budget hash that is missing (Redis restarted empty, or evicted it) is never started from zero: `admit`
  answers "unseeded" and the caller seeds it from the spend log (`seed_budget`, only if absent, so replicas
  racing to seed agree). Each seed stamps the hash with a random *epoch*; a reservation remembers the epoch
  it was taken in, so one that outlived its hash adds its actual cost to `spent` but never takes back a
  `reserved` it no longer holds. The reservations this replica holds when it seeds are carried into the new
  hash (`reserved`), so requests in flight across the restart are still counted against the budget.
- While Redis is unreachable, `on_unavailable` decides: "fail_closed" raises `StateUnavailable` (the client
  gets a 503 `state_unavailable` with `Retry-After`), "fail_open" admits from in-memory counters of this
  replica. One warning per outage; a probe re-checks every 50-500 ms, and before requests are admitted
  again it replays the settlements that failed meanwhile (a bounded queue), so no reservation is stranded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from modelyard.accounting.budgets import Reservation
from modelyard.state.counters import (
    MAX_NANO,
    MAX_TOKENS,
    Ask,
    MemoryCounters,
    SpentSource,
    Verdict,
    clamp,
    spent_value,
)
from modelyard.state.outage import StateUnavailable
from modelyard.state.redis_batch import ScriptBatcher
from modelyard.state.redis_link import RedisLink, make_client, redis_errors
from modelyard.state.windows import SPAN

log = logging.getLogger("modelyard.state")

OnUnavailable = Literal["fail_closed", "fail_open"]

# KEYS: rpm window, tpm window, budget hash, the reservation's marker.
# ARGV: rpm, tpm, tokens, budget limit, estimate (nano), span, budget ttl (-1 = no limit for numbers),
#       seed required ('1': a missing budget hash is reported as 'unseeded' instead of starting at zero),
#       marker ttl. The marker (deleted when the reservation settles) lets an admit whose answer was lost
#       (a timeout) be undone exactly: only if it ran.
# Returns {ok, reason, wait, second, epoch}.
_ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local span = tonumber(ARGV[6])
local limit, estimate = tonumber(ARGV[4]), tonumber(ARGV[5])
if limit >= 0 and ARGV[8] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return {0, 'unseeded', '0', sec, ''}
end

local function scan(key)
  local fields = redis.call('HGETALL', key)
  local total, live = 0, {}
  for i = 1, #fields, 2 do
    local s = tonumber(fields[i])
    if s <= sec - span then
      redis.call('HDEL', key, fields[i])
    else
      local v = tonumber(fields[i + 1])
      total = total + v
      live[#live + 1] = {s, v}
    end
  end
  return total, live
end

local function wait_s(live, excess)
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, entry in ipairs(live) do
    freed = freed + entry[2]
    if freed >= excess then return math.max(0, entry[1] + span - now) end
  end
  return span
end

local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm >= 0 then
  local used, live = scan(KEYS[1])
  if used + 1 > rpm then return {0, 'rpm', tostring(wait_s(live, used + 1 - rpm)), sec, ''} end
end
if tpm >= 0 then
  local used, live = scan(KEYS[2])
  if used > 0 and used + tokens > tpm then
    return {0, 'tpm', tostring(wait_s(live, used + tokens - tpm)), sec, ''}
  end
end
local epoch = ''
if limit >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[3], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[3], 'reserved') or '0')
  if spent + reserved + math.max(estimate, 1) > limit then return {0, 'budget', '0', sec, ''} end
  redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
  epoch = redis.call('HGET', KEYS[3], 'epoch') or ''
  redis.call('SET', KEYS[4], epoch, 'EX', ARGV[9])
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('EXPIRE', KEYS[1], span + 1)
end
if tpm >= 0 then
  redis.call('HINCRBY', KEYS[2], sec, ARGV[3])
  redis.call('EXPIRE', KEYS[2], span + 1)
end
return {1, '', '0', sec, epoch}
"""

# KEYS: tpm window, budget hash, the reservation's marker.
# ARGV: second, token delta, -estimate, actual, has tpm, has budget, the reservation's epoch, its adopted epoch,
#       marker mode ('settle': delete it; 'undo': give back an admit whose answer was lost, if it ran; '').
# Settling twice (a replay of a settlement whose answer was lost) is a no-op: its marker is gone.
# A missing budget hash is left alone (its next seed counts this request from the spend log); a hash of
# another epoch (re-seeded since the reservation) gets the actual cost but keeps its `reserved`.
_SETTLE = """
if ARGV[9] == 'undo' then
  local epoch = redis.call('GET', KEYS[3])
  if not epoch then return 0 end
  redis.call('DEL', KEYS[3])
  if redis.call('EXISTS', KEYS[2]) == 1 and (redis.call('HGET', KEYS[2], 'epoch') or '') == epoch then
    if redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[3]) < 0 then redis.call('HSET', KEYS[2], 'reserved', 0) end
  end
  return 1
end
if ARGV[9] == 'settle' and redis.call('DEL', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
  if epoch == ARGV[7] or (ARGV[8] ~= '' and epoch == ARGV[8]) then return 0 end
end
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
end
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
  if epoch == ARGV[7] or (ARGV[8] ~= '' and epoch == ARGV[8]) then
    if redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[3]) < 0 then
      redis.call('HSET', KEYS[2], 'reserved', 0)
    end
  end
  redis.call('HINCRBY', KEYS[2], 'spent', ARGV[4])
end
return 1
"""

# KEYS: budget hash, then the markers of this replica's reservations in flight (carried into the new hash).
# ARGV: spent, ttl, reserved (those reservations' estimates), epoch, marker ttl.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', ARGV[3], 'epoch', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[4], 'EX', ARGV[5]) end
return 1
"""

# After a key's budget or period was edited, the same window: an existing budget hash gets `spent` raised to
# ARGV[1] if lower (everything else stays: its epoch, every replica's reservations in it). KEYS: budget hash.
# ARGV: spent, ttl. Returns 0 when there is no hash (the caller seeds it as usual).
_RAISE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'spent') or '0') then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1])
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# After a key's period was edited: the budget hash of the (new) current period starts afresh whether it exists
# or not (one that exists may hold another window's spend). KEYS and ARGV as _SEED. The reservations of
# other replicas in it then settle as ones that outlived their hash: their cost is added, their `reserved`
# is not taken back.
_REPLACE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', ARGV[3], 'epoch', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[4], 'EX', ARGV[5]) end
return 1
"""


@dataclass(slots=True)
class RedisReservation(Reservation):
    """A reservation in Redis: the budget epoch it was taken in, and the one a later seed carried it into."""

    epoch: str = ""
    adopted: str = ""
    #: Names the reservation's marker in Redis (deleted when it settles).
    token: str = ""


#: Seconds a reservation's marker outlives a process that died before settling it.
_MARKER_TTL_S = 86400


def _num(value: int | None) -> int:
    return -1 if value is None else value


class RedisCounters:
    """`Counters` on a Redis server (redis-py asyncio); `prefix` separates gateways and tests."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelyard",
        client: Any = None,
        on_unavailable: OnUnavailable = "fail_closed",
        timeout_s: float = 0.5,
        max_pending: int = 100_000,
        probe_min_s: float = 0.05,
        probe_max_s: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.on_unavailable = on_unavailable
        self.timeout_s = timeout_s
        self.probe_min_s = probe_min_s
        self.probe_max_s = probe_max_s
        self._client = client
        self._own_client = client is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._admit: Any = None
        self._settle: Any = None
        self._seed: Any = None
        self._raise: Any = None
        self._replace: Any = None
        self._errors = redis_errors()
        #: Settlements that could not be sent (Redis down), replayed before admitting again.
        self._pending: deque[tuple[list[str], list[Any]]] = deque(maxlen=max_pending)
        self._tokens = itertools.count()
        self._process = secrets.token_hex(4)
        self.dropped_settlements = 0
        #: Reservations this replica holds, per (account, period): carried into a re-seeded budget.
        self._holding: dict[tuple[str, int], dict[int, RedisReservation]] = {}
        #: Seeds in flight by their epoch: a settlement of a reservation carried into one waits for it.
        self._seeding: dict[str, asyncio.Future[None]] = {}
        self._local = MemoryCounters()
        #: Admissions and settlements of one loop turn go to Redis as one pipeline.
        self._batch = ScriptBatcher(lambda: self._client)
        self._link = RedisLink(
            lambda: self._client,
            what="key limits and budgets",
            timeout_s=timeout_s,
            probe_min_s=probe_min_s,
            probe_max_s=probe_max_s,
            on_return=self._replayed,
        )

    def _key(self, account: str, what: str) -> str:
        return f"{self.prefix}:{{{account}}}:{what}"

    # ------------------------------------------------------------------ lifecycle and availability

    @property
    def _available(self) -> bool:
        return self._link.available

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (requests follow `on_unavailable`)."""
        return not self._link.available

    @property
    def unavailable_s(self) -> float:
        """Seconds the current outage has lasted (0 when Redis is reachable)."""
        return self._link.unavailable_s

    @property
    def outages(self) -> int:
        return self._link.outages

    async def start(self) -> None:
        if self._client is None:
            self._client = make_client(self.url, self.timeout_s)
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._seed = self._client.register_script(_SEED)
        self._raise = self._client.register_script(_RAISE)
        self._replace = self._client.register_script(_REPLACE)
        try:
            await asyncio.wait_for(self._client.ping(), self.timeout_s * 2)
        except self._errors as exc:  # start anyway: the outage policy applies until Redis answers
            self._went_down(exc)

    async def close(self) -> None:
        await self._link.close()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._batch.drain()
        if self._pending:
            log.warning(
                "%d budget settlements could not be sent to Redis before shutdown (their spend is in "
                "the spend log and counted when the budget is next seeded)",
                len(self._pending),
            )
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def _went_down(self, exc: BaseException) -> None:
        """Note an outage (one warning, not one per request); the link probes for Redis's return."""
        consequence = (
            "refusing limited keys with 503 (state.on_unavailable: fail_closed)"
            if self.on_unavailable == "fail_closed"
            else "limits are kept per replica in memory (state.on_unavailable: fail_open)"
        )
        if self._link.went_down(exc, consequence):
            self._local = MemoryCounters()  # fail_open: this outage's limits start from the spend log again

    async def _replayed(self) -> str:
        """On Redis's return, before it counts as back: the settlements queued meanwhile are sent."""
        return f"{await self._replay()} settlements replayed"

    async def _replay(self) -> int:
        """Send the settlements queued during the outage, in pipelined batches; raise if Redis fails again."""
        sent = 0
        while self._pending:
            batch = [self._pending[i] for i in range(min(500, len(self._pending)))]
            pipe = self._client.pipeline(transaction=False)
            for keys, args in batch:
                await self._settle(keys=keys, args=args, client=pipe)
            await asyncio.wait_for(pipe.execute(), self.timeout_s * 4)
            for _ in batch:
                self._pending.popleft()
            sent += len(batch)
        return sent

    def _unavailable(self) -> StateUnavailable:
        return StateUnavailable()

    # ------------------------------------------------------------------ admit

    async def admit(self, ask: Ask) -> Verdict:
        if not self._available:
            return await self._admit_unavailable(ask)
        account = ask.account
        budget = ask.budget_nano is not None
        tokens = clamp(ask.tokens, MAX_TOKENS)
        estimate = clamp(ask.estimate_nano, MAX_NANO)
        token = f"{self._process}.{next(self._tokens)}"
        keys = [
            self._key(account, "rpm"),
            self._key(account, "tpm"),
            self._key(account, f"budget:{ask.period}"),
            self._key(account, f"r:{token}"),
        ]
        args = [
            _num(ask.rpm),
            _num(ask.tpm),
            tokens,
            clamp(_num(ask.budget_nano), MAX_NANO),
            estimate,
            SPAN,
            max(1, ask.ttl_s),
            "1" if ask.seed_required else "0",
            _MARKER_TTL_S,
        ]
        try:
            ok, reason, wait, second, epoch = await self._batch.call(self._admit, keys, args)
        except self._errors as exc:
            if budget:  # it may have run with its answer lost: undone once Redis answers (if it did run)
                self._queue(self._settle_call(account, ask.period, 0, 0, 0, 0, "", "", -estimate, token, "undo"))
            self._went_down(exc)
            return await self._admit_unavailable(ask)
        if not int(ok):
            text = reason.decode() if isinstance(reason, bytes) else str(reason)
            return Verdict(False, text, float(wait))
        reservation = RedisReservation(
            account,
            ask.period if budget else -1,
            estimate if budget else 0,
            tokens if ask.tpm is not None else 0,
            int(second),
            epoch=epoch.decode() if isinstance(epoch, bytes) else str(epoch),
            token=token if budget else "",
        )
        if budget:
            self._holding.setdefault((account, ask.period), {})[id(reservation)] = reservation
        return Verdict(True, reservation=reservation)

    async def _admit_unavailable(self, ask: Ask) -> Verdict:
        if self.on_unavailable == "fail_open":
            return await self._local.admit(ask)
        raise self._unavailable()

    # ------------------------------------------------------------------ settle

    def settle(self, reservation: Reservation, actual_nano: int, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        actual_nano = clamp(actual_nano, MAX_NANO)
        if not isinstance(reservation, RedisReservation):  # taken from the local counters during an outage
            self._local.settle(reservation, actual_nano, actual_tokens)
            if reservation.period >= 0 and actual_nano:  # the shared budget must see this spend too
                self._send(self._settle_call(reservation.account, reservation.period, 0, actual_nano, 0, 0, "", ""))
            return
        budget = reservation.period >= 0
        if budget:
            held = self._holding.get((reservation.account, reservation.period))
            if held is not None:
                held.pop(id(reservation), None)
                if not held:
                    del self._holding[(reservation.account, reservation.period)]
        if not budget and not reservation.tokens:
            return
        delta = clamp(actual_tokens, MAX_TOKENS) - reservation.tokens
        call = self._settle_call(
            reservation.account,
            reservation.period,
            reservation.second,
            actual_nano,
            delta,
            reservation.tokens,
            reservation.epoch,
            reservation.adopted,
            -reservation.estimate_nano,
            reservation.token,
            "settle" if reservation.token else "",
        )
        self._send(call, self._seeding.get(reservation.adopted) if reservation.adopted else None)

    def _settle_call(
        self,
        account: str,
        period: int,
        second: int,
        actual_nano: int,
        token_delta: int,
        tokens: int,
        epoch: str,
        adopted: str,
        minus_estimate: int = 0,
        token: str = "",
        marker: str = "",
    ) -> tuple[list[str], list[Any]]:
        keys = [self._key(account, "tpm"), self._key(account, f"budget:{period}"), self._key(account, f"r:{token}")]
        args = [
            second,
            token_delta,
            minus_estimate,
            actual_nano,
            "1" if tokens else "0",
            "1" if period >= 0 else "0",
            epoch,
            adopted,
            marker,
        ]
        return keys, args

    def _send(self, call: tuple[list[str], list[Any]], after: asyncio.Future[None] | None = None) -> None:
        if not self._available:
            self._queue(call)
            return
        if after is None:  # the common case: into this turn's pipeline, no task of its own
            sent = self._batch.call(self._settle, *call)
            sent.add_done_callback(lambda done: self._settle_failed(call, done))
            return
        task = asyncio.get_running_loop().create_task(self._send_settle(call, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_settle(self, call: tuple[list[str], list[Any]], after: asyncio.Future[None]) -> None:
        """Send `call` once the seed that carried its reservation has reached Redis."""
        await asyncio.gather(after, return_exceptions=True)
        self._send(call)

    def _settle_failed(self, call: tuple[list[str], list[Any]], sent: asyncio.Future[Any]) -> None:
        """A settlement that did not reach Redis is replayed when Redis is back."""
        if sent.cancelled():
            return
        exc = sent.exception()
        if exc is None:
            return
        if isinstance(exc, self._errors):
            self._queue(call)
            self._went_down(exc)
        else:
            log.error("budget settlement failed: %s", exc)

    def _queue(self, call: tuple[list[str], list[Any]]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped_settlements += 1
            if self.dropped_settlements & (self.dropped_settlements - 1) == 0:  # 1, 2, 4, 8, ...
                log.warning(
                    "Redis settlement queue full (%d): %d settlements dropped so far (their spend is in the spend log)",
                    self._pending.maxlen,
                    self.dropped_settlements,
                )
        self._pending.append(call)

    # ------------------------------------------------------------------ seed and read

    async def seed_budget(self, account: str, period: int, spent_nano: SpentSource, ttl_s: int) -> None:
        """Start the period's budget unless it exists. The reservations this replica holds in it are noted
        first (carried into the new hash), then `spent_nano` is computed, so a request settling meanwhile is
        counted once in either, never in neither."""
        if not self._available:
            await self._local_seed(account, period, spent_nano, ttl_s)
            return
        if not await self._seed_carrying(self._seed, account, period, spent_nano, ttl_s):
            await self._local_seed(account, period, spent_nano, ttl_s)

    async def _seed_carrying(self, script: Any, account: str, period: int, spent_nano: SpentSource, ttl_s: int) -> bool:
        """Run a budget-seeding `script` (seed or replace) with this replica's reservations in flight carried
        into the new hash; False when Redis failed (the caller falls back to its local counters)."""
        epoch = secrets.token_hex(8)
        carried = self._carry(account, period, epoch)
        done = self._seeding[epoch] = asyncio.get_running_loop().create_future()
        try:
            spent = clamp(await spent_value(spent_nano), MAX_NANO)
            reserved = sum(r.estimate_nano for r in carried)
            markers = [self._key(account, f"r:{r.token}") for r in carried if r.token]
            await script(
                keys=[self._key(account, f"budget:{period}"), *markers],
                args=[spent, max(1, ttl_s), clamp(reserved, MAX_NANO), epoch, _MARKER_TTL_S],
            )
        except self._errors as exc:
            self._went_down(exc)
            return False
        finally:
            del self._seeding[epoch]
            done.set_result(None)
        return True

    async def reseed_budget(
        self, account: str, period: int, spent_nano: SpentSource, ttl_s: int, *, replace: bool
    ) -> None:
        """See `Counters.reseed_budget`: one script, so every replica's next admit sees the new start. While
        Redis is down: this replica's local counters (fail_open) or StateUnavailable (fail_closed)."""
        if not self._available:
            await self._local_reseed(account, period, spent_nano, ttl_s, replace)
            return
        if not replace:
            spent = clamp(await spent_value(spent_nano), MAX_NANO)
            try:
                raised = await self._raise(keys=[self._key(account, f"budget:{period}")], args=[spent, max(1, ttl_s)])
            except self._errors as exc:
                self._went_down(exc)
                await self._local_reseed(account, period, spent, ttl_s, replace)
                return
            if not int(raised):  # no budget hash yet: seeded as on first use
                await self.seed_budget(account, period, spent, ttl_s)
            return
        # As seed_budget, but unconditional: this replica's reservations in flight are carried into the new hash.
        if not await self._seed_carrying(self._replace, account, period, spent_nano, ttl_s):
            await self._local_reseed(account, period, spent_nano, ttl_s, replace)

    async def _local_reseed(
        self, account: str, period: int, spent_nano: SpentSource, ttl_s: int, replace: bool
    ) -> None:
        if self.on_unavailable != "fail_open":
            raise self._unavailable()
        await self._local.reseed_budget(account, period, spent_nano, ttl_s, replace=replace)

    async def _local_seed(self, account: str, period: int, spent_nano: SpentSource, ttl_s: int) -> None:
        if self.on_unavailable != "fail_open":
            raise self._unavailable()
        await self._local.seed_budget(account, period, spent_nano, ttl_s)

    def _carry(self, account: str, period: int, epoch: str) -> list[RedisReservation]:
        held = list(self._holding.get((account, period), {}).values())
        for reservation in held:
            reservation.adopted = epoch
        return held

    async def budget_state(self, account: str, period: int) -> tuple[int, int]:
        """(spent, reserved); while Redis is down, this replica's local view (fail_open) or StateUnavailable."""
        if self._available:
            try:
                values = await self._client.hmget(self._key(account, f"budget:{period}"), "spent", "reserved")
            except self._errors as exc:
                self._went_down(exc)
            else:
                return int(values[0] or 0), int(values[1] or 0)
        if self.on_unavailable != "fail_open":
            raise self._unavailable()
        return await self._local.budget_state(account, period)

    async def budget_started(self, account: str, period: int) -> bool:
        if self._available:
            try:
                return bool(await self._client.exists(self._key(account, f"budget:{period}")))
            except self._errors as exc:
                self._went_down(exc)
        if self.on_unavailable != "fail_open":
            raise self._unavailable()
        return await self._local.budget_started(account, period)

    async def drain(self) -> None:
        """Wait for the settlements in flight (tests, shutdown)."""
        while self._tasks or self._batch.busy:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self._batch.drain()
