"""Every /api/v1/ endpoint tried as alice (owner), bob (member), charlie (outsider), an admin and
an anonymous caller."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from messaging.models import File, Message
from messaging.services import file_create
from tests.conftest import Cast
from tests.factories import TopicFactory, UserFactory
from tests.helpers import (
    API,
    CSV_BYTES,
    MISSING_FILE,
    MISSING_MESSAGE,
    MISSING_THREAD,
    assert_error,
    db_state,
    drain,
    error,
    post,
)
from threads.models import ThreadMembership, User

pytestmark = pytest.mark.django_db

ROLES = ("alice", "bob", "charlie", "admin", "anon")
UPLOAD = object()  # marks the multipart upload body


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    url: str
    expected: dict[str, int]
    body: Any = None
    # The 404 an outsider gets must be byte-identical to this missing-id variant of the URL.
    missing: dict[str, str] = field(default_factory=dict)


def everyone(status: int) -> dict[str, int]:
    return {"alice": status, "bob": status, "charlie": status, "admin": status, "anon": 401}


def members(status: int) -> dict[str, int]:
    return {"alice": status, "bob": status, "charlie": 404, "admin": status, "anon": 401}


def roles(alice: int, bob: int, charlie: int, admin: int) -> dict[str, int]:
    return {"alice": alice, "bob": bob, "charlie": charlie, "admin": admin, "anon": 401}


ON_THREAD = {"thread": MISSING_THREAD}

CASES = (
    Case("me", "get", "/me/", everyone(200)),
    Case("thread-list", "get", "/threads/", everyone(200)),
    Case("thread-create", "post", "/threads/", everyone(201), {"title": "New"}),
    Case("thread-read", "get", "/threads/{thread}/", members(200), missing=ON_THREAD),
    Case(
        "thread-update",
        "patch",
        "/threads/{thread}/",
        members(200),
        {"title": "Renamed"},
        ON_THREAD,
    ),
    Case(
        "thread-delete", "delete", "/threads/{thread}/", roles(204, 403, 404, 204), None, ON_THREAD
    ),
    Case("member-list", "get", "/threads/{thread}/members/", members(200), missing=ON_THREAD),
    Case(
        "member-add",
        "post",
        "/threads/{thread}/members/",
        roles(200, 403, 404, 200),
        {"userIds": ["dave"]},
        ON_THREAD,
    ),
    Case(
        "member-remove-other",
        "delete",
        "/threads/{thread}/members/{erin}/",
        roles(204, 403, 404, 204),
        None,
        ON_THREAD,
    ),
    Case(
        "member-remove-last-owner",
        "delete",
        "/threads/{thread}/members/{alice}/",
        roles(400, 403, 404, 400),
        None,
        ON_THREAD,
    ),
    Case("message-list", "get", "/threads/{thread}/messages/", members(200), missing=ON_THREAD),
    Case(
        "message-post",
        "post",
        "/threads/{thread}/messages/",
        members(201),
        {"text": "hi"},
        ON_THREAD,
    ),
    Case(
        "message-read",
        "get",
        "/messages/{alice_msg}/",
        members(200),
        missing={"alice_msg": MISSING_MESSAGE},
    ),
    Case(
        "message-edit",
        "patch",
        "/messages/{alice_msg}/",
        roles(200, 403, 404, 403),
        {"text": "edited"},
        {"alice_msg": MISSING_MESSAGE},
    ),
    Case(
        "message-delete-alices",
        "delete",
        "/messages/{alice_msg}/",
        roles(204, 403, 404, 204),
        None,
        {"alice_msg": MISSING_MESSAGE},
    ),
    Case(
        "message-delete-bobs",
        "delete",
        "/messages/{bob_msg}/",
        roles(204, 204, 404, 204),
        None,
        {"bob_msg": MISSING_MESSAGE},
    ),
    Case("topic-list", "get", "/topics/", everyone(200)),
    Case("topic-create", "post", "/topics/", everyone(201), {"name": "Ops"}),
    Case("file-upload", "post", "/files/", everyone(201), UPLOAD),
    Case(
        "file-read-attached",
        "get",
        "/files/{file}/",
        members(200),
        missing={"file": MISSING_FILE},
    ),
    Case(
        "file-content-attached",
        "get",
        "/files/{file}/content/",
        members(200),
        missing={"file": MISSING_FILE},
    ),
    Case(
        "file-read-unattached",
        "get",
        "/files/{private_file}/",
        roles(200, 404, 404, 200),
        missing={"private_file": MISSING_FILE},
    ),
    Case(
        "file-content-unattached",
        "get",
        "/files/{private_file}/content/",
        roles(200, 404, 404, 200),
        missing={"private_file": MISSING_FILE},
    ),
)


@dataclass
class World:
    cast: Cast
    ids: dict[str, str]

    def user(self, role: str) -> User | None:
        return None if role == "anon" else getattr(self.cast, role)

    def request(self, role: str, case: Case, ids: dict[str, str] | None = None) -> Any:
        client = self.cast.client(self.user(role))
        url = API + case.url.format(**(ids or self.ids))
        if case.body is UPLOAD:
            upload = SimpleUploadedFile("notes.csv", CSV_BYTES, content_type="text/csv")
            response = client.post(url, {"file": upload}, format="multipart")
        else:
            response = getattr(client, case.method)(url, case.body, format="json")
        return drain(response)


def _csv_file(owner: User, name: str) -> File:
    return file_create(
        owner=owner,
        name=name,
        claimed_type="text/csv",
        stream=io.BytesIO(CSV_BYTES),
        size=len(CSV_BYTES),
    )


@pytest.fixture
def world(cast: Cast) -> World:
    UserFactory.create(username="dave")
    erin = UserFactory.create(username="erin")
    ThreadMembership.objects.create(thread=cast.thread, user=erin)
    attached = _csv_file(cast.alice, "attached.csv")
    private = _csv_file(cast.alice, "private.csv")
    alice_msg = post(cast.thread, cast.alice, "from alice", file_ids=[attached.pk])
    bob_msg = post(cast.thread, cast.bob, "from bob")
    TopicFactory.create(name="General", slug="general")
    return World(
        cast=cast,
        ids={
            "thread": cast.thread.pk,
            "alice": cast.alice.pk,
            "erin": erin.pk,
            "alice_msg": alice_msg.pk,
            "bob_msg": bob_msg.pk,
            "file": attached.pk,
            "private_file": private.pk,
        },
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_endpoint_answers_each_role(world: World, case: Case, role: str) -> None:
    before = db_state()
    response = world.request(role, case)
    expected = case.expected[role]
    assert response.status_code == expected, response.content[:300]
    if expected >= 400:
        assert_error(response, expected, _code(expected))
        assert db_state() == before, "a refused request changed the database"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_anonymous_gets_401_json_with_a_challenge(world: World, case: Case) -> None:
    response = world.request("anon", case)
    assert response.status_code == 401
    assert response.json() == error(
        "not_authenticated", "Authentication credentials were not provided."
    )
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


OUTSIDER_CASES = tuple(case for case in CASES if case.missing)


@pytest.mark.parametrize("case", OUTSIDER_CASES, ids=lambda case: case.name)
def test_outsider_404_is_byte_identical_to_a_missing_id(world: World, case: Case) -> None:
    outsider = world.request("charlie", case)
    missing = world.request("charlie", case, {**world.ids, **case.missing})
    assert outsider.status_code == missing.status_code == 404
    assert outsider.content == missing.content
    assert outsider["Content-Type"] == missing["Content-Type"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/threads/{thread}/", "Thread not found."),
        ("/messages/{alice_msg}/", "Message not found."),
        ("/files/{file}/", "File not found."),
    ],
)
def test_outsider_404_says_only_not_found(world: World, url: str, message: str) -> None:
    response = world.cast.client(world.cast.charlie).get(API + url.format(**world.ids))
    assert response.json() == error("not_found", message)


def test_a_member_may_leave_a_thread(world: World) -> None:
    bob = world.cast.bob
    response = world.cast.client(bob).delete(
        f"{API}/threads/{world.cast.thread.pk}/members/{bob.pk}/"
    )
    assert response.status_code == 204
    assert not ThreadMembership.objects.filter(thread=world.cast.thread, user=bob).exists()
    # Gone means gone: the thread is now a 404 for bob.
    again = world.cast.client(bob).get(f"{API}/threads/{world.cast.thread.pk}/")
    assert_error(again, 404, "not_found")


def test_the_last_owner_cannot_leave(world: World) -> None:
    alice = world.cast.alice
    before = db_state()
    response = world.cast.client(alice).delete(
        f"{API}/threads/{world.cast.thread.pk}/members/{alice.pk}/"
    )
    assert_error(response, 400, "invalid")
    assert db_state() == before


def test_an_owner_may_leave_when_another_owner_remains(world: World) -> None:
    thread, alice = world.cast.thread, world.cast.alice
    ThreadMembership.objects.filter(thread=thread, user=world.cast.bob).update(
        role=ThreadMembership.Role.OWNER
    )
    response = world.cast.client(alice).delete(f"{API}/threads/{thread.pk}/members/{alice.pk}/")
    assert response.status_code == 204
    assert not ThreadMembership.objects.filter(thread=thread, user=alice).exists()


def test_removing_a_non_member_is_404(world: World) -> None:
    charlie = world.cast.charlie
    response = world.cast.client(world.cast.alice).delete(
        f"{API}/threads/{world.cast.thread.pk}/members/{charlie.pk}/"
    )
    assert response.json() == error("not_found", "Member not found.")
    assert response.status_code == 404


def test_effects_of_successful_owner_actions(world: World) -> None:
    """The statuses above are backed by the rows they claim to change."""
    alice = world.cast.client(world.cast.alice)
    thread = world.cast.thread
    ids = world.ids
    added = alice.post(f"{API}/threads/{thread.pk}/members/", {"userIds": ["dave"]}, format="json")
    assert added.status_code == 200
    assert "dave" in [member["username"] for member in added.json()["members"]]
    assert ThreadMembership.objects.filter(thread=thread, user__username="dave").exists()
    assert alice.delete(f"{API}/threads/{thread.pk}/members/{ids['erin']}/").status_code == 204
    assert not ThreadMembership.objects.filter(thread=thread, user_id=ids["erin"]).exists()
    assert alice.delete(f"{API}/messages/{ids['bob_msg']}/").status_code == 204
    assert not Message.objects.filter(pk=ids["bob_msg"]).exists()
    assert alice.delete(f"{API}/threads/{thread.pk}/").status_code == 204
    assert not type(thread).objects.filter(pk=thread.pk).exists()
    assert not Message.objects.filter(thread_id=thread.pk).exists()


def _code(status: int) -> str:
    return {
        400: "invalid",
        401: "not_authenticated",
        403: "permission_denied",
        404: "not_found",
    }[status]
