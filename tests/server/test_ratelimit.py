"""Per-API-key rate limiting: GCRA semantics, bounded memory, no over-admission, Redis sharing and fallback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

redis = pytest.importorskip("redis")

from lexecon_core.server import _ratelimit  # noqa: E402
from lexecon_core.server._ratelimit import (  # noqa: E402
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    make_rate_limiter,
)

T = TypeVar("T")
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def hits(limiter: RateLimiter, key: str, n: int) -> list[RateDecision]:
    async def go() -> list[RateDecision]:
        return [await limiter.hit(key) for _ in range(n)]

    return run(go())


# -- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "match"),
    [
        (1.0, 0, "burst"),
        (1.0, -3, "burst"),
        (1.0, 2.5, "burst"),
        (1.0, True, "burst"),
        (float("nan"), 5, "rate"),
        (float("inf"), 5, "rate"),
    ],
)
def test_invalid_arguments(rate: float, burst: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemoryRateLimiter(rate, burst)
    with pytest.raises(ValueError, match=match):
        RedisRateLimiter(CLOSED_PORT_URL, rate, burst)
    with pytest.raises(ValueError, match=match):
        make_rate_limiter(rate, burst, None)


def test_invalid_options_and_cost() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryRateLimiter(1.0, 5, max_keys=0)
    with pytest.raises(ValueError, match="timeout"):
        RedisRateLimiter(CLOSED_PORT_URL, 1.0, 5, timeout=0)
    lim = MemoryRateLimiter(1.0, 5)
    for cost in (0, -1, 6, 1.5):
        with pytest.raises(ValueError, match="cost"):
            run(lim.hit("k", cost))  # type: ignore[arg-type]


# -- in-memory ----------------------------------------------------------------------------------------------------


def test_memory_burst_then_refusal_and_refill() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(2.0, 5, clock=clock)  # a token every 0.5 s
    decisions = hits(lim, "k", 6)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    assert [d.retry_after for d in decisions[:5]] == [0.0] * 5
    assert decisions[5].retry_after == pytest.approx(0.5)

    clock.t += 0.25
    refused = hits(lim, "k", 1)[0]
    assert not refused.allowed and refused.retry_after == pytest.approx(0.25)
    clock.t += 0.25
    allowed, refused = hits(lim, "k", 2)
    assert allowed == RateDecision(True, 5, 0, 0.0)
    assert (refused.allowed, refused.remaining) == (False, 0) and refused.retry_after == pytest.approx(0.5)
    clock.t += 10  # long idle: back to a full bucket, never more
    assert [d.allowed for d in hits(lim, "k", 6)] == [True] * 5 + [False]


def test_memory_cost() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(1.0, 5, clock=clock)
    assert run(lim.hit("k", 3)) == RateDecision(True, 5, 2, 0.0)
    refused = run(lim.hit("k", 3))
    assert not refused.allowed and refused.remaining == 2 and refused.retry_after == pytest.approx(1.0)
    clock.t += 1.0
    assert run(lim.hit("k", 3)) == RateDecision(True, 5, 0, 0.0)


def test_memory_independent_keys() -> None:
    lim = MemoryRateLimiter(1.0, 2, clock=FakeClock())
    assert [d.allowed for d in hits(lim, "alice", 3)] == [True, True, False]
    assert [d.allowed for d in hits(lim, "bob", 3)] == [True, True, False]


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_unlimited(rate: float) -> None:
    lim = make_rate_limiter(rate, 3, "redis://127.0.0.1:1/0")
    assert isinstance(lim, MemoryRateLimiter)  # no Redis needed for "unlimited"
    assert all(d == RateDecision(True, 3, 3, 0.0) for d in hits(lim, "k", 1000))
    assert not lim._tats  # no state kept


def test_make_rate_limiter_picks_backend() -> None:
    assert isinstance(make_rate_limiter(1.0, 3, None), MemoryRateLimiter)
    assert isinstance(make_rate_limiter(1.0, 3, ""), MemoryRateLimiter)
    lim = make_rate_limiter(1.0, 3, CLOSED_PORT_URL)
    assert isinstance(lim, RedisRateLimiter) and isinstance(lim, RateLimiter)
    run(lim.aclose())


def test_memory_bounded_under_many_keys() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(1.0, 3, max_keys=100, clock=clock)

    async def flood() -> int:
        most = 0
        for i in range(10_000):
            await lim.hit(f"key-{i}")
            most = max(most, len(lim._tats))
        return most

    assert run(flood()) == 100
    # A key in active use survives a flood of new keys; the least recently used ones go.
    lim = MemoryRateLimiter(1.0, 2, max_keys=3, clock=clock)
    hits(lim, "hot", 2)
    hits(lim, "b", 1)
    hits(lim, "c", 1)
    assert not hits(lim, "hot", 1)[0].allowed  # refused, and touched
    hits(lim, "d", 1)
    assert list(lim._tats) == ["c", "hot", "d"]
    assert not hits(lim, "hot", 1)[0].allowed


def test_memory_full_buckets_are_dropped_first() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(1.0, 2, max_keys=1000, clock=clock)
    for i in range(50):
        run(lim.hit(f"old-{i}"))
    clock.t += 100  # every bucket is full again: forgetting them changes nothing
    for i in range(10):
        run(lim.hit(f"new-{i}"))
    assert len(lim._tats) <= 10


def test_memory_threads_never_over_admit() -> None:
    lim = MemoryRateLimiter(0.001, 10)  # real clock, negligible refill during the test
    n = 64
    barrier = threading.Barrier(n)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        d = asyncio.run(lim.hit("shared"))
        with lock:
            results.append(d.allowed)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == n and sum(results) == 10


def test_memory_tasks_never_over_admit() -> None:
    lim = MemoryRateLimiter(0.001, 10)

    async def go() -> list[RateDecision]:
        return list(await asyncio.gather(*(lim.hit("shared") for _ in range(200))))

    assert sum(d.allowed for d in run(go())) == 10


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 20)), min_size=1, max_size=60),
)
def test_memory_matches_token_bucket(rate: float, burst: int, steps: list[tuple[float, int]]) -> None:
    """Admitted cost over any window never exceeds burst + rate * window, and retry_after is exact."""
    clock = FakeClock(0.0)
    lim = MemoryRateLimiter(rate, burst, clock=clock)
    admitted: list[tuple[float, int]] = []
    for dt, cost in steps:
        clock.t += dt
        cost = min(cost, burst)
        d = lim._take("k", cost)
        if d.allowed:
            admitted.append((clock.t, cost))
            assert 0 <= d.remaining <= burst - cost and d.retry_after == 0
        else:
            assert 0 <= d.remaining < cost and d.retry_after > 0
            # Refused just before retry_after (allowing the limiter's 1e-6-token float slack), admitted right after.
            probe_clock = FakeClock()
            probe = MemoryRateLimiter(rate, burst, clock=probe_clock)
            probe._tats = lim._tats.copy()
            probe_clock.t = clock.t + d.retry_after - 2e-6 / rate
            assert not probe._take("k", cost).allowed
            probe_clock.t = clock.t + d.retry_after + 1e-9
            assert probe._take("k", cost).allowed
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= burst + rate * (end - start) + 1e-5


# -- Redis --------------------------------------------------------------------------------------------------------


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = f"lexecon:test:rl:{uuid.uuid4().hex}:"
    yield p
    client = redis.Redis.from_url(redis_url)
    try:
        for k in client.scan_iter(match=p + "*"):
            client.delete(k)
    finally:
        client.close()


@pytest.fixture
def rclient(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def with_limiters(
    n: int, url: str, rate: float, burst: int, prefix: str, body: Callable[..., Awaitable[Any]], **kw: Any
) -> Any:
    async def go() -> Any:
        limiters = [RedisRateLimiter(url, rate, burst, prefix=prefix, **kw) for _ in range(n)]
        try:
            return await body(*limiters)
        finally:
            for lim in limiters:
                await lim.aclose()

    return asyncio.run(go())


def test_redis_burst_then_refusal(redis_url: str, prefix: str) -> None:
    async def body(lim: RedisRateLimiter) -> list[RateDecision]:
        return [await lim.hit("k") for _ in range(6)]

    decisions = with_limiters(1, redis_url, 2.0, 5, prefix, body)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    assert 0.4 < decisions[5].retry_after <= 0.5  # a token every 0.5 s, minus the time the hits took


def test_redis_refills(redis_url: str, prefix: str) -> None:
    async def body(lim: RedisRateLimiter) -> tuple[list[bool], bool]:
        first = [(await lim.hit("k")).allowed for _ in range(3)]
        refused = await lim.hit("k")
        await asyncio.sleep(refused.retry_after + 0.02)
        return first, (await lim.hit("k")).allowed

    first, after = with_limiters(1, redis_url, 10.0, 2, prefix, body)
    assert first == [True, True, False] and after


def test_redis_independent_keys_and_cost(redis_url: str, prefix: str) -> None:
    async def body(lim: RedisRateLimiter) -> list[RateDecision]:
        return [await lim.hit("alice", 3), await lim.hit("alice", 3), await lim.hit("bob", 3), await lim.hit("bob")]

    a1, a2, b1, b2 = with_limiters(1, redis_url, 0.001, 5, prefix, body)
    assert (a1.allowed, a1.remaining) == (True, 2)
    assert (a2.allowed, a2.remaining) == (False, 2) and a2.retry_after > 900
    assert (b1.allowed, b1.remaining, b2.allowed, b2.remaining) == (True, 2, True, 1)


def test_redis_two_workers_share_one_budget(redis_url: str, prefix: str) -> None:
    async def body(w1: RedisRateLimiter, w2: RedisRateLimiter) -> list[bool]:
        return [(await (w1 if i % 2 else w2).hit("k")).allowed for i in range(8)]

    assert with_limiters(2, redis_url, 0.001, 5, prefix, body) == [True] * 5 + [False] * 3


def test_redis_concurrent_hits_never_over_admit(redis_url: str, prefix: str) -> None:
    async def body(*workers: RedisRateLimiter) -> list[RateDecision]:
        return list(await asyncio.gather(*(workers[i % len(workers)].hit("k") for i in range(200))))

    decisions = with_limiters(4, redis_url, 0.001, 10, prefix, body, timeout=5.0)
    assert sum(d.allowed for d in decisions) == 10


def test_redis_keys_expire_when_full(redis_url: str, prefix: str, rclient: Any) -> None:
    key = prefix + hashlib.sha256(b"k").hexdigest()

    async def body(lim: RedisRateLimiter) -> tuple[int, int]:
        await lim.hit("k")
        ttl_one = rclient.pttl(key)
        await lim.hit("k")
        return ttl_one, rclient.pttl(key)

    ttl_one, ttl_two = with_limiters(1, redis_url, 1.0, 3, prefix, body)
    assert 900 < ttl_one <= 1000  # one token spent: full again after 1 s
    assert 1900 < ttl_two <= 2000

    async def fast(lim: RedisRateLimiter) -> None:
        await lim.hit("k")
        await lim.hit("k")

    rclient.delete(key)
    with_limiters(1, redis_url, 20.0, 2, prefix, fast)  # full again after 0.1 s
    assert rclient.exists(key)
    time.sleep(0.3)
    assert not rclient.exists(key)


def test_redis_stores_no_key_material(redis_url: str, prefix: str, rclient: Any) -> None:
    secret = "lx_live_" + uuid.uuid4().hex

    async def body(lim: RedisRateLimiter) -> None:
        await lim.hit(secret)

    with_limiters(1, redis_url, 1.0, 3, prefix, body)
    keys = [k.decode() for k in rclient.scan_iter(match=prefix + "*")]
    assert keys == [prefix + hashlib.sha256(secret.encode()).hexdigest()]
    assert all(secret[8:].encode() not in k for k in rclient.scan_iter(match="*"))
    assert secret.encode() not in rclient.get(keys[0])


def test_redis_unreachable_falls_back_quickly(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> list[RateDecision]:
        lim = RedisRateLimiter(CLOSED_PORT_URL, 0.001, 3)
        try:
            return [await lim.hit("k") for _ in range(10)]
        finally:
            await lim.aclose()

    caplog.set_level(logging.WARNING, logger="lexecon.server")
    start = time.monotonic()
    decisions = asyncio.run(go())
    assert time.monotonic() - start < 1.0
    assert [d.allowed for d in decisions] == [True] * 3 + [False] * 7  # still limits, per process
    warnings = [r for r in caplog.records if r.name == "lexecon.server" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()


def test_redis_unresponsive_times_out() -> None:
    """A server that accepts connections but never answers must cost at most about `timeout` per probe."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # never accepted: connect succeeds via the backlog, replies never come
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"

        async def go() -> list[RateDecision]:
            lim = RedisRateLimiter(url, 0.001, 2, timeout=0.1)
            try:
                return [await lim.hit("k") for _ in range(5)]
            finally:
                await lim.aclose()

        start = time.monotonic()
        decisions = asyncio.run(go())
        assert time.monotonic() - start < 1.0  # only the first hit waits; the rest skip Redis until the next probe
    assert [d.allowed for d in decisions] == [True, True, False, False, False]


