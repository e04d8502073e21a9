"""Per-API-key rate limiting (GCRA, i.e. a token bucket stored as a single timestamp).

A key may spend ``burst`` tokens at once; tokens come back at ``rate_per_second``. ``rate_per_second <= 0`` means
unlimited: every hit is allowed and no state is kept. ``MemoryRateLimiter`` limits per process; ``RedisRateLimiter``
shares one budget across workers and servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger("lexecon.server")

# Float timestamps drift by a few ULPs; without slack the burst-th request could be refused by 1e-16 of a token.
_EPS = 1e-6
# While Redis is down only one request per interval probes it, so an outage costs at most one `timeout` per interval.
_PROBE_INTERVAL = 1.0
# Swept per insertion so eviction work stays O(1) amortised and never holds the lock for long.
_SWEEP = 8


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int  # burst size (the bucket capacity)
    remaining: int  # whole tokens left after this request
    retry_after: float  # seconds until this request's cost is available (one token when cost=1); 0 when allowed


@runtime_checkable
class RateLimiter(Protocol):
    async def hit(self, key: str, cost: int = 1) -> RateDecision: ...
    async def aclose(self) -> None: ...


def _validate(rate_per_second: float, burst: int) -> None:
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
    if not math.isfinite(rate_per_second):
        raise ValueError(f"rate_per_second must be finite (<= 0 means unlimited), got {rate_per_second!r}")


def _check_cost(cost: int, burst: int) -> None:
    # A cost above the capacity could never be admitted; that is a caller bug, not a refusal.
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= burst:
        raise ValueError(f"cost must be an integer between 1 and burst ({burst}), got {cost!r}")


class MemoryRateLimiter:
    """In-process limiter. Safe to share between the event loop and worker threads.

    At most ``max_keys`` buckets are kept. Full buckets go first, then the least recently used. An evicted key
    starts again with a full bucket, which is the state any idle key reaches on its own, so evicting full buckets
    changes nothing and evicting the LRU one only matters with more than ``max_keys`` keys active at once.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _validate(rate_per_second, burst)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer >= 1, got {max_keys!r}")
        self._burst = burst
        self._interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
        self._max_keys = max_keys
        self._clock = clock
        # key -> theoretical arrival time: when the bucket is full again. Ordered oldest-use first.
        self._tats: OrderedDict[str, float] = OrderedDict()
        # A threading lock, not an asyncio one: the critical section is pure arithmetic with no await, so it cannot
        # deadlock or stall the loop, and it also protects callers from uvicorn's threadpool.
        self._lock = threading.Lock()

    async def hit(self, key: str, cost: int = 1) -> RateDecision:
        return self._take(key, cost)

    def _take(self, key: str, cost: int) -> RateDecision:
        _check_cost(cost, self._burst)
        burst, interval = self._burst, self._interval
        if not interval:
            return RateDecision(True, burst, burst, 0.0)
        with self._lock:
            now = self._clock()  # read under the lock so concurrent hits see time move forward in order
            tat = max(self._tats.get(key, now), now)
            debt = (tat - now) / interval + cost  # tokens owed if this request is admitted
            if debt > burst + _EPS:
                if key in self._tats:
                    self._tats.move_to_end(key)  # a key hammering us must not be evicted as "idle"
                left = max(0, math.floor(burst - (tat - now) / interval + _EPS))
                return RateDecision(False, burst, left, (debt - burst) * interval)
            self._store(key, now + debt * interval, now)
        return RateDecision(True, burst, max(0, math.floor(burst - debt + _EPS)), 0.0)

    def _store(self, key: str, tat: float, now: float) -> None:
        tats = self._tats
        if key in tats:
            tats[key] = tat
            tats.move_to_end(key)
            return
        for _ in range(_SWEEP):
            if not tats or next(iter(tats.values())) > now:
                break
            tats.popitem(last=False)
        while len(tats) >= self._max_keys:
            tats.popitem(last=False)
        tats[key] = tat

    async def aclose(self) -> None:
        with self._lock:
            self._tats.clear()


