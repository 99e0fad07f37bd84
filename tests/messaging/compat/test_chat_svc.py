"""Contract tests for the 1Backend Chat Svc routes (/chat-svc/...), written from Chat Svc's
shapes: paths, methods, JSON bodies, `{"error": text}` errors; every route tried as charlie."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from messaging import services
from messaging.models import Message
from tests.conftest import Cast
from tests.helpers import MISSING_MESSAGE, MISSING_THREAD, db_state, post
from tests.messaging.compat.conftest import Exchange, act
from threads.models import Thread, ThreadMembership, Topic, User

THREAD_KEYS = {"id", "title", "userIds", "topicIds", "createdAt", "updatedAt"}
MESSAGE_KEYS = {"id", "threadId", "text", "userId", "fileIds", "meta", "createdAt", "updatedAt"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
NOT_FOUND = {"error": "Thread not found."}


def svc(cast: Cast, user: User | None, method: str, path: str, body: Any = None) -> Any:
    client = cast.client(user)
    return getattr(client, method)(f"/chat-svc/{path}", body, format="json")


def assert_error(response: Any, status: int, text: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    if text is not None:
        assert body["error"] == text


# --- threads --------------------------------------------------------------------------------------


def test_save_thread_creates_a_thread_in_chat_svc_shape(cast: Cast) -> None:
    response = svc(cast, cast.alice, "post", "thread", {"title": "Plans", "userIds": [cast.bob.pk]})

    assert response.status_code == 200, response.content
    thread = response.json()["thread"]
    assert set(response.json()) == {"thread"}
    assert set(thread) == THREAD_KEYS
    assert thread["id"].startswith("thr_")
    assert thread["title"] == "Plans"
    assert thread["userIds"] == [cast.alice.pk, cast.bob.pk]
    assert thread["topicIds"] == []
    assert ISO_UTC.match(thread["createdAt"]) and ISO_UTC.match(thread["updatedAt"])
    stored = Thread.objects.get(pk=thread["id"])
    assert stored.creator_id == cast.alice.pk


def test_save_thread_defaults_the_title_and_always_makes_the_caller_a_member(cast: Cast) -> None:
    response = svc(cast, cast.bob, "post", "thread", {"userIds": [cast.alice.pk]})

    thread = response.json()["thread"]
    assert thread["title"] == "New chat"
    assert set(thread["userIds"]) == {cast.alice.pk, cast.bob.pk}
    owner = ThreadMembership.objects.get(thread_id=thread["id"], user=cast.bob)
    assert owner.role == ThreadMembership.Role.OWNER


def test_save_thread_with_a_known_id_updates_it(cast: Cast) -> None:
    created = svc(cast, cast.alice, "post", "thread", {"id": "thr_client_chosen", "title": "A"})
    assert created.json()["thread"]["id"] == "thr_client_chosen"

    updated = svc(
        cast,
        cast.alice,
        "post",
        "thread",
        {"id": "thr_client_chosen", "title": "B", "userIds": [cast.bob.pk]},
    )

    assert updated.status_code == 200
    thread = updated.json()["thread"]
    assert thread["title"] == "B"
    assert thread["userIds"] == [cast.alice.pk, cast.bob.pk]
    assert Thread.objects.filter(pk="thr_client_chosen").count() == 1


def test_a_member_may_rename_but_only_the_owner_adds_members(cast: Cast) -> None:
    renamed = svc(cast, cast.bob, "post", "thread", {"id": cast.thread.pk, "title": "Bob's"})
    assert renamed.status_code == 200
    assert renamed.json()["thread"]["title"] == "Bob's"

    adding = svc(cast, cast.bob, "post", "thread", {"id": cast.thread.pk, "userIds": ["charlie"]})

    assert_error(adding, 403, "Only the thread's owner can do this.")
    assert not ThreadMembership.objects.filter(thread=cast.thread, user=cast.charlie).exists()


def test_an_outsider_cannot_take_over_a_thread_by_its_id(cast: Cast) -> None:
    before = Thread.objects.get(pk=cast.thread.pk)

    response = svc(cast, cast.charlie, "post", "thread", {"id": cast.thread.pk, "title": "Mine"})

    assert_error(response, 409, "This thread id is already in use.")
    after = Thread.objects.get(pk=cast.thread.pk)
    assert (after.title, after.updated_at) == (before.title, before.updated_at)
    assert not ThreadMembership.objects.filter(thread=cast.thread, user=cast.charlie).exists()


def test_save_thread_refuses_bad_input_in_chat_svc_error_shape(cast: Cast) -> None:
    assert_error(svc(cast, cast.alice, "post", "thread", {"userIds": ["nobody"]}), 400)
    assert_error(svc(cast, cast.alice, "post", "thread", {"id": "bad id!"}), 400)
    assert_error(svc(cast, cast.alice, "post", "thread", {"title": "x" * 201}), 400)
    malformed = cast.client(cast.alice).post(
        "/chat-svc/thread", "{not json", content_type="application/json"
    )
    assert_error(malformed, 400)


def test_list_threads_answers_only_the_callers_newest_first(cast: Cast) -> None:
    newer = svc(cast, cast.alice, "post", "thread", {"title": "newer"}).json()["thread"]
    svc(cast, cast.charlie, "post", "thread", {"title": "charlie's"})

    mine = svc(cast, cast.alice, "post", "threads", {}).json()
    charlies = svc(cast, cast.charlie, "post", "threads", {}).json()

    assert [t["id"] for t in mine["threads"]] == [newer["id"], cast.thread.pk]
    assert all(set(t) == THREAD_KEYS for t in mine["threads"])
    assert [t["title"] for t in charlies["threads"]] == ["charlie's"]
    by_ids = svc(cast, cast.charlie, "post", "threads", {"ids": [cast.thread.pk]}).json()
    assert by_ids == {"threads": []}
    wanted = svc(cast, cast.alice, "post", "threads", {"ids": [cast.thread.pk]}).json()
    assert [t["id"] for t in wanted["threads"]] == [cast.thread.pk]


def test_delete_thread_is_for_its_owner(cast: Cast) -> None:
    assert_error(svc(cast, cast.bob, "delete", f"thread/{cast.thread.pk}"), 403)
    assert_error(svc(cast, cast.charlie, "delete", f"thread/{cast.thread.pk}"), 404)
    assert Thread.objects.filter(pk=cast.thread.pk).exists()

    response = svc(cast, cast.alice, "delete", f"thread/{cast.thread.pk}")

    assert response.status_code == 200 and response.json() == {}
    assert not Thread.objects.filter(pk=cast.thread.pk).exists()
    assert_error(svc(cast, cast.alice, "delete", f"thread/{cast.thread.pk}"), 404)


# --- messages -------------------------------------------------------------------------------------


def test_save_message_posts_and_list_messages_reads_oldest_first(cast: Cast) -> None:
    first = svc(cast, cast.alice, "post", f"thread/{cast.thread.pk}/message", {"text": "one"})
    svc(
        cast,
        cast.bob,
        "post",
        f"thread/{cast.thread.pk}/message",
        {"id": "msg_bob_two", "text": "two", "meta": {"k": "v"}},
    )

    assert first.status_code == 200 and first.json() == {}
    listed = svc(cast, cast.bob, "post", "messages", {"threadId": cast.thread.pk}).json()
    assert set(listed) == {"messages"}
    one, two = listed["messages"]
    assert set(one) == MESSAGE_KEYS
    assert (one["text"], one["userId"], one["threadId"]) == ("one", cast.alice.pk, cast.thread.pk)
    assert two == {
        **two,
        "id": "msg_bob_two",
        "text": "two",
        "userId": cast.bob.pk,
        "fileIds": [],
        "meta": {"k": "v"},
    }


def test_save_message_with_a_known_id_updates_that_message(cast: Cast) -> None:
    path = f"thread/{cast.thread.pk}/message"
    svc(cast, cast.alice, "post", path, {"id": "msg_edit_me", "text": "draft"})

    response = svc(cast, cast.alice, "post", path, {"id": "msg_edit_me", "text": "final"})

    assert response.json() == {}
    message = Message.objects.get(pk="msg_edit_me")
    assert (message.text, message.edited) == ("final", True)
    assert Message.objects.filter(thread=cast.thread).count() == 1
    # Someone else's message id cannot be taken over.
    assert_error(svc(cast, cast.bob, "post", path, {"id": "msg_edit_me", "text": "hijack"}), 403)
    assert Message.objects.get(pk="msg_edit_me").text == "final"


def test_save_message_refusals(cast: Cast) -> None:
    path = f"thread/{cast.thread.pk}/message"
    assert_error(svc(cast, cast.alice, "post", path, {"text": "  "}), 400)
    assert_error(
        svc(cast, cast.alice, "post", path, {"text": "as bob", "userId": cast.bob.pk}),
        403,
        "You can only post messages as yourself.",
    )
    assert_error(
        svc(cast, cast.alice, "post", f"thread/{MISSING_THREAD}/message", {"text": "x"}),
        404,
        NOT_FOUND["error"],
    )
    assert not Message.objects.exists()
    as_myself = svc(cast, cast.alice, "post", path, {"text": "ok", "userId": cast.alice.pk})
    assert as_myself.json() == {}


def test_list_messages_pages_when_asked(cast: Cast) -> None:
    for i in range(5):
        post(cast.thread, cast.alice, f"m{i}")

    newest = svc(cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk, "limit": 2})
    body = newest.json()
    assert [m["text"] for m in body["messages"]] == ["m3", "m4"]
    assert (body["hasOlder"], body["hasNewer"]) == (True, False)
    older = svc(
        cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk, "limit": 2, "before": 4}
    ).json()
    assert [m["text"] for m in older["messages"]] == ["m1", "m2"]
    after = svc(
        cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk, "after": 3}
    ).json()
    assert [m["text"] for m in after["messages"]] == ["m3", "m4"]
    everything = svc(cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk}).json()
    assert [m["text"] for m in everything["messages"]] == [f"m{i}" for i in range(5)]
    assert_error(
        svc(cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk, "limit": 0}), 400
    )
    assert_error(svc(cast, cast.alice, "post", "messages", {}), 400)


def test_list_messages_by_ids_reads_only_the_callers(cast: Cast) -> None:
    mine = post(cast.thread, cast.alice, "in alice's thread")
    other, _ = services.thread_create(creator=cast.charlie)
    theirs = post(other, cast.charlie, "in charlie's thread")

    alice = svc(cast, cast.alice, "post", "messages", {"ids": [mine.pk, theirs.pk]}).json()
    charlie = svc(cast, cast.charlie, "post", "messages", {"ids": [mine.pk, theirs.pk]}).json()

    assert [m["id"] for m in alice["messages"]] == [mine.pk]
    assert [m["id"] for m in charlie["messages"]] == [theirs.pk]
    filtered = svc(
        cast, cast.alice, "post", "messages", {"threadId": cast.thread.pk, "ids": [mine.pk]}
    ).json()
    assert [m["id"] for m in filtered["messages"]] == [mine.pk]


def test_delete_message_really_deletes_it_by_id(cast: Cast) -> None:
    alices = post(cast.thread, cast.alice, "alice's")
    bobs = post(cast.thread, cast.bob, "bob's")

    assert_error(svc(cast, cast.bob, "delete", f"message/{alices.pk}"), 403)
    assert_error(svc(cast, cast.charlie, "delete", f"message/{bobs.pk}"), 404, "Message not found.")
    assert_error(svc(cast, cast.alice, "delete", f"message/{MISSING_MESSAGE}"), 404)
    # The thread's owner may delete anyone's message; the author their own.
    assert svc(cast, cast.alice, "delete", f"message/{bobs.pk}").json() == {}
    assert svc(cast, cast.alice, "delete", f"message/{alices.pk}").json() == {}
    assert not Message.objects.filter(pk__in=[alices.pk, bobs.pk]).exists()


# --- authentication and permissions ---------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("post", "thread", {"id": "{thread}", "title": "mine now"}),
    ("post", "threads", {"ids": ["{thread}"]}),
    ("delete", "thread/{thread}", None),
    ("post", "thread/{thread}/message", {"text": "hello"}),
    ("post", "messages", {"threadId": "{thread}"}),
    ("post", "messages", {"ids": ["{message}"]}),
    ("delete", "message/{message}", None),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_as_charlie_reveals_and_changes_nothing(
    cast: Cast, method: str, path: str, body: dict[str, Any] | None
) -> None:
    from tests.helpers import db_state

    message = post(cast.thread, cast.alice, "secret")
    ids = {"thread": cast.thread.pk, "message": message.pk}
    before = db_state()

    response = svc(cast, cast.charlie, method, _fill(path, ids), _fill(body, ids))

    if path == "threads" or (path == "messages" and body and "ids" in body):
        assert response.status_code == 200
        assert response.json() in ({"threads": []}, {"messages": []})
    elif path == "thread":
        assert_error(response, 409)  # the id is taken; nothing of the thread is shown
    else:
        assert_error(response, 404)
        assert response.json()["error"] in ("Thread not found.", "Message not found.")
    assert db_state() == before


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_a_bearer_token(
    cast: Cast, method: str, path: str, body: dict[str, Any] | None
) -> None:
    ids = {"thread": cast.thread.pk, "message": MISSING_MESSAGE}
    url, data = f"/chat-svc/{_fill(path, ids)}", _fill(body, ids)
    anonymous = getattr(cast.client(None), method)(url, data, format="json")
    client = cast.client(None)
    client.credentials(HTTP_AUTHORIZATION="Bearer tl_garbage")
    bad = getattr(client, method)(url, data, format="json")
    session = cast.client(None)
    session.force_login(cast.alice)  # Chat Svc clients use tokens; a cookie is not enough
    cookie = getattr(session, method)(url, data, format="json")

    for response in (anonymous, bad, cookie):
        assert_error(response, 401)


def test_the_chat_svc_permissions_are_enforced(cast: Cast) -> None:
    cast.alice.groups.clear()
    cast.alice.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="threads",
            codename__in=["chat-svc:thread:view", "chat-svc:message:view"],
        )
    )

    assert_error(
        svc(cast, cast.alice, "post", "thread", {"title": "x"}),
        403,
        "You do not have the chat-svc:thread:create permission.",
    )
    assert_error(
        svc(cast, cast.alice, "post", f"thread/{cast.thread.pk}/message", {"text": "x"}),
        403,
        "You do not have the chat-svc:message:create permission.",
    )
    assert_error(
        svc(cast, cast.alice, "delete", f"thread/{cast.thread.pk}"),
        403,
        "You do not have the chat-svc:thread:delete permission.",
    )
    readable = svc(cast, cast.alice, "post", "threads", {})
    assert [t["id"] for t in readable.json()["threads"]] == [cast.thread.pk]


# --- AI messages, events and a native client in the same thread -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_ai_messages_have_an_empty_user_id_and_the_model_in_meta(cast: Cast, scripted_llm) -> None:
    Thread.objects.filter(pk=cast.thread.pk).update(ai_reply=True)

    svc(cast, cast.bob, "post", f"thread/{cast.thread.pk}/message", {"text": "hi AI"})

    messages = svc(cast, cast.bob, "post", "messages", {"threadId": cast.thread.pk}).json()
    question, answer = messages["messages"]
    assert question["userId"] == cast.bob.pk
    assert answer["userId"] == ""
    assert answer["text"] == "Hello, world."
    assert answer["meta"]["modelId"] == "mdl_smollm2"
    assert answer["meta"]["platformId"] == "local"


def test_events_without_a_stream_accept_header_is_the_documentation(cast: Cast) -> None:
    response = cast.client(None).get("/chat-svc/events")

    assert response.status_code == 200
    docs = response.json()
    names = [event["name"] for event in docs["events"]]
    assert names == ["chatThreadAdded", "chatThreadUpdate", "chatMessageAdded"]
    assert all(event["data"] == {"threadId": "string"} for event in docs["events"])


STREAM = [(b"accept", b"text/event-stream")]


@pytest.mark.django_db(transaction=True)
async def test_the_event_stream_tells_each_user_of_their_threads_only(
    cast: Cast, http: Exchange
) -> None:
    alice = await http("GET", "/chat-svc/events", user="alice", headers=STREAM)
    charlie = await http("GET", "/chat-svc/events", user="charlie", headers=STREAM)
    assert (alice.status, charlie.status) == (200, 200)
    assert alice.headers[b"content-type"].startswith(b"text/event-stream")
    assert (await alice.next_block()).comments == ["connected"]
    assert (await charlie.next_block()).comments == ["connected"]

    await act(post, cast.thread, cast.bob, "for alice")
    got = await alice.next_event()
    assert got.event == "chatMessageAdded"
    assert got.json == {"name": "chatMessageAdded", "data": {"threadId": cast.thread.pk}}

    # Charlie is told of a thread he is added to, and from then on of its messages.
    other, _ = await act(services.thread_create, creator=cast.alice, members=[cast.charlie])
    for stream in (charlie, alice):
        told = await stream.next_event()
        assert (told.event, told.json["data"]["threadId"]) == ("chatThreadAdded", other.pk)
    await act(post, other, cast.alice, "for charlie too")
    for stream in (charlie, alice):
        told = await stream.next_event()
        assert (told.event, told.json["data"]["threadId"]) == ("chatMessageAdded", other.pk)
        assert await stream.quiet_events() == []

    await act(services.thread_update, thread=cast.thread, title="renamed")
    assert (await alice.next_event()).json == {
        "name": "chatThreadUpdate",
        "data": {"threadId": cast.thread.pk},
    }
    assert await charlie.quiet_events() == []


@pytest.mark.django_db(transaction=True)
async def test_the_event_stream_refuses_without_credentials_or_stream_permission(
    cast: Cast, http: Exchange
) -> None:
    anonymous = await http("GET", "/chat-svc/events", headers=STREAM)
    assert anonymous.status == 401
    assert await anonymous.json() == {"error": "Authentication credentials were not provided."}

    def no_stream(user: User) -> None:
        user.groups.clear()
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="threads", codename="chat-svc:thread:view"
            )
        )

    await act(no_stream, cast.bob)
    refused = await http("GET", "/chat-svc/events", user="bob", headers=STREAM)
    assert refused.status == 403
    assert await refused.json() == {
        "error": "You do not have the chat-svc:thread:stream permission."
    }


@pytest.mark.django_db(transaction=True)
def test_a_chat_svc_client_and_a_native_client_share_a_thread_and_the_ai_reply(
    cast: Cast, scripted_llm
) -> None:
    """bob speaks Chat Svc, alice the native API; each sees the other's messages and the AI's."""
    native = cast.client(cast.alice)

    svc(cast, cast.bob, "post", f"thread/{cast.thread.pk}/message", {"text": "from chat svc"})
    asked = native.post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "from native, AI please", "reply": True},
        format="json",
    )
    assert asked.status_code == 201, asked.content

    seen_by_svc = svc(cast, cast.bob, "post", "messages", {"threadId": cast.thread.pk}).json()
    assert [(m["userId"], m["text"]) for m in seen_by_svc["messages"]] == [
        (cast.bob.pk, "from chat svc"),
        (cast.alice.pk, "from native, AI please"),
        ("", "Hello, world."),
    ]
    seen_natively = native.get(f"/api/v1/threads/{cast.thread.pk}/messages/").json()
    assert [(m["userId"], m["text"], m["status"]) for m in seen_natively["messages"]] == [
        (cast.bob.pk, "from chat svc", "complete"),
        (cast.alice.pk, "from native, AI please", "complete"),
        (None, "Hello, world.", "complete"),
    ]

    # And the other way round: the thread answers Chat Svc posts when its aiReply is on.
    native.patch(f"/api/v1/threads/{cast.thread.pk}/", {"aiReply": True}, format="json")
    svc(cast, cast.bob, "post", f"thread/{cast.thread.pk}/message", {"text": "svc asks"})
    latest = native.get(f"/api/v1/threads/{cast.thread.pk}/messages/?limit=2").json()["messages"]
    assert [(m["userId"], m["text"]) for m in latest] == [
        (cast.bob.pk, "svc asks"),
        (None, "Hello, world."),
    ]


# --- topics are tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_ids", [["development", "code-review"], ["bugs", "frontend", "urgent"]]
)
def test_save_thread_with_new_topic_ids_tags_it(cast: Cast, topic_ids: list[str]) -> None:
    """The seed's own examples: topic ids nobody created are tags on the thread."""
    response = svc(cast, cast.alice, "post", "thread", {"title": "Tagged", "topicIds": topic_ids})

    assert response.status_code == 200, response.content
    thread = response.json()["thread"]
    assert set(thread) == THREAD_KEYS
    assert thread["topicIds"] == sorted(topic_ids)
    listed = svc(cast, cast.alice, "post", "threads", {"ids": [thread["id"]]}).json()
    assert listed["threads"][0]["topicIds"] == sorted(topic_ids)


