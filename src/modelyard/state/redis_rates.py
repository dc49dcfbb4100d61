"""Deployment RPM/TPM token buckets shared in Redis, so N replicas in front of one provider dispatch at the
provider's rate in all, not N times it.

The arithmetic is the GCRA of routing/limits.py, moved into one Lua script: each bucket is one number, its
theoretical arrival time `tat` (seconds, Redis's own clock: replicas' clocks differ), with emission interval
`T = 60 / limit` and depth `max(burst_s, T)`. A request of cost `c` fits while the backlog `tat - now` plus
`c * T` stays within the depth, or, when `c * T` is larger than the whole depth, into a full bucket. `take`
checks the request bucket and the token bucket together and takes from both or from neither, atomically.
The interval and depth are computed here in Python (the same expressions as `_Bucket`) and passed as exact
float text, so both sides decide alike.

Keys: `{prefix}:rate:{<name>}:r:<rpm>:<burst_s>` and `...:t:<tpm>:<burst_s>`. The `{name}` hash tag keeps
both in one slot (Redis Cluster). The limits are part of the key, so a reload with new limits starts a new,
full bucket, as the local buckets do; replicas still on the old config during a rolling reload keep the old
bucket meanwhile (so at most old + new rate for that moment, never a bucket reset over and over by replicas
disagreeing). The old key expires on its own: every write sets a PEXPIRE of `backlog + depth`, after which
the bucket is full again and a missing key means just that.

Outage: any Redis error or no answer within `timeout_s` raises `StateUnavailable`; the caller falls back to
its local buckets. One warning per outage; meanwhile every call raises at once (no request waits on a dead
Redis) while a probe pings every 50-500 ms, and the calls go to Redis again once it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from modelyard.config.model import Limits
from modelyard.state.outage import StateUnavailable
from modelyard.state.redis_batch import ScriptBatcher
from modelyard.state.redis_link import RedisLink, make_client

# KEYS: request bucket, token bucket. ARGV: mode ('take', 'adjust'), then per bucket (requests, tokens):
# used ('1'/'0'), interval, depth, cost. Floats travel as text (a Lua number returned to Redis is truncated
# to an integer). 'take' returns {wait, which}: wait '0' and both taken, else the seconds until the request
# fits and which bucket is short ('r', 't'; nothing taken). 'adjust' moves each used bucket's tat by
# cost * interval (negative: give back), for an existing key only, except that a positive cost on a missing
# (expired) key charges from `now - depth`, the latest tat an expired key can have had.
_RATES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local EPS = 1e-9
local function arg(i) return tonumber(ARGV[i]) end

local stored = redis.call('MGET', KEYS[1], KEYS[2])  -- one call for both (a call costs more than the math)
local function tat_of(i)
  if stored[i] then return tonumber(stored[i]) end
  return nil
end

local function store(key, tat, depth)
  local ttl = math.ceil((tat - now + depth) * 1000)
  if ttl <= 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.17g', tat), 'PX', ttl)
  end
end

local function wait(tat, interval, depth, cost)
  local backlog = tat - now
  if backlog <= EPS then return 0 end
  local need = cost * interval
  if need > depth then return backlog end
  local over = backlog + need - depth
  if over > EPS then return over end
  return 0
end

if ARGV[1] == 'take' then
  local tats, longest, which = {}, 0, ''
  for i = 1, 2 do
    local base = 2 + (i - 1) * 4
    if ARGV[base] == '1' then
      local tat = tat_of(i) or 0
      tats[i] = tat
      local w = wait(tat, arg(base + 1), arg(base + 2), arg(base + 3))
      if w > longest then longest, which = w, (i == 1 and 'r' or 't') end
    end
  end
  if longest > 0 then return {string.format('%.17g', longest), which} end
  for i = 1, 2 do
    local base = 2 + (i - 1) * 4
    if ARGV[base] == '1' then
      store(KEYS[i], math.max(tats[i], now) + arg(base + 3) * arg(base + 1), arg(base + 2))
    end
  end
  return {'0', ''}
end

for i = 1, 2 do
  local base = 2 + (i - 1) * 4
  local cost = arg(base + 3)
  if ARGV[base] == '1' and cost ~= 0 then
    local tat = tat_of(i)
    if tat == nil and cost > 0 then tat = now - arg(base + 2) end
    if tat ~= nil then store(KEYS[i], tat + cost * arg(base + 1), arg(base + 2)) end
  end
end
return {'0', ''}
"""

#: Longest deployment name kept verbatim in a key; longer ones are cut and suffixed with a hash.
_MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def key_name(name: str) -> str:
    """`name` safe inside a key and its hash tag: anything but `A-Za-z0-9._/-` %-escaped (so `{`, `}`, `:`
    and spaces cannot reshape the key), at most `_MAX_NAME` characters (longer: cut, plus a hash of the
    whole name, so two long names sharing a prefix stay apart)."""
    safe = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)
    if len(safe) <= _MAX_NAME:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{safe[: _MAX_NAME - 17]}~{digest}"


