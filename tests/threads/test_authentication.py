"""Bearer/Token headers, revoked and garbage tokens, and session login on the API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from tests.conftest import Cast
from tests.helpers import API, IS_POSTGRES, error, set_chat_perms
from threads import services
from threads.authentication import user_from_token
from threads.models import ApiToken

pytestmark = pytest.mark.django_db


def _me(header: str | None) -> Any:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    return client.get(f"{API}/me/")


@pytest.mark.parametrize("keyword", ["Bearer", "Token", "bearer", "TOKEN"])
def test_bearer_and_token_keywords_both_work(cast: Cast, keyword: str) -> None:
    _, raw = services.token_issue(user=cast.alice)
    response = _me(f"{keyword} {raw}")
    assert response.status_code == 200
    assert response.json()["username"] == "alice"


def test_a_revoked_token_is_401(cast: Cast) -> None:
    token, raw = services.token_issue(user=cast.alice)
    assert _me(f"Bearer {raw}").status_code == 200
    services.token_revoke(token=token)
    response = _me(f"Bearer {raw}")
    assert response.status_code == 401
    assert response.json() == error("not_authenticated", "Invalid or revoked token.")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_revoking_one_token_leaves_the_others(cast: Cast) -> None:
    first, _ = services.token_issue(user=cast.alice)
    _, second_raw = services.token_issue(user=cast.alice)
    services.token_revoke(token=first)
    assert _me(f"Bearer {second_raw}").status_code == 200


def test_a_token_of_a_deactivated_user_is_401(cast: Cast) -> None:
    _, raw = services.token_issue(user=cast.alice)
    cast.alice.is_active = False
    cast.alice.save()
    assert _me(f"Bearer {raw}").status_code == 401


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer", "Malformed Authorization header."),
        ("Bearer a b", "Malformed Authorization header."),
        ("Bearer tl_not-a-real-token", "Invalid or revoked token."),
        ("Token garbage", "Invalid or revoked token."),
        ("Basic YWxpY2U6cHc=", "Authentication credentials were not provided."),
        ("garbage", "Authentication credentials were not provided."),
        ("", "Authentication credentials were not provided."),
    ],
)
def test_a_garbage_header_is_401(cast: Cast, header: str, message: str) -> None:
    response = _me(header)
    assert response.status_code == 401
    assert response.json() == error("not_authenticated", message)


def test_only_the_digest_is_stored(cast: Cast) -> None:
    token, raw = services.token_issue(user=cast.alice, name="laptop")
    token.refresh_from_db()
    assert raw.startswith("tl_")
    assert token.digest == services.token_digest(raw)
    assert raw not in {token.digest, token.prefix, token.name}
    assert token.prefix == raw[:10]
    assert ApiToken.objects.filter(digest=raw).count() == 0


def test_using_a_token_records_when_it_was_last_used(cast: Cast) -> None:
    token, raw = services.token_issue(user=cast.alice)
    assert token.last_used_at is None
    assert user_from_token(raw) == cast.alice
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_last_used_is_written_at_most_once_a_minute(cast: Cast) -> None:
    token, raw = services.token_issue(user=cast.alice)
    assert user_from_token(raw) == cast.alice
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    assert user_from_token(raw) == cast.alice
    token.refresh_from_db()
    assert token.last_used_at == first  # a read stays a read
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    assert user_from_token(raw) == cast.alice
    token.refresh_from_db()
    assert token.last_used_at is not None and token.last_used_at > first - timedelta(seconds=1)


def test_session_login_works_on_the_api(cast: Cast) -> None:
    client = APIClient()
    client.force_login(cast.bob)
    assert client.get(f"{API}/me/").json()["username"] == "bob"
    response = client.post(
        f"{API}/threads/{cast.thread.pk}/messages/", {"text": "via session"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["userId"] == cast.bob.pk


def test_session_writes_need_the_csrf_token(cast: Cast) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(cast.bob)
    response = client.post(
        f"{API}/threads/{cast.thread.pk}/messages/", {"text": "forged"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert not cast.thread.messages.exists()


def test_a_bearer_token_needs_no_csrf_token(cast: Cast) -> None:
    _, raw = services.token_issue(user=cast.bob)
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.post(
        f"{API}/threads/{cast.thread.pk}/messages/", {"text": "ok"}, format="json"
    )
    assert response.status_code == 201


# --- permissions read with the token (PostgreSQL) ------------------------------------------


def test_a_token_request_checks_its_permission_without_a_query_of_its_own(cast: Cast) -> None:
    client = cast.client(cast.alice)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 200
    reading_permissions = [q["sql"] for q in queries if "auth_permission" in q["sql"]]
    assert len(reading_permissions) == 1
    if IS_POSTGRES:  # carried by the token's query
        assert "threads_apitoken" in reading_permissions[0]
    else:  # read on first use, as Django does
        assert "threads_apitoken" not in reading_permissions[0]


def test_permissions_from_groups_and_from_the_user_both_count(cast: Cast) -> None:
    client = cast.client(cast.alice)  # her chat permissions come from the default group
    assert client.get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 200
    set_chat_perms(cast.alice, ["chat-svc:message:view"])  # now only this one, directly
    assert client.get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 200
    posted = client.post(f"{API}/threads/{cast.thread.pk}/messages/", {"text": "hi"}, format="json")
    assert posted.status_code == 403


def test_a_permission_taken_away_counts_from_the_next_request(cast: Cast) -> None:
    client = cast.client(cast.alice)
    assert client.get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 200
    set_chat_perms(cast.alice, [])
    assert client.get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 403


def test_a_superuser_token_still_holds_every_permission(cast: Cast) -> None:
    cast.alice.is_superuser = True
    cast.alice.save()
    set_chat_perms(cast.alice, [])
    assert (
        cast.client(cast.alice).get(f"{API}/threads/{cast.thread.pk}/messages/").status_code == 200
    )
