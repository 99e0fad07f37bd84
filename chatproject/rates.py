"""The per-address rate limit on HTTP API requests: one middleware in front of every API door.

It counts each request to the native API (/api/), Chat Svc (/chat-svc/) and AI-at-Work's
upload (/upload) against the client's address (chatproject.client_ip, which trusts
X-Forwarded-For only as far as TRUSTED_PROXY_COUNT says) and refuses, before authentication or
any view, with the 429 each door's clients expect. The web UI's pages, static files, the admin
and logins are not counted here (logins have their own guard, django-axes). Per-user limits are
the conversation layer's (threads.rates); sockets count their connects in HubSocket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from chatproject.api import error_body
from chatproject.client_ip import client_ip
from threads.errors import RateLimited, retry_after_headers
from threads.rates import Limit, address_take

API_PATHS = ("/api/", "/chat-svc/", "/upload")


def refusal_response(path: str, exc: RateLimited) -> JsonResponse:
    """The refusal in the shape of the door the path belongs to (docs/limits.md)."""
    headers = retry_after_headers(exc)
    if path.startswith("/chat-svc/"):
        body: dict[str, Any] = {"error": exc.message}  # messaging.compat.chat_svc's shape
    elif path.startswith("/upload"):
        body = {"message": exc.message, "data": None}  # aiatwork.upload_exception_handler's
    else:
        body = error_body(exc.code, exc.message, exc.fields)
    return JsonResponse(body, status=exc.status, headers=headers)


def _refusal(request: HttpRequest) -> JsonResponse | None:
    try:
        address_take(limit=Limit.IP_REQUESTS, address=client_ip(request))
    except RateLimited as exc:
        return refusal_response(request.path, exc)
    return None


class AddressRateLimitMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        # Counting in process memory (the embedded profile) is a dict update: done on the event
        # loop. Over Redis it is a network round trip, which must not block the loop.
        self._counts_in_memory = isinstance(caches[settings.RATELIMIT_USE_CACHE], LocMemCache)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self._is_async:
            return self._acall(request)
        if settings.RATE_LIMITS and request.path.startswith(API_PATHS):
            refused = _refusal(request)
            if refused is not None:
                return refused
        response: HttpResponseBase = self.get_response(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if settings.RATE_LIMITS and request.path.startswith(API_PATHS):
            if self._counts_in_memory:
                refused = _refusal(request)
            else:
                refused = await sync_to_async(_refusal, thread_sensitive=False)(request)
            if refused is not None:
                return refused
        response: HttpResponseBase = await self.get_response(request)
        return response