def _shape(per_minute: int | None, burst_s: float, reserve_s: float = 0.0) -> tuple[str, str] | None:
    """(interval, depth) as exact float text, the expressions of routing/limits.py `_Bucket`; None: unlimited.
    `reserve_s` of the depth is kept for others (a lower priority class; never below one interval)."""
    if per_minute is None:
        return None
    interval = 60.0 / per_minute
    depth = max(burst_s, interval)
    if reserve_s > 0.0:
        depth = max(interval, depth - reserve_s)
    return repr(interval), repr(depth)


class SharedRates:
    """Per-deployment RPM/TPM buckets in Redis (redis-py asyncio), shared by every replica with this `prefix`.

    `client` (an existing `redis.asyncio.Redis`, e.g. the counters') is used as is and never closed here;
    otherwise one is made from `url` with `timeout_s` connect and socket timeouts.
    """

    def __init__(
        self,
        url: str = "",
        *,
        prefix: str = "modelyard",
        client: Any = None,
        timeout_s: float = 0.5,
        probe_min_s: float = 0.05,
        probe_max_s: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._own_client = client is None
        self._client: Any = client if client is not None else make_client(url, timeout_s)
        # EVALSHA with the script cached on the server; redis-py loads it again on NOSCRIPT (a restarted Redis).
        self._script: Any = self._client.register_script(_RATES)
        #: The takes and corrections of one loop turn go to Redis as one pipeline.
        self._batch = ScriptBatcher(lambda: self._client)
        self._link = RedisLink(
            lambda: self._client,
            what="shared deployment rate limits",
            timeout_s=timeout_s,
            probe_min_s=probe_min_s,
            probe_max_s=probe_max_s,
        )

    def _keys(self, name: str, limits: Limits) -> list[str]:
        base = f"{self.prefix}:rate:{{{key_name(name)}}}"
        burst = repr(float(limits.burst_s))
        return [f"{base}:r:{limits.rpm}:{burst}", f"{base}:t:{limits.tpm}:{burst}"]

    @staticmethod
    def _args(mode: str, limits: Limits, requests: int, tokens: int, reserve_s: float = 0.0) -> list[str]:
        args = [mode]
        for shape, cost in (
            (_shape(limits.rpm, limits.burst_s, reserve_s), requests),
            (_shape(limits.tpm, limits.burst_s, reserve_s), tokens),
        ):
            if shape is None:
                args += ["0", "0", "0", "0"]
            else:
                args += ["1", shape[0], shape[1], str(cost)]
        return args

    # ------------------------------------------------------------------ the buckets

    async def take(self, name: str, limits: Limits, tokens: int, reserve_s: float = 0.0) -> float:
        """0.0: one request of `tokens` (estimated) fitted both buckets and was taken from both; else the
        seconds until it would fit, with nothing taken. Raises `StateUnavailable` when Redis is down.

        `reserve_s`: it fits only if that much of the buckets' depth is left over for others: replicas'
        lower priority classes ask with a reserve, so when a token frees, a higher class on any replica
        gets it first (one interval of latency for the lower class, no loss of throughput)."""
        wait, _ = await self.take_or_wait(name, limits, tokens, reserve_s)
        return wait

    async def take_or_wait(self, name: str, limits: Limits, tokens: int, reserve_s: float = 0.0) -> tuple[float, str]:
        """`take`, plus which bucket is short when it did not fit: 'rpm', 'tpm' ('' when taken)."""
        if not limits.rate_limited:
            return 0.0, ""
        args = self._args("take", limits, 1, max(0, tokens), reserve_s)
        wait, which = await self._call(self._keys(name, limits), args)
        which = which.decode() if isinstance(which, bytes) else str(which)
        return float(wait), {"r": "rpm", "t": "tpm"}.get(which, "")

    async def give_back(self, name: str, limits: Limits, tokens: int) -> None:
        """Undo a `take` whose request never reached the provider (its request and `tokens`)."""
        if limits.rate_limited:
            await self._call(self._keys(name, limits), self._args("adjust", limits, -1, -max(0, tokens)))

    async def correct(self, name: str, limits: Limits, delta_tokens: int) -> None:
        """The real usage differed from the estimate by `delta_tokens` (positive: more was used)."""
        if limits.tpm is not None and delta_tokens:
            await self._call(self._keys(name, limits), self._args("adjust", limits, 0, delta_tokens))

    async def _call(self, keys: list[str], args: list[str]) -> Any:
        link = self._link
        if not link.available:
            raise StateUnavailable()
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: no task per call (~70 us less)
                return await self._batch.call(self._script, keys, args)
        except link.errors as exc:
            link.went_down(exc, "deployment rate limits are kept per replica")
            raise StateUnavailable() from None

    # ------------------------------------------------------------------ availability

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (every call raises `StateUnavailable` at once)."""
        return not self._link.available

    @property
    def outages(self) -> int:
        return self._link.outages

    async def close(self) -> None:
        await self._link.close()
        await self._batch.drain()
        if self._own_client:
            await self._client.aclose()
