"""The Django admin: every model's pages open, and users made there get the chat permissions."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.admin.utils import quote  # the admin escapes "_" in ids as "_5F"
from django.core.files.storage import default_storage
from django.test import Client

from messaging.models import File
from messaging.services import file_create
from tests.conftest import Cast
from tests.factories import TopicFactory
from tests.helpers import CSV_BYTES, post
from threads import services
from threads.models import DEFAULT_GROUP_NAME, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(cast: Cast) -> Client:
    """An admin session with a row of every kind to list."""
    file = file_create(
        owner=cast.alice,
        name="a.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    post(cast.thread, cast.alice, "hello", file_ids=[file.pk])
    cast.thread.topics.add(TopicFactory.create(name="Ops", slug="ops"))
    services.token_issue(user=cast.alice, name="laptop")
    client = Client()
    client.force_login(cast.admin)
    return client


@pytest.mark.parametrize(
    ("url", "shows"),
    [
        ("/admin/threads/thread/", "Alice&#x27;s thread"),
        ("/admin/messaging/message/", "#1 in"),
        ("/admin/threads/topic/", "Ops"),
        ("/admin/messaging/file/", "a.csv"),
        ("/admin/threads/apitoken/", "laptop"),
        ("/admin/threads/user/", "charlie"),
        ("/admin/", "Threads"),
    ],
)
def test_admin_list_pages_open(admin_client_: Client, url: str, shows: str) -> None:
    response = admin_client_.get(url)
    assert response.status_code == 200
    assert shows in response.content.decode()


def test_admin_search_pages_open(admin_client_: Client) -> None:
    for url in (
        "/admin/threads/thread/?q=alice",
        "/admin/messaging/message/?q=hello",
        "/admin/threads/user/?q=bob",
    ):
        assert admin_client_.get(url).status_code == 200, url


def test_thread_change_page_shows_its_membership_inline(admin_client_: Client, cast: Cast) -> None:
    response = admin_client_.get(f"/admin/threads/thread/{quote(cast.thread.pk)}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="memberships-TOTAL_FORMS" value="2"' in page
    assert cast.thread.pk in page


def test_change_pages_of_the_other_models_open(admin_client_: Client, cast: Cast) -> None:
    message = cast.thread.messages.get()
    file = message.files.get()
    token = cast.alice.api_tokens.get()
    for url in (
        f"/admin/messaging/message/{quote(message.pk)}/change/",
        f"/admin/messaging/file/{quote(file.pk)}/change/",
        f"/admin/threads/apitoken/{quote(token.pk)}/change/",
        f"/admin/threads/user/{quote(cast.bob.pk)}/change/",
        f"/admin/threads/topic/{quote(cast.thread.topics.get().pk)}/change/",
        "/admin/threads/thread/add/",
        "/admin/threads/topic/add/",
    ):
        assert admin_client_.get(url).status_code == 200, url


def test_tokens_cannot_be_added_in_the_admin(admin_client_: Client) -> None:
    assert admin_client_.get("/admin/threads/apitoken/add/").status_code == 403


def test_a_user_created_in_the_admin_is_in_the_default_group(admin_client_: Client) -> None:
    response = admin_client_.post(
        "/admin/threads/user/add/",
        {
            "username": "newcomer",
            "password1": "a-Long-unusual-pass-92",
            "password2": "a-Long-unusual-pass-92",
            "usable_password": "true",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user = User.objects.get(username="newcomer")
    assert list(user.groups.values_list("name", flat=True)) == [DEFAULT_GROUP_NAME]
    assert user.check_password("a-Long-unusual-pass-92")
    assert user.pk.startswith("usr_")


def test_the_admin_revoke_action_revokes_tokens(admin_client_: Client, cast: Cast) -> None:
    token = cast.alice.api_tokens.get()
    response = admin_client_.post(
        "/admin/threads/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_non_staff_users_are_sent_to_the_login_page(cast: Cast) -> None:
    client = Client()
    client.force_login(cast.alice)
    response = client.get("/admin/threads/thread/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_deleting_a_file_in_the_admin_removes_its_stored_object(
    admin_client_: Client, cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    file = cast.thread.messages.get().files.get()
    name = file.content.name
    assert default_storage.exists(name)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            f"/admin/messaging/file/{quote(file.pk)}/delete/", {"post": "yes"}
        )
    assert response.status_code == 302
    assert not File.objects.filter(pk=file.pk).exists()
    assert not default_storage.exists(name)


def test_deleting_files_with_the_admin_action_removes_their_stored_objects(
    admin_client_: Client, cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    file = cast.thread.messages.get().files.get()
    name = file.content.name
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            "/admin/messaging/file/",
            {"action": "delete_selected", "_selected_action": [file.pk], "post": "yes"},
        )
    assert response.status_code == 302
    assert not File.objects.exists()
    assert not default_storage.exists(name)