def test_redis_recovers_after_outage(
    redis_url: str, prefix: str, rclient: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lexecon.server")
    monkeypatch.setattr(_ratelimit, "_PROBE_INTERVAL", 0.0)
    key = prefix + hashlib.sha256(b"k").hexdigest()

    async def body(lim: RedisRateLimiter) -> list[bool]:
        real = lim._script

        async def broken(**kw: Any) -> Any:
            raise redis.ConnectionError("simulated outage")

        lim._script = broken  # type: ignore[assignment]
        during = [(await lim.hit("k")).allowed for _ in range(4)]
        assert not rclient.exists(key)
        lim._script = real
        after = [(await lim.hit("k")).allowed for _ in range(3)]
        assert rclient.exists(key)
        return during + after

    allowed = with_limiters(1, redis_url, 0.001, 2, prefix, body)
    assert allowed == [True, True, False, False, True, True, False]  # fallback budget, then Redis's own
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "lexecon.server"]
    assert [lvl for lvl, _ in messages] == [logging.WARNING, logging.INFO]
    assert "answers again" in messages[1][1]


def test_aclose_closes_pool(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        lim = RedisRateLimiter(redis_url, 1.0, 3, prefix=prefix)
        await lim.hit("k")
        pool = lim._redis.connection_pool
        conns = list(pool._available_connections) + list(pool._in_use_connections)
        assert conns and any(c.is_connected for c in conns)
        await lim.aclose()
        assert not any(c.is_connected for c in conns)

    asyncio.run(go())
