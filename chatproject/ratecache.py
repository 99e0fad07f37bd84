"""The cache the rate-limit counters live in (RATELIMIT_USE_CACHE = "rates").

django-ratelimit counts with `cache.add(key, 0 or 1, period)` and, when the key was there,
`cache.incr(key)`. Django's Redis `incr` asks EXISTS first (to raise for a missing key, as the
cache API says) and then INCR: two round trips on every counted request. Here INCR goes in one
pipeline with an `EXPIRE NX`: one round trip, and a key that expired between the two calls
(INCR then makes it again) still gets a lifetime, never a counter that lives for good. Every
counter key names its own window, so such a late key is never read again anyway.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

# Longer than any window's last use: a day, the longest period a rate may name, and a margin.
ORPHAN_SECONDS = 86_400 + 60


class CounterRedisCacheClient(RedisCacheClient):
    def incr(self, key: Any, delta: int) -> Any:
        pipeline = self.get_client(key, write=True).pipeline(transaction=False)
        pipeline.incr(key, delta)
        pipeline.expire(key, ORPHAN_SECONDS, nx=True)
        value, _ = pipeline.execute()
        return value


class CounterRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = CounterRedisCacheClient
