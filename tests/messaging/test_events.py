"""messaging.events: what each service records, when it is published, and the event log.

Zulip-style: capture what a service publishes on commit and assert on the exact list of
(event, groups) pairs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from messaging import events, services
from messaging.events import EventType
from messaging.models import Message, ThreadEvent
from messaging.wire import message_json
from tests.conftest import Cast
from tests.factories import UserFactory
from threads.models import Thread, ThreadMembership, User
from threads.selectors import thread_get
from threads.wire import member_json, thread_json

pytestmark = pytest.mark.django_db

Published = list[tuple[dict[str, Any], list[str]]]
CaptureCallbacks = Callable[..., AbstractContextManager[Any]]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Every (event, groups) handed to the channel layer, in order."""
    sent: Published = []
    # The module, not the package: `events.publish` is the function itself.
    monkeypatch.setattr(
        importlib.import_module("messaging.events.publish"),
        "publish",
        lambda event, *, groups: sent.append((event, list(groups))),
    )
    return sent


@pytest.fixture
def committed(
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> Callable[[], AbstractContextManager[Any]]:
    """A block whose on_commit callbacks run when it exits, as after a real commit."""

    def block() -> AbstractContextManager[Any]:
        return django_capture_on_commit_callbacks(execute=True)

    return block


def _group(thread: Thread) -> str:
    return f"thread.{thread.pk}"


def _user(user: User) -> str:
    return f"user.{user.pk}"


def _event(thread: Thread, kind: EventType, seq: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": str(kind), "threadId": thread.pk, "seq": seq, "data": data}


def _thread_data(thread: Thread) -> dict[str, Any]:
    return thread_json(thread_get(thread_id=thread.pk))


def _member_data(thread: Thread, user: User) -> dict[str, Any]:
    return member_json(
        ThreadMembership.objects.select_related("user").get(thread=thread, user=user)
    )


def _post(thread: Thread, author: User, text: str) -> Message:
    message, created = services.message_post(thread=thread, author=author, text=text)
    assert created
    return message


def _log(thread: Thread) -> list[dict[str, Any]]:
    return _log_of(thread.pk)


def _log_of(thread_id: str) -> list[dict[str, Any]]:
    return [
        {"type": kind, "threadId": thread_id, "seq": seq, "data": data}
        for seq, kind, data in ThreadEvent.objects.filter(thread_id=thread_id)
        .order_by("seq")
        .values_list("seq", "type", "data")
    ]


# --- what each service publishes ----------------------------------------------------------------


def test_message_post_publishes_message_added_to_the_thread_group(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        message = _post(cast.thread, cast.bob, "hello")

    stored = Message.objects.get(pk=message.pk)
    assert published == [
        (
            _event(cast.thread, EventType.MESSAGE_ADDED, 1, message_json(stored)),
            [_group(cast.thread)],
        )
    ]
    assert published[0][0]["data"]["text"] == "hello"
    assert published[0][0]["data"]["userId"] == cast.bob.pk


def test_message_edit_publishes_message_updated_with_the_edited_message(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    message = _post(cast.thread, cast.bob, "draft")

    with committed():
        services.message_edit(message=message, text="final")

    stored = Message.objects.get(pk=message.pk)
    assert stored.edited
    assert published == [
        (
            _event(cast.thread, EventType.MESSAGE_UPDATED, 2, message_json(stored)),
            [_group(cast.thread)],
        )
    ]
    assert published[0][0]["data"]["text"] == "final"
    assert published[0][0]["data"]["edited"] is True


def test_message_delete_publishes_message_deleted_with_id_and_message_seq(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    _post(cast.thread, cast.alice, "first")
    second = _post(cast.thread, cast.alice, "second")
    second_id = second.pk

    with committed():
        services.message_delete(message=second)

    assert published == [
        (
            _event(cast.thread, EventType.MESSAGE_DELETED, 3, {"id": second_id, "seq": 2}),
            [_group(cast.thread)],
        )
    ]
    assert not Message.objects.filter(pk=second_id).exists()


def test_thread_create_announces_the_thread_to_every_member(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        thread, created = services.thread_create(
            creator=cast.alice, title="Plans", members=[cast.bob], session_prompt="Be brief."
        )

    assert created
    data = _thread_data(thread)
    assert data["lastEventSeq"] == 1
    assert [m["userId"] for m in data["members"]] == [cast.alice.pk, cast.bob.pk]
    assert published == [
        (
            _event(thread, EventType.THREAD_ADDED, 1, data),
            [_group(thread), _user(cast.alice), _user(cast.bob)],
        )
    ]


def test_a_retried_thread_create_publishes_nothing(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        services.thread_create(creator=cast.alice, title="Once", thread_id="thr_retried")
    published.clear()

    with committed():
        _, created = services.thread_create(
            creator=cast.alice, title="Once", thread_id="thr_retried"
        )

    assert not created
    assert published == []
    assert Thread.objects.get(pk="thr_retried").last_event_seq == 1


def test_thread_update_publishes_the_updated_thread(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        services.thread_update(thread=cast.thread, title="Renamed", session_prompt="Speak Latin.")

    data = _thread_data(cast.thread)
    assert data["title"] == "Renamed"
    assert data["sessionPrompt"] == "Speak Latin."
    assert published == [
        (_event(cast.thread, EventType.THREAD_UPDATE, 1, data), [_group(cast.thread)])
    ]


def test_membership_add_tells_the_thread_and_the_added_users(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    dave = UserFactory.create(username="dave")

    with committed():
        added = services.membership_add(
            thread=cast.thread, actor=cast.alice, users=[cast.charlie, dave]
        )

    assert added == [cast.charlie, dave]
    thread_data = _thread_data(cast.thread)
    assert thread_data["lastEventSeq"] == 2
    assert published == [
        (
            _event(cast.thread, EventType.MEMBER_ADDED, 1, _member_data(cast.thread, cast.charlie)),
            [_group(cast.thread)],
        ),
        (
            _event(cast.thread, EventType.MEMBER_ADDED, 2, _member_data(cast.thread, dave)),
            [_group(cast.thread)],
        ),
        # The added users follow nothing yet: they hear of the thread on their own streams,
        # at the thread's current seq, so they can subscribe from there.
        (
            _event(cast.thread, EventType.THREAD_ADDED, 2, thread_data),
            [_user(cast.charlie), _user(dave)],
        ),
    ]
    assert published[0][0]["data"]["role"] == "member"


def test_membership_add_of_an_existing_member_publishes_nothing(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        added = services.membership_add(thread=cast.thread, actor=cast.alice, users=[cast.bob])

    assert added == []
    assert published == []
    assert Thread.objects.get(pk=cast.thread.pk).last_event_seq == 0


def test_membership_remove_tells_the_thread_and_the_removed_user(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        services.membership_remove(thread=cast.thread, actor=cast.alice, user_id=cast.bob.pk)

    assert published == [
        (
            _event(cast.thread, EventType.MEMBER_REMOVED, 1, {"userId": cast.bob.pk}),
            [_group(cast.thread), _user(cast.bob)],
        )
    ]


def test_thread_delete_tells_the_thread_and_every_member(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    _post(cast.thread, cast.alice, "one")
    thread_id = cast.thread.pk

    with committed():
        services.thread_delete(thread=cast.thread)

    assert len(published) == 1
    event, groups = published[0]
    assert event == {
        "type": "chatThreadDeleted",
        "threadId": thread_id,
        "seq": 2,
        "data": {"id": thread_id},
    }
    assert groups[0] == f"thread.{thread_id}"
    assert sorted(groups[1:]) == sorted([_user(cast.alice), _user(cast.bob)])
    assert not ThreadEvent.objects.filter(thread_id=thread_id).exists()


# --- seq ------------------------------------------------------------------------------------------


def test_every_change_takes_the_next_seq_of_its_thread(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    other, _ = services.thread_create(creator=cast.bob, title="Elsewhere")
    published.clear()

    with committed():
        services.thread_update(thread=cast.thread, title="One")
        first = _post(cast.thread, cast.alice, "a")
        _post(other, cast.bob, "not in alice's thread")
        services.message_edit(message=first, text="a!")
        services.membership_add(thread=cast.thread, actor=cast.alice, users=[cast.charlie])
        services.membership_remove(thread=cast.thread, actor=cast.alice, user_id=cast.charlie.pk)
        services.message_delete(message=first)

    in_thread = [
        (event["type"], event["seq"])
        for event, groups in published
        if _group(cast.thread) in groups
    ]
    assert in_thread == [
        ("chatThreadUpdate", 1),
        ("chatMessageAdded", 2),
        ("chatMessageUpdated", 3),
        ("chatMemberAdded", 4),
        ("chatMemberRemoved", 5),
        ("chatMessageDeleted", 6),
    ]
    assert Thread.objects.get(pk=cast.thread.pk).last_event_seq == 6
    # The other thread counts on its own: its create was 1, the post 2.
    assert [e["seq"] for e, groups in published if _group(other) in groups] == [2]
    assert Thread.objects.get(pk=other.pk).last_event_seq == 2


def test_message_post_takes_the_event_seq_in_the_same_update_as_the_message_seq(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    # Move the event counter ahead of the message counter so the two cannot be confused.
    services.thread_update(thread=cast.thread, title="a")
    services.thread_update(thread=cast.thread, title="b")
    published.clear()

    with committed(), CaptureQueriesContext(connection) as queries:
        message = _post(cast.thread, cast.alice, "hi")

    thread_updates = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith("UPDATE") and "threads_thread" in q["sql"]
    ]
    assert len(thread_updates) == 1, thread_updates
    assert "last_message_seq" in thread_updates[0]
    assert "last_event_seq" in thread_updates[0]
    assert message.seq == 1
    assert [event["seq"] for event, _ in published] == [3]
    thread = Thread.objects.get(pk=cast.thread.pk)
    assert (thread.last_message_seq, thread.last_event_seq) == (1, 3)


# --- after commit only ----------------------------------------------------------------------------


def test_events_are_published_only_when_the_transaction_commits(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        _post(cast.thread, cast.alice, "hi")
        services.thread_update(thread=cast.thread, title="New")
        assert published == []  # recorded and logged, but not sent before the commit
        assert [e["seq"] for e in _log(cast.thread)] == [1, 2]

    assert [event["type"] for event, _ in published] == ["chatMessageAdded", "chatThreadUpdate"]


def _fail_inside_atomic(action: Callable[[], object]) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        action()
        raise RuntimeError("roll back")


@pytest.mark.parametrize(
    "action",
    [
        "message_post",
        "message_edit",
        "message_delete",
        "thread_update",
        "membership_add",
        "membership_remove",
        "thread_delete",
    ],
)
def test_nothing_is_published_or_logged_when_the_transaction_rolls_back(
    cast: Cast,
    published: Published,
    committed: Callable[[], AbstractContextManager[Any]],
    action: str,
) -> None:
    message = _post(cast.thread, cast.alice, "existing")
    thread_id = cast.thread.pk
    log_before = _log(cast.thread)
    actions: dict[str, Callable[[], object]] = {
        "message_post": lambda: _post(cast.thread, cast.alice, "lost"),
        "message_edit": lambda: services.message_edit(message=message, text="lost"),
        "message_delete": lambda: services.message_delete(message=message),
        "thread_update": lambda: services.thread_update(thread=cast.thread, title="lost"),
        "membership_add": lambda: services.membership_add(
            thread=cast.thread, actor=cast.alice, users=[cast.charlie]
        ),
        "membership_remove": lambda: services.membership_remove(
            thread=cast.thread, actor=cast.alice, user_id=cast.bob.pk
        ),
        "thread_delete": lambda: services.thread_delete(thread=cast.thread),
    }

    with committed():
        _fail_inside_atomic(actions[action])

    assert published == []
    assert _log_of(thread_id) == log_before
    thread = Thread.objects.get(pk=thread_id)
    assert (thread.last_event_seq, thread.title) == (1, "Alice's thread")
    assert list(Message.objects.filter(thread=thread).values_list("text", flat=True)) == [
        "existing"
    ]


# --- the log --------------------------------------------------------------------------------------


def test_the_log_holds_exactly_the_thread_events_that_were_published(
    cast: Cast, published: Published, committed: Callable[[], AbstractContextManager[Any]]
) -> None:
    with committed():
        services.thread_update(thread=cast.thread, session_prompt="Be kind.")
        message = _post(cast.thread, cast.bob, "x")
        services.message_edit(message=message, text="y")
        services.membership_add(thread=cast.thread, actor=cast.alice, users=[cast.charlie])
        services.membership_remove(thread=cast.thread, actor=cast.alice, user_id=cast.charlie.pk)
        services.message_delete(message=message)

    thread_events = [event for event, groups in published if _group(cast.thread) in groups]
    assert len(thread_events) == 6
    assert _log(cast.thread) == thread_events
    # The only event outside the log is the added user's own notice, which reuses a logged seq.
    user_only = [event for event, groups in published if _group(cast.thread) not in groups]
    assert [(e["type"], e["seq"]) for e in user_only] == [("chatThreadAdded", 4)]


def test_log_since_returns_exactly_the_missed_events_oldest_first(cast: Cast) -> None:
    messages = [_post(cast.thread, cast.alice, f"m{i}") for i in range(5)]

    missed, complete = events.log_since(thread_id=cast.thread.pk, after_seq=2)

    assert complete is True
    assert missed == [
        _event(cast.thread, EventType.MESSAGE_ADDED, m.seq, message_json(m)) for m in messages[2:]
    ]


def test_log_since_the_newest_seq_is_empty_and_complete(cast: Cast) -> None:
    for i in range(3):
        _post(cast.thread, cast.alice, f"m{i}")

    assert events.log_since(thread_id=cast.thread.pk, after_seq=3) == ([], True)
    assert events.log_since(thread_id=cast.thread.pk, after_seq=0)[1] is True
    assert [e["seq"] for e in events.log_since(thread_id=cast.thread.pk, after_seq=0)[0]] == [
        1,
        2,
        3,
    ]


@pytest.fixture
def small_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep 3 events per thread, pruning every 5th."""
    monkeypatch.setattr(events.log, "EVENT_LOG_KEEP", 3)
    monkeypatch.setattr(events.log, "_PRUNE_EVERY", 5)
    yield


def test_the_log_is_pruned_to_the_newest_events(cast: Cast, small_log: None) -> None:
    for i in range(7):
        _post(cast.thread, cast.alice, f"m{i}")

    # Pruned at seq 5 (everything up to 5 - 3 = 2); not again until seq 10.
    assert [e["seq"] for e in _log(cast.thread)] == [3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("after_seq", "complete", "seqs"),
    [
        (0, False, [3, 4, 5, 6, 7]),
        (1, False, [3, 4, 5, 6, 7]),
        (2, True, [3, 4, 5, 6, 7]),
        (5, True, [6, 7]),
        (7, True, []),
    ],
)
def test_log_since_says_incomplete_when_the_gap_was_pruned(
    cast: Cast, small_log: None, after_seq: int, complete: bool, seqs: list[int]
) -> None:
    for i in range(7):
        _post(cast.thread, cast.alice, f"m{i}")

    missed, is_complete = events.log_since(thread_id=cast.thread.pk, after_seq=after_seq)

    assert is_complete is complete
    assert [e["seq"] for e in missed] == seqs


def test_the_log_of_one_thread_is_not_pruned_by_another(cast: Cast, small_log: None) -> None:
    other, _ = services.thread_create(creator=cast.alice, title="Busy")
    for i in range(2):
        _post(cast.thread, cast.alice, f"quiet{i}")
    for i in range(9):
        _post(other, cast.alice, f"busy{i}")

    assert [e["seq"] for e in _log(cast.thread)] == [1, 2]
    assert [e["seq"] for e in _log(other)] == [8, 9, 10]


# --- the documented list --------------------------------------------------------------------------


def test_the_event_types_endpoint_lists_every_event_type(cast: Cast) -> None:
    response = cast.client(cast.charlie).get("/api/v1/events/types/")

    assert response.status_code == 200
    types = response.json()["types"]
    assert [t["type"] for t in types] == [str(kind) for kind in EventType]
    for entry in types:
        assert set(entry) == {"type", "description", "data"}
        assert entry["description"].strip()
        assert entry["data"].strip()


def test_the_event_types_endpoint_needs_a_signed_in_user(cast: Cast) -> None:
    response = cast.client(None).get("/api/v1/events/types/")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
