"""Counters in Redis, so RPM/TPM limits and budgets hold across every replica of the gateway.

Each `admit` is one Lua script: it reads the key's windows and budget, decides, and writes, atomically on
the Redis server, with the server's clock (replicas with skewed clocks still agree). The arithmetic is the
one of `MemoryCounters` (one-second buckets over 60 s, integer nano-dollars), so both pass the same tests.
Keys share a `{account}` hash tag, so the script also runs on Redis Cluster.

Settlement happens after the response, from a synchronous callback: it is sent in a background task
(tracked, and awaited by `close()`), never on the request's path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modelyard.accounting.budgets import Reservation
from modelyard.state.counters import Ask, Verdict
from modelyard.state.windows import SPAN

log = logging.getLogger("modelyard.state")

# KEYS: rpm window, tpm window, budget hash.
# ARGV: rpm, tpm, tokens, budget limit, estimate (nano), span, budget ttl (-1 = no limit for numbers).
_ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local span = tonumber(ARGV[6])

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
  if used + 1 > rpm then return {0, 'rpm', tostring(wait_s(live, used + 1 - rpm)), sec} end
end
if tpm >= 0 then
  local used, live = scan(KEYS[2])
  if used > 0 and used + tokens > tpm then
    return {0, 'tpm', tostring(wait_s(live, used + tokens - tpm)), sec}
  end
end
local limit, estimate = tonumber(ARGV[4]), tonumber(ARGV[5])
if limit >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[3], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[3], 'reserved') or '0')
  if spent + reserved + math.max(estimate, 1) > limit then return {0, 'budget', '0', sec} end
  redis.call('HINCRBY', KEYS[3], 'reserved', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], sec, 1)
  redis.call('EXPIRE', KEYS[1], span + 1)
end
if tpm >= 0 then
  redis.call('HINCRBY', KEYS[2], sec, ARGV[3])
  redis.call('EXPIRE', KEYS[2], span + 1)
end
return {1, '', '0', sec}
"""

# KEYS: tpm window, budget hash. ARGV: second, token delta, -estimate, actual, has tpm, has budget.
_SETTLE = """
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end
end
if ARGV[6] == '1' then
  if redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[3]) < 0 then
    redis.call('HSET', KEYS[2], 'reserved', 0)
  end
  redis.call('HINCRBY', KEYS[2], 'spent', ARGV[4])
end
return 1
"""

# KEYS: budget hash. ARGV: spent, ttl.
_SEED = """
if redis.call('HSETNX', KEYS[1], 'spent', ARGV[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


def _num(value: int | None) -> int:
    return -1 if value is None else value


class RedisCounters:
    """`Counters` on a Redis server (redis-py asyncio); `prefix` separates gateways and tests."""

    def __init__(self, url: str, *, prefix: str = "modelyard", client: Any = None) -> None:
        self.url = url
        self.prefix = prefix
        self._client = client
        self._own_client = client is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._admit: Any = None
        self._settle: Any = None
        self._seed: Any = None

    def _key(self, account: str, what: str) -> str:
        return f"{self.prefix}:{{{account}}}:{what}"

    async def start(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url)
        await self._client.ping()
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._seed = self._client.register_script(_SEED)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    async def admit(self, ask: Ask) -> Verdict:
        account = ask.account
        budget = ask.budget_nano is not None
        keys = [self._key(account, "rpm"), self._key(account, "tpm"),
                self._key(account, f"budget:{ask.period}")]
        args = [_num(ask.rpm), _num(ask.tpm), ask.tokens, _num(ask.budget_nano), ask.estimate_nano, SPAN,
                max(1, ask.ttl_s)]
        ok, reason, wait, second = await self._admit(keys=keys, args=args)
        if not int(ok):
            text = reason.decode() if isinstance(reason, bytes) else str(reason)
            return Verdict(False, text, float(wait))
        reservation = Reservation(account, ask.period if budget else -1, ask.estimate_nano if budget else 0,
                                  ask.tokens if ask.tpm is not None else 0, int(second))
        return Verdict(True, reservation=reservation)

    def settle(self, reservation: Reservation, actual_nano: int, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        budget = reservation.period >= 0
        if not budget and not reservation.tokens:
            return
        send = self._send_settle(reservation, actual_nano, actual_tokens)
        task = asyncio.get_running_loop().create_task(send)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_settle(self, reservation: Reservation, actual_nano: int, actual_tokens: int) -> None:
        account = reservation.account
        keys = [self._key(account, "tpm"), self._key(account, f"budget:{reservation.period}")]
        args = [reservation.second, actual_tokens - reservation.tokens, -reservation.estimate_nano,
                actual_nano, "1" if reservation.tokens else "0", "1" if reservation.period >= 0 else "0"]
        try:
            await self._settle(keys=keys, args=args)
        except Exception as exc:  # Redis went away: the reservation expires with the period instead
            log.warning("could not settle the budget of %s in Redis: %s", account, exc)

    async def seed_budget(self, account: str, period: int, spent_nano: int, ttl_s: int) -> None:
        await self._seed(keys=[self._key(account, f"budget:{period}")], args=[spent_nano, max(1, ttl_s)])

    async def budget_state(self, account: str, period: int) -> tuple[int, int]:
        values = await self._client.hmget(self._key(account, f"budget:{period}"), "spent", "reserved")
        return int(values[0] or 0), int(values[1] or 0)

    async def drain(self) -> None:
        """Wait for the settlements in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
