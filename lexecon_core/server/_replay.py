"""Single use of capability tokens across every worker and server: the replay cache in Redis.

Without ``LEXECON_REDIS_URL`` the in-process :class:`~lexecon_core.tokens.ReplayCache` is used, which protects one
process. With Redis, a token consumed through any server is refused by all of them. If Redis cannot answer, a
consuming check fails closed: a token whose single use cannot be recorded does not verify.
"""

from __future__ import annotations

import hashlib

import redis

from lexecon_core.errors import TokenError
from lexecon_core.tokens import ReplayCache


class RedisReplayCache(ReplayCache):
    def __init__(self, url: str, *, prefix: str = "lexecon:jti:", timeout: float = 0.5) -> None:
        super().__init__()
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    def use(self, jti: str, expires_at: int, *, now: float | None = None) -> None:
        key = self._prefix + hashlib.sha256(jti.encode()).hexdigest()
        try:
            # SET NX is the atomic "first use wins"; the key lives as long as the token could still be presented.
            first = self._redis.set(key, b"1", nx=True, exat=max(int(expires_at), 1))
        except redis.RedisError as exc:
            raise TokenError(
                "replay_check_unavailable", f"cannot record the token's use (Redis: {type(exc).__name__})"
            ) from None
        if not first:
            raise TokenError("replayed", "capability token has already been used")

    def close(self) -> None:
        self._redis.close()
