"""WhiteNoise in the async request path: static files still served, and every other request
passed down the chain without a thread of its own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, RequestFactory

from chatproject.middleware import AsyncWhiteNoiseMiddleware

pytestmark = pytest.mark.django_db(transaction=True)


def _static_file() -> str:
    """The URL of one of the project's own static files."""
    path = next(p for p in sorted((Path(__file__).parents[2] / "static").rglob("*.css")))
    return "/static/" + path.relative_to(Path(__file__).parents[2] / "static").as_posix()


async def test_a_request_that_is_not_a_static_file_stays_on_the_event_loop() -> None:
    seen: list[str] = []

    async def rest_of_the_chain(request: HttpRequest) -> HttpResponse:
        seen.append(threading.current_thread().name)
        return HttpResponse("from the view")

    middleware: Any = AsyncWhiteNoiseMiddleware(rest_of_the_chain)
    assert iscoroutinefunction(middleware)  # Django awaits it instead of adapting it
    response: Any = await middleware(RequestFactory().get("/api/v1/me/"))
    assert response.content == b"from the view"
    assert seen == [threading.current_thread().name]


async def test_a_static_file_is_served_under_the_async_handler() -> None:
    url = _static_file()
    response: Any = await AsyncClient().get(url)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    name = url.removeprefix("/static/")
    assert body == (Path(__file__).parents[2] / "static" / name).read_bytes()


async def test_the_api_answers_through_the_async_chain(cast: Any) -> None:
    response = await AsyncClient().get("/api/v1/me/")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] == "not_authenticated"


def test_under_a_sync_handler_it_is_whitenoise_as_before() -> None:
    middleware: Any = AsyncWhiteNoiseMiddleware(lambda request: HttpResponse("sync view"))
    assert not iscoroutinefunction(middleware)
    assert middleware(RequestFactory().get("/api/v1/me/")).content == b"sync view"
    assert middleware(RequestFactory().get(_static_file())).status_code == 200
