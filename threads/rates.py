"""Rate limits: how many requests of one kind a user, or a client address, may make in a window.

The counting is django-ratelimit's core (`get_usage`): fixed windows (each key's window ends at
its own offset, so not every client's resets in the same second), one counter per key in the
"rates" cache. With REDIS_URL that cache is Redis, so every daphne process counts into the same
keys and a limit holds across the deployment; the embedded profile counts in process memory
(LocMem), which is the whole deployment there.

Every attempt that reaches a check counts, a refused one too: the window does not move, so a
client hammering a refusal waits no longer than one that waits, and it gains nothing either.
Checks come before any write, so a refused request leaves nothing behind.

Per user: posts, AI replies, uploads, socket connects and subscribes, checked where every door
goes through (agents.services.conversation, messaging.consumers.HubSocket). Per client address:
every HTTP API request and every socket connect (chatproject.rates, HubSocket).
"""

from __future__ import annotations

import ipaddress
import logging
from enum import StrEnum

from django.conf import settings
from django.core.cache import caches
from django_ratelimit.core import get_usage

from threads.errors import RateLimited
from threads.models import GroupLimits, User
from threads.ratespec import describe, more_generous, parse_rate

logger = logging.getLogger(__name__)


class Limit(StrEnum):
    """Each limit; its value names the GroupLimits field and is the counters' group."""

    POSTS = "posts"
    REPLIES = "replies"
    UPLOADS = "uploads"
    WS_CONNECTS = "ws_connects"
    WS_SUBSCRIBES = "ws_subscribes"
    # Per client address; not set per group (an address is not a member of anything).
    IP_REQUESTS = "ip_requests"
    IP_WS_CONNECTS = "ip_ws_connects"


USER_LIMITS = (Limit.POSTS, Limit.REPLIES, Limit.UPLOADS, Limit.WS_CONNECTS, Limit.WS_SUBSCRIBES)

_REFUSALS = {
    Limit.POSTS: "Too many messages",
    Limit.REPLIES: "Too many AI replies asked for",
    Limit.UPLOADS: "Too many uploads",
    Limit.WS_CONNECTS: "Too many socket connections",
    Limit.WS_SUBSCRIBES: "Too many subscriptions",
    Limit.IP_REQUESTS: "Too many requests from this address",
    Limit.IP_WS_CONNECTS: "Too many socket connections from this address",
}


def default_rate(limit: Limit) -> str:
    rate: str = getattr(settings, f"RATE_LIMIT_{limit.upper()}")
    return rate


def _user_rates_key(user_id: str) -> str:
    return f"rates:user:{user_id}"


def user_rates(*, user: User) -> dict[str, str]:
    """The rates that apply to `user`: for each limit, the most generous one among the groups
    that set it, else the default. Cached in this process for RATE_LIMIT_GROUP_CACHE_SECONDS
    (a change in the admin reaches the other processes within that time), so a request costs
    neither a query nor a round trip for it."""
    cache = caches["local"]
    key = _user_rates_key(user.pk)
    rates: dict[str, str] | None = cache.get(key)
    if rates is None:
        rates = {limit: default_rate(limit) for limit in USER_LIMITS}
        set_by_groups: dict[str, str] = {}
        for row in GroupLimits.objects.filter(group__user=user).values(*USER_LIMITS):
            for field, value in row.items():
                if value:
                    best = set_by_groups.get(field)
                    set_by_groups[field] = value if best is None else more_generous(best, value)
        rates |= set_by_groups
        cache.set(key, rates, settings.RATE_LIMIT_GROUP_CACHE_SECONDS)
    return rates


def user_rates_forget(*, user_ids: list[str]) -> None:
    """Drop cached rates in this process (the admin calls this for a group's members when its
    limits change; other processes see the change when their copies expire)."""
    caches["local"].delete_many([_user_rates_key(user_id) for user_id in user_ids])


def rate_take(*, limit: Limit, key: str, rate: str) -> None:
    """Count one request against `limit` for `key` at `rate`; RateLimited (retry_after: the
    seconds until the window resets) when it is over."""
    parsed = parse_rate(rate)
    if parsed is None or not settings.RATE_LIMITS:
        return
    try:
        usage = get_usage(
            None,  # the key below is a callable, so django-ratelimit never reads a request
            group=limit.value,
            key=lambda group, request: key,
            rate=parsed,
            increment=True,
        )
    except Exception:
        # The counters are abuse protection, not accounting (budgets are): a cache outage lets
        # requests through rather than refusing everyone (RATELIMIT_FAIL_OPEN, likewise).
        logger.warning("rate limit %s not checked: the cache failed", limit, exc_info=True)
        return
    if usage is None or not usage["should_limit"]:
        return
    # django-ratelimit's window still holds at its last second (time_left 0): the next window
    # starts one second after it.
    retry_after = max(1, int(usage["time_left"]) + 1)
    raise RateLimited(
        f"{_REFUSALS[limit]}: at most {describe(rate)}. Try again in {retry_after} s.",
        retry_after=retry_after,
    )


def user_take(*, user: User, limit: Limit) -> None:
    """Count one request of `user` against `limit` (at the user's rate, groups included)."""
    if not settings.RATE_LIMITS:
        return
    rate_take(limit=limit, key=user.pk, rate=user_rates(user=user)[limit])


def address_take(*, limit: Limit, address: str | None) -> None:
    """Count one request from the client `address` (None, unknown: not counted). An IPv6
    client holds a whole /64, so that is what counts as one address."""
    if address is None or not settings.RATE_LIMITS:
        return
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        address = str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)
    rate_take(limit=limit, key=address, rate=default_rate(limit))