# GCRA on the Redis server's clock (TIME), so workers with skewed clocks agree. Times are in microseconds. The key
# expires when the bucket would be full again, which is exactly when forgetting it changes nothing.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local debt = (tat - now) / interval + cost
if debt > burst + eps then
  return {0, math.max(0, math.floor(burst - (tat - now) / interval + eps)), math.ceil((debt - burst) * interval)}
end
local new_tat = now + debt * interval
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, math.max(0, math.floor(burst - debt + eps)), 0}
"""


class RedisRateLimiter:
    """Limiter whose budget is shared by every process pointing at the same Redis.

    If Redis fails or takes longer than ``timeout`` seconds, the hit is decided by ``fallback`` (per-process limits)
    and one warning is logged per outage; Redis is probed again at most once a second and used as soon as it
    answers. Rate limiting is a defence against abuse, not the governance decision, so degrading to per-process
    limits beats refusing all traffic or stalling every request on a dead dependency.
    """

    def __init__(
        self,
        url: str,
        rate_per_second: float,
        burst: int,
        *,
        prefix: str = "lexecon:rl:",
        timeout: float = 0.25,
        fallback: MemoryRateLimiter | None = None,
    ) -> None:
        _validate(rate_per_second, burst)
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._burst = burst
        self._interval_us = 1e6 / rate_per_second if rate_per_second > 0 else 0.0
        self._prefix = prefix
        self._timeout = timeout
        self._fallback = fallback if fallback is not None else MemoryRateLimiter(rate_per_second, burst)
        # No client-side retries: a retry loop with backoff would turn a dead Redis into slow requests.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._script = self._redis.register_script(_GCRA_LUA)  # EVALSHA, loading the script on NOSCRIPT
        self._down = False
        self._probe_at = 0.0

    def _redis_key(self, key: str) -> str:
        # Hashed so that neither Redis nor anyone reading its memory or backups ever sees API key material.
        return self._prefix + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def hit(self, key: str, cost: int = 1) -> RateDecision:
        _check_cost(cost, self._burst)
        if not self._interval_us:
            return RateDecision(True, self._burst, self._burst, 0.0)
        if self._down:
            now = time.monotonic()
            if now < self._probe_at:
                return await self._fallback.hit(key, cost)
            self._probe_at = now + _PROBE_INTERVAL  # claimed before awaiting so concurrent requests don't all probe
        try:
            # Socket timeouts alone do not bound connect + EVALSHA + NOSCRIPT reload; this caps the whole hit.
            async with asyncio.timeout(self._timeout):
                reply = await self._script(
                    keys=[self._redis_key(key)], args=[repr(self._interval_us), self._burst, cost, repr(_EPS)]
                )
            allowed, remaining, retry_us = (int(v) for v in reply)
        except (RedisError, OSError, TimeoutError, ValueError, TypeError) as exc:
            if not self._down:
                self._down = True
                logger.warning(
                    "rate limiter: Redis unavailable (%s: %s); using per-process limits until it answers again",
                    type(exc).__name__,
                    exc,
                )
            self._probe_at = time.monotonic() + _PROBE_INTERVAL
            return await self._fallback.hit(key, cost)
        if self._down:
            self._down = False
            logger.info("rate limiter: Redis answers again; shared limits restored")
        return RateDecision(bool(allowed), self._burst, remaining, retry_us / 1e6)

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._fallback.aclose()


def make_rate_limiter(rate_per_second: float, burst: int, redis_url: str | None) -> RateLimiter:
    """The server's limiter: shared through Redis when ``redis_url`` is set, otherwise in-process."""
    if redis_url and rate_per_second > 0:  # unlimited needs no shared state, so no Redis connection either
        return RedisRateLimiter(redis_url, rate_per_second, burst)
    return MemoryRateLimiter(rate_per_second, burst)
