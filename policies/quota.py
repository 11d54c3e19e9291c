"""quota (priority 300): per-grant limits per minute and per day (UTC windows), shared by every replica of the
consumer's home gateway through Redis, without a Redis round trip per call.

Each worker leases blocks of tokens from Redis (one Lua script checks both windows and takes the block atomically,
so Redis never hands out more than the limit) and spends them locally. The lease size follows the worker's own rate
for the grant (about one second of its calls, doubling through a burst, 1..MAX_LEASE) and shrinks near the limit,
so a steady client costs about one Redis call per second per worker. Leases belong to their window and are dropped
when it turns, so a lease never spills into the next window. Over the limit: 429 `quota-exceeded` with Retry-After
(seconds to the end of the exhausted window), answered locally until that window ends.

Redis unreachable (documented rule, docs/policies.md): fail open within a bound. A worker keeps spending the tokens
it holds, then admits at most max(1, per_minute // 10) further calls per grant and minute window, then refuses with
429. Calls admitted that way are charged to Redis (without a limit check) on the first lease after it is back.

Redis keys (quota_keys): `quota:{<grant id>}:m:<minute number>` and `quota:{<grant id>}:d:<day number>` (minutes and
days since the epoch, UTC). The braces are a hash tag: on a Redis Cluster both keys of a grant hash to one slot, so
the lease script that checks and takes both windows runs on one node, atomically. A grant id is unique in the mesh
and belongs to one consumer, so the tag needs nothing more. Plain redis://, Sentinel and cluster URLs all work.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from redis.commands.core import Script

from lienthong.problem import Problem
from lienthong.redis_connection import STORE_ERRORS, DeferredClient
from policies.base import CallContext, PolicyBase, read_subjects
from policies.chain import ChainConfig

log = logging.getLogger("lienthong.policies.quota")

MAX_LEASE = 100
REDIS_BACKOFF = 1.0  # seconds without trying Redis on the hot path after a failure
NO_LIMIT = -1

# KEYS: minute key, day key. ARGV: minute limit, day limit (-1: none), wanted, minute debt, day debt, minute ttl,
# needed (the fewest tokens that let the call through: its items not yet covered by the worker's own tokens).
# Returns {granted, window: "m", "d" or "", left in that window}: granted is 0 or at least `needed`, never part of a
# call. Near the limit a lease is at most a quarter of what is left (but never less than needed), so the last tokens
# spread over the workers instead of sitting in one.
LEASE_SCRIPT = """
local lm, ld = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, debt_m, debt_d = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local need = tonumber(ARGV[7])
local cm = tonumber(redis.call('GET', KEYS[1]) or '0') + debt_m
local cd = tonumber(redis.call('GET', KEYS[2]) or '0') + debt_d
local grant, which, short = want, '', 0
local function cap(limit, used, name)
  if limit < 0 or grant == 0 then return end
  local left = limit - used
  local allowed = 0
  if left >= need then allowed = math.max(need, math.floor(left / 4)) end
  if allowed < grant then
    grant = allowed
    if allowed == 0 then which = name; short = math.max(0, left) end
  end
end
cap(lm, cm, 'm')
cap(ld, cd, 'd')
if grant + debt_m > 0 then
  redis.call('INCRBY', KEYS[1], grant + debt_m)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
end
if grant + debt_d > 0 then
  redis.call('INCRBY', KEYS[2], grant + debt_d)
  redis.call('EXPIRE', KEYS[2], 172800)
