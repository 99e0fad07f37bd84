"""Login protection: django-axes' database handler with a backoff before its lockout.

axes counts failed logins per username and per client address in AccessAttempt rows (shared by
every process through the database) and locks one out at AXES_FAILURE_LIMIT failures within
AXES_COOLOFF_TIME. This subclass adds the step before that: from LOGIN_BACKOFF_AFTER failures
on, the next attempt is refused until LOGIN_BACKOFF_SECONDS (doubling with each further
failure) have passed since the last one, so a guessing loop slows down long before the lockout
while a person who mistyped twice never notices. It also says how long a refusal lasts, for the
429's Retry-After.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone


class BackoffDatabaseHandler(AxesDatabaseHandler):
    def is_locked(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> bool:
        return self.locked_until(request, credentials) is not None

    def locked_until(
        self, request: HttpRequest, credentials: dict[str, Any] | None = None
    ) -> datetime | None:
        """When this request's username and address may try again; None if they may now.

        Each lockout parameter (the username, the address) is judged on its own rows, and the
        later of their ends wins. A lockout ends when enough of its rows have aged out of the
        cool-off window (each row ages from its own last failure) that fewer than the limit
        remain; a backoff ends its delay after the newest failure."""
        now: datetime = getattr(request, "axes_attempt_time", None) or timezone.now()
        limit = settings.AXES_FAILURE_LIMIT
        cool_off: timedelta = settings.AXES_COOLOFF_TIME
        ends: list[datetime] = []
        for attempts in self.get_user_attempts(request, credentials):
            rows = sorted(attempts.values_list("attempt_time", "failures_since_start"))
            failures = sum(count for _, count in rows)
            if failures >= limit:
                for attempt_time, count in rows:  # oldest first: the order they age out
                    failures -= count
                    if failures < limit:
                        ends.append(attempt_time + cool_off)
                        break
            elif rows and (delay := backoff_delay(failures)):
                ends.append(rows[-1][0] + delay)
        end = max(ends, default=None)
        return end if end is not None and end > now else None


def backoff_delay(failures: int) -> timedelta | None:
    """How long to wait after `failures` failures (below the lockout limit)."""
    start, base = settings.LOGIN_BACKOFF_AFTER, settings.LOGIN_BACKOFF_SECONDS
    if not base or failures < start:
        return None
    return timedelta(seconds=base * 2 ** (failures - start))


def retry_after_seconds(request: HttpRequest) -> int:
    """Whole seconds until the refused login may be tried again (at least 1)."""
    handler = AxesProxyHandler.get_implementation()
    credentials = getattr(request, "axes_credentials", None)
    until = (
        handler.locked_until(request, credentials)
        if isinstance(handler, BackoffDatabaseHandler)
        else None
    )
    if until is None:
        return 1
    now: datetime = getattr(request, "axes_attempt_time", None) or timezone.now()
    return max(1, math.ceil((until - now).total_seconds()))
