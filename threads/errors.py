"""Errors a service or selector raises. Every interface (REST, WebSocket, compat) turns them into
its own wire shape; the REST one is `{"error": {"code", "message", "fields"}}`."""

from __future__ import annotations

import math
from typing import Any


class ApplicationError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class Invalid(ApplicationError):
    status = 400
    code = "invalid"


class Forbidden(ApplicationError):
    status = 403
    code = "permission_denied"


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"


class TooLarge(ApplicationError):
    status = 413
    code = "too_large"


class RetryLater(ApplicationError):
    """A refusal the caller can retry later: `retry_after` whole seconds, at least 1, which every
    door sends its own way (the `Retry-After` header, a socket frame's `retryAfter`)."""

    def __init__(
        self, message: str, *, retry_after: float, fields: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, fields=fields)
        self.retry_after = max(1, math.ceil(retry_after))


class TooManyRequests(RetryLater):
    status = 429
    code = "too_many_requests"


class Unavailable(RetryLater):
    """A part the request needs (the database) is not answering; nothing was half-stored."""

    status = 503
    code = "unavailable"


class RateLimited(TooManyRequests):
    """Too many requests of one kind in a window (threads.rates; chatproject.rates for the
    per-address API limit)."""

    code = "rate_limited"


class ReplyQueueFull(TooManyRequests):
    """The caller already has as many AI replies waiting as a user may queue."""

    code = "reply_queue_full"


class BudgetExceeded(TooManyRequests):
    """A reply could spend past a daily or monthly budget; `retry_after` is when it resets."""

    code = "budget_exceeded"


def retry_after_headers(exc: ApplicationError) -> dict[str, str]:
    """The `Retry-After` header of a refusal that has one, for every HTTP door."""
    if isinstance(exc, RetryLater):
        return {"Retry-After": str(exc.retry_after)}
    return {}
