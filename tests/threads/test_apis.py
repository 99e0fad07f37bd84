"""Threads, members and topics over REST: shapes, bad input, idempotent creates, the list."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.conftest import Cast
from tests.factories import ThreadFactory, TopicFactory, UserFactory
from tests.helpers import (
    API,
    assert_error,
    assert_field_error,
    db_state,
    error,
    post,
)
from threads.models import Thread, ThreadMembership, Topic

pytestmark = pytest.mark.django_db


# --- create ----------------------------------------------------------------------------------


def test_create_thread_makes_the_caller_owner_and_adds_members(cast: Cast) -> None:
    topic = TopicFactory.create()
    response = cast.client(cast.alice).post(
        f"{API}/threads/",
        {
            "title": "  Plans  ",
            "userIds": ["bob", cast.charlie.pk, "alice"],
            "topicIds": [topic.pk],
            "sessionPrompt": "Be brief.",
        },
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    thread = Thread.objects.get(pk=body["id"])
    assert body["id"].startswith("thr_")
    assert body["title"] == "Plans" == thread.title
    assert body["creatorId"] == cast.alice.pk
    assert body["topicIds"] == [topic.pk]
    assert body["sessionPrompt"] == "Be brief."
    assert body["lastMessageSeq"] == 0
    roles = {member["username"]: member["role"] for member in body["members"]}
    assert roles == {"alice": "owner", "bob": "member", "charlie": "member"}
    assert dict(thread.memberships.values_list("user__username", "role")) == roles
    assert set(body) >= {
        "id",
        "title",
        "creatorId",
        "members",
        "topicIds",
        "sessionPrompt",
        "lastMessageSeq",
        "createdAt",
        "updatedAt",
        "lastActivityAt",
    }


def test_create_thread_with_no_body_fields_uses_defaults(cast: Cast) -> None:
    response = cast.client(cast.alice).post(f"{API}/threads/", {}, format="json")
    assert response.status_code == 201
    assert response.json()["title"] == "New chat"


BAD_THREAD_BODIES: list[tuple[str, Any, str]] = [
    ("unknown-field", {"title": "x", "colour": "red"}, "colour"),
    ("title-not-a-string", {"title": ["x"]}, "title"),
    ("title-too-long", {"title": "x" * 201}, "title"),
    ("userIds-not-a-list", {"userIds": "bob"}, "userIds"),
    ("userIds-unknown", {"userIds": ["bob", "nobody"]}, "userIds"),
    ("topicIds-unknown", {"topicIds": ["top_nope"]}, "topicIds"),
    ("topicIds-not-strings", {"topicIds": [{"a": 1}]}, "topicIds"),
    ("id-invalid", {"id": "bad id!"}, "id"),
    ("id-empty", {"id": ""}, "id"),
    ("id-too-long", {"id": "x" * 65}, "id"),
    ("sessionPrompt-wrong-type", {"sessionPrompt": {"a": 1}}, "sessionPrompt"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [(body, field) for _, body, field in BAD_THREAD_BODIES],
    ids=[name for name, _, _ in BAD_THREAD_BODIES],
)
def test_create_thread_rejects_bad_input_and_changes_nothing(
    cast: Cast, body: Any, field: str
) -> None:
    before = db_state()
    response = cast.client(cast.alice).post(f"{API}/threads/", body, format="json")
    assert_field_error(response, field)
    assert db_state() == before


def test_unknown_users_and_topics_are_named(cast: Cast) -> None:
    client = cast.client(cast.alice)
    response = client.post(f"{API}/threads/", {"userIds": ["nobody", "bob"]}, format="json")
    assert response.json() == error("invalid", "Unknown users.", {"userIds": ["nobody"]})
    response = client.post(f"{API}/threads/", {"topicIds": ["top_x", "top_a"]}, format="json")
    assert response.json() == error(
        "invalid", "Unknown topic ids.", {"topicIds": ["top_a", "top_x"]}
    )


def test_unknown_field_error_names_the_field(cast: Cast) -> None:
    response = cast.client(cast.alice).post(f"{API}/threads/", {"titel": "x"}, format="json")
    assert response.json() == error(
        "invalid", "titel: Unknown field.", {"titel": ["Unknown field."]}
    )


def test_inactive_users_cannot_be_added(cast: Cast) -> None:
    UserFactory.create(username="gone", is_active=False)
    response = cast.client(cast.alice).post(f"{API}/threads/", {"userIds": ["gone"]}, format="json")
    assert response.json() == error("invalid", "Unknown users.", {"userIds": ["gone"]})


# --- idempotent create -----------------------------------------------------------------------


def test_create_thread_with_a_client_id_is_idempotent(cast: Cast) -> None:
    client = cast.client(cast.alice)
    first = client.post(f"{API}/threads/", {"id": "plans-2025", "title": "Plans"}, format="json")
    again = client.post(f"{API}/threads/", {"id": "plans-2025", "title": "Plans"}, format="json")
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == "plans-2025"
    assert Thread.objects.filter(pk="plans-2025").count() == 1
    assert ThreadMembership.objects.filter(thread_id="plans-2025").count() == 1


def test_a_thread_id_taken_by_someone_else_is_409(cast: Cast) -> None:
    cast.client(cast.alice).post(f"{API}/threads/", {"id": "plans"}, format="json")
    before = db_state()
    response = cast.client(cast.charlie).post(f"{API}/threads/", {"id": "plans"}, format="json")
    assert response.json() == error(
        "conflict", "This thread id is already in use.", {"id": ["plans"]}
    )
    assert response.status_code == 409
    assert db_state() == before


def test_a_thread_id_taken_by_a_thread_you_are_a_member_of_is_still_409(cast: Cast) -> None:
    cast.client(cast.alice).post(
        f"{API}/threads/", {"id": "plans", "userIds": ["bob"]}, format="json"
    )
    response = cast.client(cast.bob).post(
        f"{API}/threads/", {"id": "plans", "title": "Bob's plans"}, format="json"
    )
    assert_error(response, 409, "conflict", fields={"id": ["plans"]})


# --- read, update, delete --------------------------------------------------------------------


def test_read_thread_lists_members_in_join_order(cast: Cast) -> None:
    body = cast.client(cast.bob).get(f"{API}/threads/{cast.thread.pk}/").json()
    assert body["id"] == cast.thread.pk
    assert [(m["username"], m["role"]) for m in body["members"]] == [
        ("alice", "owner"),
        ("bob", "member"),
    ]
    assert body["members"][0]["userId"] == cast.alice.pk


def test_update_thread_changes_title_topics_and_prompt(cast: Cast) -> None:
    topic_a, topic_b = TopicFactory.create(), TopicFactory.create()
    response = cast.client(cast.bob).patch(
        f"{API}/threads/{cast.thread.pk}/",
        {"title": "Renamed", "topicIds": [topic_b.pk, topic_a.pk], "sessionPrompt": "Hi"},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["title"] == "Renamed"
    assert response.json()["topicIds"] == sorted([topic_a.pk, topic_b.pk])
    cast.thread.refresh_from_db()
    assert cast.thread.title == "Renamed"
    assert cast.thread.session_prompt == "Hi"
    assert set(cast.thread.topics.all()) == {topic_a, topic_b}


def test_update_thread_with_a_blank_title_resets_it(cast: Cast) -> None:
    response = cast.client(cast.alice).patch(
        f"{API}/threads/{cast.thread.pk}/", {"title": "  "}, format="json"
    )
    assert response.json()["title"] == "New chat"


def test_update_thread_clears_topics_with_an_empty_list(cast: Cast) -> None:
    cast.thread.topics.add(TopicFactory.create())
    response = cast.client(cast.alice).patch(
        f"{API}/threads/{cast.thread.pk}/", {"topicIds": []}, format="json"
    )
    assert response.json()["topicIds"] == []
    assert not cast.thread.topics.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "ok", "topicIds": ["top_nope"]}, "topicIds"),
        ({"title": "ok", "creatorId": "x"}, "creatorId"),
        ({"title": {"x": 1}}, "title"),
        ({"topicIds": "top_a"}, "topicIds"),
        ({"title": "x" * 201}, "title"),
    ],
)
def test_update_thread_rejects_bad_input_and_changes_nothing(
    cast: Cast, body: dict[str, Any], field: str
) -> None:
    cast.thread.topics.add(TopicFactory.create())
    before = db_state()
    response = cast.client(cast.alice).patch(
        f"{API}/threads/{cast.thread.pk}/", body, format="json"
    )
    assert_field_error(response, field)
    assert db_state() == before


def test_a_refused_delete_leaves_the_thread(cast: Cast) -> None:
    post(cast.thread, cast.bob, "keep me")
    before = db_state()
    assert_error(
        cast.client(cast.bob).delete(f"{API}/threads/{cast.thread.pk}/"), 403, "permission_denied"
    )
    assert_error(
        cast.client(cast.charlie).delete(f"{API}/threads/{cast.thread.pk}/"), 404, "not_found"
    )
    assert db_state() == before


# --- members ---------------------------------------------------------------------------------


def test_members_list_shape(cast: Cast) -> None:
    body = cast.client(cast.bob).get(f"{API}/threads/{cast.thread.pk}/members/").json()
    assert set(body) == {"members"}
    assert [set(member) for member in body["members"]] == [
        {"userId", "username", "role", "joinedAt", "lastReadSeq"}
    ] * 2


def test_adding_members_by_id_or_username_skips_existing_ones(cast: Cast) -> None:
    dave = UserFactory.create(username="dave")
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/members/",
        {"userIds": [dave.pk, "charlie", "bob", "charlie"]},
        format="json",
    )
    assert response.status_code == 200
    assert sorted(m["username"] for m in response.json()["members"]) == [
        "alice",
        "bob",
        "charlie",
        "dave",
    ]
    assert ThreadMembership.objects.filter(thread=cast.thread).count() == 4
    assert set(
        ThreadMembership.objects.filter(
            thread=cast.thread, user__in=[dave, cast.charlie]
        ).values_list("role", flat=True)
    ) == {"member"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"userIds": []}, "userIds"),
        ({"userIds": ["nobody"]}, "userIds"),
        ({"userIds": "charlie"}, "userIds"),
        ({}, "userIds"),
        ({"userIds": ["charlie"], "role": "owner"}, "role"),
    ],
)
def test_adding_members_rejects_bad_input_and_changes_nothing(
    cast: Cast, body: dict[str, Any], field: str
) -> None:
    before = db_state()
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/members/", body, format="json"
    )
    assert_field_error(response, field)
    assert db_state() == before


def test_a_member_cannot_add_members(cast: Cast) -> None:
    before = db_state()
    response = cast.client(cast.bob).post(
        f"{API}/threads/{cast.thread.pk}/members/", {"userIds": ["charlie"]}, format="json"
    )
    assert response.json() == error("permission_denied", "Only the thread's owner can do this.")
    assert db_state() == before


def test_admin_can_remove_a_member_without_being_one(cast: Cast) -> None:
    response = cast.client(cast.admin).delete(
        f"{API}/threads/{cast.thread.pk}/members/{cast.bob.pk}/"
    )
    assert response.status_code == 204
    assert not ThreadMembership.objects.filter(thread=cast.thread, user=cast.bob).exists()


# --- topics ----------------------------------------------------------------------------------


def test_topics_are_listed_by_name(cast: Cast) -> None:
    TopicFactory.create(name="Zeta", slug="zeta")
    TopicFactory.create(name="Alpha", slug="alpha")
    body = cast.client(cast.charlie).get(f"{API}/topics/").json()
    assert [topic["name"] for topic in body["topics"]] == ["Alpha", "Zeta"]
    assert set(body["topics"][0]) == {"id", "slug", "name", "createdAt"}


def test_create_topic_derives_the_slug(cast: Cast) -> None:
    response = cast.client(cast.bob).post(f"{API}/topics/", {"name": "Road Map"}, format="json")
    assert response.status_code == 201
    assert response.json()["slug"] == "road-map"
    assert Topic.objects.get(slug="road-map").name == "Road Map"


def test_create_topic_with_the_same_name_and_slug_returns_the_existing_one(cast: Cast) -> None:
    client = cast.client(cast.alice)
    first = client.post(f"{API}/topics/", {"name": "Ops"}, format="json").json()
    again = client.post(f"{API}/topics/", {"name": "Ops"}, format="json").json()
    assert first["id"] == again["id"]
    assert Topic.objects.count() == 1


def test_create_topic_with_a_client_id_is_201_then_200(cast: Cast) -> None:
    client = cast.client(cast.alice)
    first = client.post(f"{API}/topics/", {"id": "top-ops", "name": "Ops"}, format="json")
    again = client.post(f"{API}/topics/", {"id": "top-ops", "name": "Ops"}, format="json")
    assert Topic.objects.filter(pk="top-ops").count() == 1
    assert first.json()["id"] == again.json()["id"] == "top-ops"
    assert (first.status_code, again.status_code) == (201, 200)


def test_create_topic_with_a_client_id_keeps_one_row(cast: Cast) -> None:
    client = cast.client(cast.alice)
    for _ in range(2):
        response = client.post(f"{API}/topics/", {"id": "top-ops", "name": "Ops"}, format="json")
        assert response.json()["id"] == "top-ops"
    assert Topic.objects.filter(pk="top-ops").count() == 1
    assert Topic.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {"id": "another", "name": "Ops"},  # the name and slug belong to top-ops
        {"name": "Ops", "slug": "ops-two"},  # the name is taken
        {"name": "Other", "slug": "ops"},  # the slug is taken
    ],
)
def test_create_topic_conflicts_are_409_and_change_nothing(
    cast: Cast, body: dict[str, str]
) -> None:
    client = cast.client(cast.alice)
    client.post(f"{API}/topics/", {"id": "top-ops", "name": "Ops"}, format="json")
    before = db_state()
    assert_error(client.post(f"{API}/topics/", body, format="json"), 409, "conflict")
    assert db_state() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Ops", "id": "bad id!"}, "id"),
        ({"name": "!!!"}, "name"),
        ({"name": "   "}, "name"),
        ({}, "name"),
        ({"name": "Ops", "colour": "red"}, "colour"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_create_topic_rejects_bad_input(cast: Cast, body: dict[str, str], field: str) -> None:
    before = db_state()
    assert_field_error(cast.client(cast.alice).post(f"{API}/topics/", body, format="json"), field)
    assert db_state() == before


# --- the thread list -------------------------------------------------------------------------


def _thread_at(cast: Cast, minutes_ago: int, **kwargs: Any) -> Thread:
    thread = ThreadFactory.create(
        creator=cast.alice, last_activity_at=timezone.now() - timedelta(minutes=minutes_ago)
    )
    if kwargs.get("topic"):
        thread.topics.add(kwargs["topic"])
    return thread


def _walk(client: Any, query: str = "", limit: int = 2) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor, pages = "", 0
    while True:
        response = client.get(f"{API}/threads/?limit={limit}&cursor={cursor}{query}")
        assert response.status_code == 200
        body = response.json()
        pages += 1
        seen += [thread["id"] for thread in body["threads"]]
        if body["nextCursor"] is None:
            return seen, pages
        cursor = body["nextCursor"]


def test_thread_list_is_newest_activity_first_and_only_mine(cast: Cast) -> None:
    old = _thread_at(cast, 30)
    new = _thread_at(cast, 1)
    ThreadFactory.create(creator=cast.charlie)
    cast.thread.last_activity_at = timezone.now() - timedelta(minutes=10)
    cast.thread.save()
    body = cast.client(cast.alice).get(f"{API}/threads/").json()
    assert [thread["id"] for thread in body["threads"]] == [new.pk, cast.thread.pk, old.pk]
    assert body["nextCursor"] is None
    # A new message moves its thread to the front.
    post(old, cast.alice, "bump")
    body = cast.client(cast.alice).get(f"{API}/threads/").json()
    assert body["threads"][0]["id"] == old.pk


def test_thread_list_pages_by_cursor_visit_every_thread_once(cast: Cast) -> None:
    now = timezone.now()
    Thread.objects.filter(pk=cast.thread.pk).update(last_activity_at=now)
    # Ties on last_activity_at are broken by id.
    tied = [ThreadFactory.create(creator=cast.alice, last_activity_at=now) for _ in range(3)]
    others = [_thread_at(cast, minutes) for minutes in (5, 6, 7)]
    everything = cast.client(cast.alice).get(f"{API}/threads/?limit=200").json()["threads"]
    expected = [thread["id"] for thread in everything]
    assert len(expected) == 7
    assert set(expected) == {t.pk for t in [*tied, *others, cast.thread]}
    seen, pages = _walk(cast.client(cast.alice), limit=2)
    assert seen == expected
    assert pages == 4


def test_thread_list_filters_by_topic_id_or_slug(cast: Cast) -> None:
    topic = TopicFactory.create(slug="research")
    tagged = [_thread_at(cast, 3, topic=topic), _thread_at(cast, 2, topic=topic)]
    _thread_at(cast, 1, topic=TopicFactory.create())
    expected = [tagged[1].pk, tagged[0].pk]
    client = cast.client(cast.alice)
    for ref in (topic.pk, "research"):
        body = client.get(f"{API}/threads/?topic={ref}").json()
        assert [thread["id"] for thread in body["threads"]] == expected
    assert _walk(client, "&topic=research", limit=1)[0] == expected
    assert client.get(f"{API}/threads/?topic=nope").json() == {"threads": [], "nextCursor": None}


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "!!!!",
        _cursor(b"no separator"),
        _cursor(b"not-a-date|thr_x"),
        _cursor(b"\xff\xfe|x"),
    ],
)
def test_thread_list_rejects_a_malformed_cursor(cast: Cast, cursor: str) -> None:
    response = cast.client(cast.alice).get(f"{API}/threads/?cursor={cursor}")
    assert response.json() == error(
        "invalid", "Malformed cursor.", {"cursor": ["Malformed cursor."]}
    )
    assert response.status_code == 400


def test_thread_list_rejects_a_cursor_with_an_out_of_range_timestamp(cast: Cast) -> None:
    client = cast.client(cast.alice)
    client.raise_request_exception = False
    response = client.get(f"{API}/threads/?cursor={_cursor(b'0001-01-01T00:00:00+14:00|thr_x')}")
    assert response.json() == error(
        "invalid", "Malformed cursor.", {"cursor": ["Malformed cursor."]}
    )


@pytest.mark.parametrize(("limit", "status"), [("0", 400), ("201", 400), ("x", 400), ("200", 200)])
def test_thread_list_limit_bounds(cast: Cast, limit: str, status: int) -> None:
    response = cast.client(cast.alice).get(f"{API}/threads/?limit={limit}")
    assert response.status_code == status
    if status == 400:
        assert_field_error(response, "limit")


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("get", "/threads/%00/", 404),
        ("get", "/threads/%00/members/", 404),
        ("delete", "/threads/{thread}/members/%00/", 404),
        ("get", "/threads/?topic=%00", 400),
        ("get", "/threads/?cursor=" + _cursor(b"2020-01-01T00:00:00+00:00|\x00"), 400),
    ],
)
def test_a_nul_character_in_an_id_is_not_a_server_error(
    cast: Cast, method: str, url: str, status: int
) -> None:
    client = cast.client(cast.alice)
    client.raise_request_exception = False
    response = getattr(client, method)(API + url.replace("{thread}", cast.thread.pk))
    assert response.status_code == status
