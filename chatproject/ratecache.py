"""The cache the rate-limit counters live in (RATELIMIT_USE_CACHE = "rates").

django-ratelimit counts with `cache.add(key, 0 or 1, period)` and, when the key was there,
`cache.incr(key)`. Django's Redis `incr` asks EXISTS first (to raise for a missing key, as the
cache API says) and then INCR: two round trips on every counted request. Here INCR goes in one
pipeline with an `EXPIRE NX`: one round trip, and a key that expired between the two calls
(INCR then makes it again) still gets a lifetime, never a counter that lives for good. Every
counter key names its own window, so such a late key is never read again anyway.

And the client is made once: Django's makes a new `redis.Redis` for every call, which in
redis-py 8 costs more CPU than the round trip itself (a redis.Redis is thread-safe; it takes
connections from the shared pool).
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis import Redis

# Longer than any window's last use: a day, the longest period a rate may name, and a margin.
ORPHAN_SECONDS = 86_400 + 60


class CounterRedisCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._clients: dict[bool, Redis] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Redis:
        # One for writes, one for reads: with several servers, this process reads the counters
        # from the one replica it picked first (the counting itself always writes).
        client = self._clients.get(write)
        if client is None:
            client = self._clients.setdefault(write, super().get_client(key, write=write))
        return client

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
