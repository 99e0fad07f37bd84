"""WhiteNoise, able to sit in Django's async request path; outages answered as 503."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from chatproject.api import error_body, service_unavailable
from threads.errors import retry_after_headers


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise's own middleware is sync-only. Under ASGI, Django then runs every request
    through it on a worker thread and hops back to the event loop for the middleware below:
    two thread switches more on every API call, on the way in and again on the way out. This
    one awaits the rest of the chain directly and reads a static file on a thread only when it
    serves one."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any], **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self._is_async:
            return self._acall(request)
        response: HttpResponseBase = super().__call__(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:  # DEBUG: looks on disk for each request
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            response: HttpResponseBase = await sync_to_async(self.serve)(static_file, request)
            return response
        return await self.get_response(request)


class ServiceUnavailableMiddleware:
    """A view that meets a database or Redis outage answers 503 with Retry-After in the one
    error shape (chatproject.api.service_unavailable), not a 500: the HTML pages, the SSE and
    BFF doors and anything else outside DRF's handler. DRF views get the same answer from
    api_exception_handler. Chat Svc's clients get their own shape there too."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> JsonResponse | None:
        unavailable = service_unavailable(exception)
        if unavailable is None:
            return None
        return JsonResponse(
            error_body(unavailable.code, unavailable.message),
            status=unavailable.status,
            headers=retry_after_headers(unavailable),
        )