def test_retagging_a_thread_reuses_tags_and_drops_the_missing_ones(cast: Cast) -> None:
    first = svc(cast, cast.alice, "post", "thread", {"id": "thr_tags", "topicIds": ["bugs"]})
    assert first.status_code == 200, first.content
    other = svc(cast, cast.bob, "post", "thread", {"topicIds": ["bugs", "frontend"]})
    assert other.json()["thread"]["topicIds"] == ["bugs", "frontend"]

    updated = svc(
        cast, cast.alice, "post", "thread", {"id": "thr_tags", "topicIds": ["frontend", "urgent"]}
    )

    assert updated.json()["thread"]["topicIds"] == ["frontend", "urgent"]
    assert sorted(Topic.objects.values_list("pk", flat=True)) == ["bugs", "frontend", "urgent"]


def test_a_tag_that_clashes_with_a_topic_name_still_tags(cast: Cast) -> None:
    Topic.objects.create(pk="top_bugs", name="bugs", slug="bugs")

    response = svc(cast, cast.alice, "post", "thread", {"topicIds": ["bugs"]})

    assert response.status_code == 200, response.content
    assert response.json()["thread"]["topicIds"] == ["bugs"]


def test_an_invalid_tag_id_is_refused_in_chat_svc_shape(cast: Cast) -> None:
    before = db_state()

    response = svc(cast, cast.alice, "post", "thread", {"topicIds": ["no spaces"]})

    assert_error(response, 400)
    assert db_state() == before
    assert not Topic.objects.exists()


def test_a_tag_name_is_listed_only_to_those_who_see_a_thread_with_it(cast: Cast) -> None:
    Topic.objects.create(pk="top_public", name="Public", slug="public")
    svc(cast, cast.alice, "post", "thread", {"userIds": [cast.bob.pk], "topicIds": ["secret-deal"]})

    def listed(user: User) -> list[str]:
        response = cast.client(user).get("/api/v1/topics/")
        assert response.status_code == 200, response.content
        return [topic["id"] for topic in response.json()["topics"]]

    assert listed(cast.alice) == ["top_public", "secret-deal"]
    assert listed(cast.bob) == ["top_public", "secret-deal"]
    assert listed(cast.charlie) == ["top_public"]
    assert listed(cast.admin) == ["top_public", "secret-deal"]
