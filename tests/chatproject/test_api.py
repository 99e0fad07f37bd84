"""chatproject.api: the one error shape for every kind of failure, strict input, query ints."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tests.conftest import Cast
from tests.helpers import API, assert_error, db_state, error

pytestmark = pytest.mark.django_db

JSON_ENDPOINTS = [
    ("post", "/threads/"),
    ("patch", "/threads/{thread}/"),
    ("post", "/threads/{thread}/members/"),
    ("post", "/threads/{thread}/messages/"),
    ("patch", "/messages/{message}/"),
    ("post", "/topics/"),
]


@pytest.fixture
def urls(cast: Cast) -> dict[str, str]:
    from tests.helpers import post

    return {"thread": cast.thread.pk, "message": post(cast.thread, cast.alice, "hi").pk}


def _send(client: APIClient, method: str, url: str, raw: str, content_type: str) -> Any:
    return getattr(client, method)(API + url, raw, content_type=content_type)


@pytest.mark.parametrize(("method", "url"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{oops", "parse_error"),
        ("[]", "invalid"),
        ('["a", "b"]', "invalid"),
        ('"a string"', "invalid"),
        ("3", "invalid"),
        ("true", "invalid"),
    ],
)
def test_malformed_and_non_object_json_is_400_and_changes_nothing(
    cast: Cast, urls: dict[str, str], method: str, url: str, raw: str, code: str
) -> None:
    before = db_state()
    response = _send(cast.client(cast.alice), method, url.format(**urls), raw, "application/json")
    assert_error(response, 400, code)
    assert db_state() == before


@pytest.mark.parametrize(("method", "url"), JSON_ENDPOINTS)
def test_a_form_body_on_a_json_endpoint_is_415(
    cast: Cast, urls: dict[str, str], method: str, url: str
) -> None:
    before = db_state()
    response = _send(
        cast.client(cast.alice),
        method,
        url.format(**urls),
        "title=x",
        "application/x-www-form-urlencoded",
    )
    assert_error(response, 415, "unsupported_media_type")
    assert db_state() == before


def test_a_non_object_body_error_uses_the_camel_case_key(cast: Cast) -> None:
    response = cast.client(cast.alice).post(
        f"{API}/threads/", "[1]", content_type="application/json"
    )
    assert list(response.json()["error"]["fields"]) == ["nonFieldErrors"]


def test_an_unknown_api_url_is_a_json_404(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/nothing-here/")
    assert response.status_code == 404
    assert response.json() == error("not_found", "Not found.")


def test_an_unsupported_method_is_405(cast: Cast) -> None:
    response = cast.client(cast.alice).put(f"{API}/threads/{cast.thread.pk}/", {}, format="json")
    assert response.json() == error("method_not_allowed", 'Method "PUT" not allowed.')
    assert response.status_code == 405


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
def test_a_json_body_over_the_request_limit_is_413(cast: Cast) -> None:
    before = db_state()
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/messages/", {"text": "x" * 500}, format="json"
    )
    assert response.json() == error("too_large", "The request body is too large.")
    assert response.status_code == 413
    assert db_state() == before


def test_healthz(db: None) -> None:
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_validation_errors_name_every_bad_field(cast: Cast) -> None:
    response = cast.client(cast.alice).post(
        f"{API}/threads/", {"title": ["x"], "userIds": "bob"}, format="json"
    )
    body = assert_error(response, 400, "invalid")
    assert sorted(body["fields"]) == ["title", "userIds"]
    assert body["message"].startswith(("title: ", "userIds: "))