end
return {grant, which, short}
"""


def quota_keys(grant_id: str, minute: int, day: int) -> tuple[str, str]:
    """The minute and day counters of a grant, tagged with the grant id so both are on one cluster slot."""
    return f"quota:{{{grant_id}}}:m:{minute}", f"quota:{{{grant_id}}}:d:{day}"


@dataclass
class _Bucket:
    minute: int = -1
    day: int = -1
    tokens: int = 0
    exhausted_until: float = 0.0
    rate_started: float = 0.0
    rate_calls: int = 0
    last_rate: int = 1
    outage_admitted: int = 0
    debt_minute: int = 0  # admitted without Redis in `minute`, not yet charged
    debt_day: int = 0
    last_lease: int = 0
    lease_at: float = 0.0


def _too_many(retry_after: float, detail: str, quota: str | None = None) -> Problem:
    """429 with Retry-After; `quota` names the exhausted limit (per_minute or per_day) when it is known."""
    seconds = max(1, math.ceil(retry_after))
    extra = {"quota": quota} if quota is not None else {}
    return Problem(429, "quota-exceeded", detail, headers={"Retry-After": str(seconds)}, retry_after=seconds, **extra)


class Quota(PolicyBase):
    name = "quota"
    priority = 300

    def __init__(self, redis_url: str) -> None:
        self._redis = DeferredClient(redis_url, connect_timeout=0.25, timeout=0.25)
        self._lease: Script | None = None
        self._buckets: dict[str, _Bucket] = {}
        self._redis_down_until = 0.0
        self.leases = 0  # Redis round trips taken, for tests and metrics

    def access(self, ctx: CallContext) -> None:
        grant = ctx.grant
        if ctx.role == "provider" or grant is None or (grant.per_minute is None and grant.per_day is None):
            return
        endpoint = ctx.endpoint
        if endpoint is not None and endpoint.subjects is not None and endpoint.subjects.batch is not None:
            read_subjects(ctx)  # a batch spends one token per item (ctx.items); an unreadable one is a 400 here
        items = ctx.items
        now = time.time()
        minute, day = int(now // 60), int(now // 86400)
        b = self._buckets.get(grant.id)
        if b is None:
            b = self._buckets[grant.id] = _Bucket()
        if b.minute != minute or b.day != day:
            # debt belongs to its window: once that window is over, charging it would only cut the new one
            b.debt_minute = 0
            if b.day != day:
                b.debt_day = 0
            b.minute, b.day, b.tokens, b.outage_admitted = minute, day, 0, 0
            if b.exhausted_until <= now:
                b.exhausted_until = 0.0
        if now < b.exhausted_until:
            raise _too_many(b.exhausted_until - now, f"grant {grant.id} is over its quota")
        if now - b.rate_started >= 1.0:
            b.last_rate, b.rate_calls, b.rate_started = max(1, b.rate_calls), 0, now
        b.rate_calls += items
        if b.tokens >= items:
            b.tokens -= items
            return
        self._take_lease(grant.id, grant.per_minute, grant.per_day, b, now, items)

    def _take_lease(
        self, grant_id: str, per_minute: int | None, per_day: int | None, b: _Bucket, now: float, items: int = 1
    ) -> None:
        """Lease at least the call's items not covered by the worker's own tokens, or refuse the call whole."""
        minute_end, day_end = (b.minute + 1) * 60.0, (b.day + 1) * 86400.0
        need = items - b.tokens
        if now >= self._redis_down_until:
            # about a second of this worker's calls; doubled when the last lease ran out within a second (a burst)
            quick = now - b.lease_at < 1.0
            want = max(need, min(MAX_LEASE, max(b.last_rate, b.last_lease * 2 if quick else 1)))
            keys = list(quota_keys(grant_id, b.minute, b.day))
            args = [
                NO_LIMIT if per_minute is None else per_minute,
                NO_LIMIT if per_day is None else per_day,
                want,
                b.debt_minute,
                b.debt_day,
                120,
                need,
            ]
            try:
                if self._lease is None:
                    self._lease = self._redis.get().register_script(LEASE_SCRIPT)
                granted, which, left = self._lease(keys=keys, args=args)
            except STORE_ERRORS as exc:
                log.warning("quota store unreachable, admitting within the outage allowance: %s", exc)
                self._redis_down_until = now + REDIS_BACKOFF
            else:
                b.debt_minute = b.debt_day = 0
                self.leases += 1
                granted, left = int(granted), int(left) + b.tokens
                b.last_lease, b.lease_at = granted, now
                if granted > 0:
                    b.tokens += granted - items
                    return
                daily = which in (b"d", "d")
                exhausted = day_end if daily else minute_end
                window = "per_day" if daily else "per_minute"
                if left <= 0:  # the window is spent: answer locally until it ends
                    b.exhausted_until = exhausted
                    raise _too_many(exhausted - now, f"grant {grant_id} is over its {window} quota", window)
                # only this call is too big for what is left: refused whole, smaller calls still pass
                raise _too_many(exhausted - now, f"grant {grant_id} has {left} of its {window} quota left and this "
                                f"call asks for {items}", window)  # fmt: skip
        allowance = max(1, (per_minute if per_minute is not None else MAX_LEASE * 10) // 10)
        if b.outage_admitted + items <= allowance:
            b.outage_admitted += items
            b.debt_minute += items
            b.debt_day += items
            return
        raise _too_many(minute_end - now, "the quota store is unreachable and this worker's outage allowance is spent")

    async def stop(self) -> None:
        """Give back the tokens this worker holds for the current windows so other replicas can use them."""
        now = time.time()
        minute, day = int(now // 60), int(now // 86400)
        try:
            pipe = self._redis.get().pipeline(transaction=False)  # on a cluster, split per node by redis-py
            for grant_id, b in self._buckets.items():
                if b.tokens > 0 and b.minute == minute and b.day == day:
                    for key in quota_keys(grant_id, minute, day):
                        pipe.decrby(key, b.tokens)
                    b.tokens = 0
            pipe.execute()
        except STORE_ERRORS:
            log.warning("could not return unused quota leases; they expire with their window")
        self._redis.close()


def build(cfg: ChainConfig) -> Quota:
    return Quota(cfg.redis_url)
