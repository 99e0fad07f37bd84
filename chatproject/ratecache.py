"""The cache the rate-limit counters live in (RATELIMIT_USE_CACHE = "rates"), made to count
in one Redis round trip.

django-ratelimit counts with `cache.add(key, 1, period)` and, when that finds the key there,
`cache.incr(key)`. Over Django's Redis cache that is SET NX, then EXISTS and INCR (`incr`
checks the key first, as the cache API asks): three round trips on most counted requests, each
one a wait the request cannot use. This cache serves only counters, so its `add` counts:
INCRBY and `EXPIRE NX` in one pipeline, True when the key is new. When it was not, the `incr`
that django-ratelimit sends next for the same key on the same thread returns the count the
`add` already made, without asking Redis again; any other `incr` is a real one (INCR with
`EXPIRE NX`, so a key that expired in between gets a lifetime, never a counter for good).

And the Redis client is made once per process: Django's makes a new `redis.Redis` for every
call, which in redis-py 8 costs more CPU than the round trip, and under ASGI (caches are opened
per request context) a new connection pool, so a new connection, for every request.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis import Redis

# Longer than any window's last use: a day, the longest period a rate may name, and a margin.
ORPHAN_SECONDS = 86_400 + 60

_CLIENTS: dict[tuple[tuple[str, ...], bool], Redis] = {}


class CounterRedisCacheClient(RedisCacheClient):
    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._servers_key = tuple(servers)
        self._counted = threading.local()  # the last add's (key, count), on this thread

    def get_client(self, key: Any = None, *, write: bool = False) -> Redis:
        # One for writes, one for reads: with several servers, this process reads from the one
        # replica it picked first (the counting itself always writes).
        client = _CLIENTS.get((self._servers_key, write))
        if client is None:
            made = super().get_client(key, write=write)
            client = _CLIENTS.setdefault((self._servers_key, write), made)
        return client

    def _count(self, key: Any, delta: int, timeout: int | None) -> int:
        pipeline = self.get_client(key, write=True).pipeline(transaction=False)
        pipeline.incrby(key, delta)
        pipeline.expire(key, timeout or ORPHAN_SECONDS, nx=True)
        count, _ = pipeline.execute()
        return int(count)

    def add(self, key: Any, value: Any, timeout: Any) -> bool:
        count = self._count(key, int(value), timeout)
        self._counted.last = (key, count)
        return count == int(value)

    def incr(self, key: Any, delta: int) -> Any:
        last = getattr(self._counted, "last", None)
        self._counted.last = None
        if last is not None and last[0] == key and delta == 1:
            return last[1]  # the add just counted this request
        return self._count(key, delta, None)


class CounterRedisCache(RedisCache):
    """For rate-limit counters only: `add` counts (see the module's docstring)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = CounterRedisCacheClient
