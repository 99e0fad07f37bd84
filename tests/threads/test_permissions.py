"""The ten chat-svc permissions: which REST action each one guards, and where they come from."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group

from messaging.services import file_create
from tests.conftest import Cast
from tests.factories import ThreadFactory, UserFactory
from tests.helpers import (
    API,
    CHAT_PERMS,
    CSV_BYTES,
    MISSING_MESSAGE,
    MISSING_THREAD,
    assert_error,
    db_state,
    drain,
    error,
    post,
    set_chat_perms,
    upload,
)
from threads import services
from threads.models import DEFAULT_GROUP_NAME, ThreadMembership, User

pytestmark = pytest.mark.django_db

# action -> (method, url, body, status when allowed). `{thread}`, `{message}`, `{file}` and
# `{bob}` are filled from a fresh thread owned by the caller for every action.
ACTIONS: dict[str, tuple[str, str, Any, int]] = {
    "me": ("get", "/me/", None, 200),
    "thread-list": ("get", "/threads/", None, 200),
    "thread-create": ("post", "/threads/", {"title": "T"}, 201),
    "thread-read": ("get", "/threads/{thread}/", None, 200),
    "thread-update": ("patch", "/threads/{thread}/", {"title": "U"}, 200),
    "thread-delete": ("delete", "/threads/{thread}/", None, 204),
    "member-list": ("get", "/threads/{thread}/members/", None, 200),
    "member-add": ("post", "/threads/{thread}/members/", {"userIds": ["charlie"]}, 200),
    "member-remove": ("delete", "/threads/{thread}/members/{bob}/", None, 204),
    "message-list": ("get", "/threads/{thread}/messages/", None, 200),
    "message-post": ("post", "/threads/{thread}/messages/", {"text": "hi"}, 201),
    "message-read": ("get", "/messages/{message}/", None, 200),
    "message-edit": ("patch", "/messages/{message}/", {"text": "edited"}, 200),
    "message-delete": ("delete", "/messages/{message}/", None, 204),
    "topic-list": ("get", "/topics/", None, 200),
    "topic-create": ("post", "/topics/", {"name": "Ops"}, 201),
    "file-upload": ("upload", "/files/", None, 201),
    "file-read": ("get", "/files/{file}/", None, 200),
    "file-content": ("get", "/files/{file}/content/", None, 200),
}

GUARDS: dict[str, set[str]] = {
    "chat-svc:thread:create": {"thread-create"},
    "chat-svc:thread:view": {"thread-list", "thread-read", "member-list"},
    "chat-svc:thread:edit": {"thread-update", "member-add", "member-remove", "topic-create"},
    "chat-svc:thread:delete": {"thread-delete"},
    "chat-svc:thread:stream": set(),
    # Uploading is the first half of posting a message with an attachment.
    "chat-svc:message:create": {"message-post", "file-upload"},
    "chat-svc:message:view": {"message-list", "message-read"},
    "chat-svc:message:edit": {"message-edit"},
    "chat-svc:message:delete": {"message-delete"},
    "chat-svc:message:stream": set(),
}


def _fresh_ids(owner: User, bob: User) -> dict[str, str]:
    thread = ThreadFactory.create(creator=owner)
    ThreadMembership.objects.create(thread=thread, user=bob)
    file = file_create(
        owner=owner,
        name="a.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    message = post(thread, owner, "mine", file_ids=[file.pk])
    return {"thread": thread.pk, "message": message.pk, "file": file.pk, "bob": bob.pk}


def _call(client: Any, action: str, ids: dict[str, str]) -> Any:
    method, url, body, _ = ACTIONS[action]
    if method == "upload":
        response = upload(client, "n.csv", CSV_BYTES, "text/csv")
    else:
        response = getattr(client, method)(API + url.format(**ids), body, format="json")
    return drain(response)


@pytest.fixture
def without(cast: Cast) -> Callable[[str], User]:
    def make(perm: str) -> User:
        user = UserFactory.create(username="dana")
        set_chat_perms(user, [codename for codename in CHAT_PERMS if codename != perm])
        return user

    return make


def test_the_ten_permissions_are_the_chat_svc_names() -> None:
    assert set(GUARDS) == set(CHAT_PERMS)
    assert len(CHAT_PERMS) == 10


@pytest.mark.parametrize("perm", CHAT_PERMS)
def test_each_permission_guards_exactly_its_actions(
    cast: Cast, without: Callable[[str], User], perm: str
) -> None:
    dana = without(perm)
    client = cast.client(dana)
    statuses = {}
    for action in ACTIONS:
        response = _call(client, action, _fresh_ids(dana, cast.bob))
        statuses[action] = response.status_code
        if action in GUARDS[perm]:
            assert response.json() == error(
                "permission_denied", f"You do not have the {perm} permission."
            )
    expected = {action: 403 if action in GUARDS[perm] else ACTIONS[action][3] for action in ACTIONS}
    assert statuses == expected


@pytest.mark.parametrize("perm", CHAT_PERMS)
def test_a_missing_permission_is_403_even_for_a_missing_id(
    cast: Cast, without: Callable[[str], User], perm: str
) -> None:
    dana = without(perm)
    client = cast.client(dana)
    ids = {"thread": MISSING_THREAD, "message": MISSING_MESSAGE, "file": "x", "bob": "x"}
    for action in sorted(GUARDS[perm]):
        before = db_state()
        response = _call(client, action, ids)
        assert_error(response, 403, "permission_denied")
        assert db_state() == before


@pytest.mark.parametrize("perm", CHAT_PERMS)
def test_me_lists_every_permission_but_the_missing_one(
    cast: Cast, without: Callable[[str], User], perm: str
) -> None:
    response = cast.client(without(perm)).get(f"{API}/me/")
    assert response.json()["permissions"] == [
        codename for codename in CHAT_PERMS if codename != perm
    ]


def test_me_describes_the_caller(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/me/")
    assert response.status_code == 200
    body = response.json()
    # The foundation's fields; later issues add more (balance, usage).
    assert {key: body[key] for key in ("id", "username", "email", "isAdmin", "permissions")} == {
        "id": cast.alice.pk,
        "username": "alice",
        "email": "alice@example.test",
        "isAdmin": False,
        "permissions": list(CHAT_PERMS),
    }


def test_me_flags_an_admin_who_holds_every_permission(cast: Cast) -> None:
    cast.admin.groups.clear()  # a superuser holds every permission without the group
    body = cast.client(cast.admin).get(f"{API}/me/").json()
    assert body["isAdmin"] is True
    assert body["permissions"] == list(CHAT_PERMS)


def test_me_lists_no_permissions_for_a_user_outside_the_group(cast: Cast) -> None:
    cast.charlie.groups.clear()
    body = cast.client(cast.charlie).get(f"{API}/me/").json()
    assert body["permissions"] == []
    assert body["isAdmin"] is False


def test_a_user_without_any_chat_permission_reaches_nothing_in_threads(cast: Cast) -> None:
    cast.bob.groups.clear()
    client = cast.client(cast.bob)
    assert_error(client.get(f"{API}/threads/"), 403, "permission_denied")
    assert_error(client.get(f"{API}/threads/{cast.thread.pk}/"), 403, "permission_denied")
    assert_error(
        client.post(f"{API}/threads/{cast.thread.pk}/messages/", {"text": "x"}, format="json"),
        403,
        "permission_denied",
    )


def test_the_default_group_holds_exactly_the_ten_permissions() -> None:
    group = Group.objects.get(name=DEFAULT_GROUP_NAME)
    assert sorted(group.permissions.values_list("codename", flat=True)) == sorted(CHAT_PERMS)
    assert set(group.permissions.values_list("content_type__app_label", flat=True)) == {"threads"}


def test_user_grant_defaults_puts_the_user_in_the_default_group(db: None) -> None:
    user = User.objects.create(username="zoe")
    assert not user.has_perm("threads.chat-svc:thread:view")
    services.user_grant_defaults(user=user)
    user = User.objects.get(pk=user.pk)  # a fresh instance: permissions are cached per instance
    assert list(user.groups.values_list("name", flat=True)) == [DEFAULT_GROUP_NAME]
    assert all(user.has_perm(f"threads.{codename}") for codename in CHAT_PERMS)


def test_user_create_grants_the_defaults(db: None) -> None:
    user = services.user_create(username="yan", password="pw-secret-123")
    assert user.groups.filter(name=DEFAULT_GROUP_NAME).exists()
    assert user.check_password("pw-secret-123")


def test_without_message_view_a_member_cannot_reach_files_through_the_thread(cast: Cast) -> None:
    """Reading a file through a thread is reading that thread's messages."""
    alice_file = file_create(
        owner=cast.alice,
        name="a.csv",
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )
    post(cast.thread, cast.alice, "see file", file_ids=[alice_file.pk])
    bob = cast.client(cast.bob)
    assert bob.get(f"{API}/files/{alice_file.pk}/").status_code == 200
    set_chat_perms(
        cast.bob, [codename for codename in CHAT_PERMS if codename != "chat-svc:message:view"]
    )
    assert_error(bob.get(f"{API}/files/{alice_file.pk}/"), 404, "not_found")
    assert_error(bob.get(f"{API}/files/{alice_file.pk}/content/"), 404, "not_found")
    # Their own files stay theirs.
    own = upload(bob, "b.csv", CSV_BYTES, "text/csv")
    assert own.status_code == 201
    assert bob.get(f"{API}/files/{own.json()['id']}/").status_code == 200
