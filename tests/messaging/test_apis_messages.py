"""Messages over REST: keyset pages, posting, bad input, idempotent posts, edit and delete."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from messaging.models import Message
from tests.conftest import Cast
from tests.factories import ThreadFactory
from tests.helpers import (
    API,
    CSV_BYTES,
    assert_error,
    assert_field_error,
    db_state,
    error,
    post,
    post_many,
    upload,
)
from threads.models import Thread

pytestmark = pytest.mark.django_db


MESSAGE_KEYS = (
    "id",
    "threadId",
    "seq",
    "userId",
    "text",
    "fileIds",
    "meta",
    "status",
    "edited",
    "createdAt",
    "updatedAt",
)


def _page(client: Any, thread: Thread, query: str = "") -> dict[str, Any]:
    response = client.get(f"{API}/threads/{thread.pk}/messages/?{query}")
    assert response.status_code == 200, response.content
    return response.json()


def _seqs(page: dict[str, Any]) -> list[int]:
    return [message["seq"] for message in page["messages"]]


# --- pages -----------------------------------------------------------------------------------


def test_walking_back_from_the_newest_page_sees_every_message_once(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 23)
    client = cast.client(cast.bob)
    page = _page(client, cast.thread, "limit=5")
    pages = [page]
    while page["hasOlder"]:
        # New messages arrive while the client scrolls back; they must not disturb the walk.
        post(cast.thread, cast.bob, "arrived during the walk")
        page = _page(client, cast.thread, f"limit=5&before={page['before']}")
        pages.append(page)
    for index, page in enumerate(pages):
        assert _seqs(page) == sorted(_seqs(page)), "each page is oldest-first"
        assert page["hasNewer"] is (index > 0)
    seen = [seq for page in reversed(pages) for seq in _seqs(page)]
    assert seen == list(range(1, 24))
    assert [len(page["messages"]) for page in pages] == [5, 5, 5, 5, 3]
    assert pages[-1]["before"] is None


def test_walking_forward_from_zero_sees_every_message_once_including_new_ones(
    cast: Cast,
) -> None:
    post_many(cast.thread, cast.alice, 12)
    client = cast.client(cast.bob)
    page = _page(client, cast.thread, "after=0&limit=5")
    seen = _seqs(page)
    posted_during = 0
    while page["hasNewer"] or posted_during < 6:
        if posted_during < 6:
            post_many(cast.thread, cast.bob, 2, prefix="live")
            posted_during += 2
        page = _page(client, cast.thread, f"after={page['after']}&limit=5")
        assert page["hasOlder"] is True
        seen += _seqs(page)
    assert seen == list(range(1, 19))
    assert Message.objects.filter(thread=cast.thread).count() == 18
    assert page["hasNewer"] is False
    assert page["after"] == 18


def test_page_flags_and_cursors(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 10)
    client = cast.client(cast.alice)
    expectations = [
        ("limit=3", [8, 9, 10], True, False, 8, 10),
        ("limit=3&before=8", [5, 6, 7], True, True, 5, 7),
        ("limit=3&before=3", [1, 2], False, True, None, 2),
        ("limit=3&before=1", [], False, True, None, None),
        ("limit=3&after=0", [1, 2, 3], False, True, 1, 3),
        ("limit=3&after=7", [8, 9, 10], True, False, 8, 10),
        ("limit=3&after=10", [], True, False, None, 10),
    ]
    for query, seqs, has_older, has_newer, before, after in expectations:
        page = _page(client, cast.thread, query)
        got = (_seqs(page), page["hasOlder"], page["hasNewer"], page["before"], page["after"])
        # `before` is only a cursor when there is something older to fetch.
        assert got == (seqs, has_older, has_newer, before if has_older else None, after), query


def test_an_empty_thread_has_an_empty_page(cast: Cast) -> None:
    page = _page(cast.client(cast.alice), cast.thread)
    assert page == {
        "messages": [],
        "hasOlder": False,
        "hasNewer": False,
        "before": None,
        "after": None,
    }


def test_default_page_is_the_newest_fifty(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 55)
    page = _page(cast.client(cast.alice), cast.thread)
    assert _seqs(page) == list(range(6, 56))
    assert page["hasOlder"] is True


def test_limit_200_is_allowed(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 3)
    assert _seqs(_page(cast.client(cast.alice), cast.thread, "limit=200")) == [1, 2, 3]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("before=abc", "before"),
        ("before=-1", "before"),
        ("before=1.5", "before"),
        ("after=abc", "after"),
        ("after=-1", "after"),
        ("before=5&after=1", "before"),
    ],
)
def test_bad_page_parameters_are_400(cast: Cast, query: str, field: str) -> None:
    response = cast.client(cast.alice).get(f"{API}/threads/{cast.thread.pk}/messages/?{query}")
    assert_field_error(response, field)


def test_before_with_after_is_refused_with_a_message(cast: Cast) -> None:
    response = cast.client(cast.alice).get(
        f"{API}/threads/{cast.thread.pk}/messages/?before=5&after=1"
    )
    assert response.json() == error(
        "invalid", "Give before or after, not both.", {"before": ["Not with after."]}
    )


def test_page_message_shape(cast: Cast) -> None:
    message = post(cast.thread, cast.bob, "hello", meta={"k": 1})
    page = _page(cast.client(cast.alice), cast.thread)
    item = page["messages"][0]
    assert {key: item[key] for key in MESSAGE_KEYS} == {
        "id": message.pk,
        "threadId": cast.thread.pk,
        "seq": 1,
        "userId": cast.bob.pk,
        "text": "hello",
        "fileIds": [],
        "meta": {"k": 1},
        "status": "complete",
        "edited": False,
        "createdAt": item["createdAt"],
        "updatedAt": item["updatedAt"],
    }
    assert item["createdAt"].endswith("Z")


# --- posting ---------------------------------------------------------------------------------


def test_posting_appends_with_the_next_seq_and_bumps_the_thread(cast: Cast) -> None:
    client = cast.client(cast.bob)
    url = f"{API}/threads/{cast.thread.pk}/messages/"
    before_activity = cast.thread.last_activity_at
    first = client.post(url, {"text": "one"}, format="json")
    second = client.post(url, {"text": " two ", "meta": {"mood": "ok"}}, format="json")
    assert (first.status_code, second.status_code) == (201, 201)
    assert (first.json()["seq"], second.json()["seq"]) == (1, 2)
    assert second.json()["text"] == " two "  # whitespace is the author's, kept as written
    assert second.json()["meta"] == {"mood": "ok"}
    assert second.json()["userId"] == cast.bob.pk
    cast.thread.refresh_from_db()
    assert cast.thread.last_message_seq == 2
    assert cast.thread.last_activity_at > before_activity
    assert list(Message.objects.filter(thread=cast.thread).values_list("text", flat=True)) == [
        "one",
        " two ",
    ]


def test_a_message_with_a_file_and_blank_text_is_allowed(cast: Cast) -> None:
    client = cast.client(cast.alice)
    file_id = upload(client, "a.csv", CSV_BYTES, "text/csv").json()["id"]
    response = client.post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "", "fileIds": [file_id, file_id]},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["fileIds"] == [file_id]


BAD_MESSAGE_BODIES: list[tuple[str, Any, str]] = [
    ("empty-text", {"text": ""}, "text"),
    ("blank-text", {"text": "  \n\t "}, "text"),
    ("no-text", {}, "text"),
    ("text-null", {"text": None}, "text"),
    ("text-a-list", {"text": ["hi"]}, "text"),
    ("text-a-bool", {"text": True}, "text"),
    ("unknown-field", {"text": "hi", "threadId": "x"}, "threadId"),
    ("unknown-file", {"text": "hi", "fileIds": ["file_nope"]}, "fileIds"),
    ("fileIds-not-a-list", {"text": "hi", "fileIds": "file_nope"}, "fileIds"),
    ("too-many-files", {"text": "hi", "fileIds": [f"f{i}" for i in range(21)]}, "fileIds"),
    ("meta-a-list", {"text": "hi", "meta": [1]}, "meta"),
    ("meta-a-string", {"text": "hi", "meta": "x"}, "meta"),
    ("meta-too-big", {"text": "hi", "meta": {str(i): i for i in range(51)}}, "meta"),
    ("id-invalid", {"text": "hi", "id": "bad id!"}, "id"),
    ("id-too-long", {"text": "hi", "id": "m" * 65}, "id"),
    ("text-with-nul", {"text": "a\x00b"}, "text"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [(body, field) for _, body, field in BAD_MESSAGE_BODIES],
    ids=[name for name, _, _ in BAD_MESSAGE_BODIES],
)
def test_posting_bad_input_is_400_and_changes_nothing(cast: Cast, body: Any, field: str) -> None:
    before = db_state()
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/messages/", body, format="json"
    )
    assert_field_error(response, field)
    assert db_state() == before


def test_unknown_file_ids_are_named(cast: Cast) -> None:
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "hi", "fileIds": ["file_b", "file_a"]},
        format="json",
    )
    assert response.json() == error(
        "invalid", "Unknown file ids.", {"fileIds": ["file_a", "file_b"]}
    )


def test_attaching_someone_elses_file_is_refused(cast: Cast) -> None:
    bobs = upload(cast.client(cast.bob), "b.csv", CSV_BYTES, "text/csv").json()["id"]
    before = db_state()
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "look", "fileIds": [bobs]},
        format="json",
    )
    assert response.json() == error("invalid", "Unknown file ids.", {"fileIds": [bobs]})
    assert db_state() == before
    # Still refused by the admin: attaching is what grants a thread access to a file.
    response = cast.client(cast.admin).post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "look", "fileIds": [bobs]},
        format="json",
    )
    assert_field_error(response, "fileIds")


@override_settings(MAX_MESSAGE_CHARS=5)
def test_text_longer_than_the_limit_is_refused(cast: Cast) -> None:
    client = cast.client(cast.alice)
    url = f"{API}/threads/{cast.thread.pk}/messages/"
    before = db_state()
    response = client.post(url, {"text": "123456"}, format="json")
    assert response.json() == error(
        "invalid",
        "Message text is longer than 5 characters.",
        {"text": ["At most 5 characters."]},
    )
    assert db_state() == before
    assert client.post(url, {"text": "12345"}, format="json").status_code == 201


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "parse_error"),
        ('{"text": "hi",}', "parse_error"),
        ("[1, 2]", "invalid"),
        ('"hello"', "invalid"),
        ("42", "invalid"),
        ("null", "invalid"),
    ],
)
def test_malformed_or_non_object_json_is_400(cast: Cast, raw: str, code: str) -> None:
    before = db_state()
    response = cast.client(cast.alice).post(
        f"{API}/threads/{cast.thread.pk}/messages/", raw, content_type="application/json"
    )
    assert_error(response, 400, code)
    assert db_state() == before


# --- idempotent posts ------------------------------------------------------------------------


def test_a_retried_post_with_the_same_id_returns_the_first_message(cast: Cast) -> None:
    client = cast.client(cast.bob)
    url = f"{API}/threads/{cast.thread.pk}/messages/"
    first = client.post(url, {"id": "m-1", "text": "once"}, format="json")
    again = client.post(url, {"id": "m-1", "text": "once"}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert Message.objects.filter(pk="m-1").count() == 1
    cast.thread.refresh_from_db()
    assert cast.thread.last_message_seq == 1


def test_a_message_id_used_by_another_author_or_thread_is_409(cast: Cast) -> None:
    url = f"{API}/threads/{cast.thread.pk}/messages/"
    cast.client(cast.bob).post(url, {"id": "m-1", "text": "bob's"}, format="json")
    other_thread = ThreadFactory.create(creator=cast.bob)
    before = db_state()
    by_alice = cast.client(cast.alice).post(url, {"id": "m-1", "text": "x"}, format="json")
    elsewhere = cast.client(cast.bob).post(
        f"{API}/threads/{other_thread.pk}/messages/", {"id": "m-1", "text": "x"}, format="json"
    )
    for response in (by_alice, elsewhere):
        assert response.status_code == 409
        assert response.json() == error(
            "conflict", "This message id is already in use.", {"id": ["m-1"]}
        )
    assert db_state() == before


# --- read, edit, delete ----------------------------------------------------------------------


def test_the_author_edits_a_message(cast: Cast) -> None:
    message = post(cast.thread, cast.bob, "draft")
    response = cast.client(cast.bob).patch(
        f"{API}/messages/{message.pk}/", {"text": "final"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["text"] == "final"
    assert response.json()["edited"] is True
    message.refresh_from_db()
    assert (message.text, message.edited, message.seq) == ("final", True, 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({}, "text"),
        ({"text": "ok", "seq": 9}, "seq"),
        ({"text": ["x"]}, "text"),
        ({"text": "123456"}, "text"),
    ],
)
@override_settings(MAX_MESSAGE_CHARS=5)
def test_a_bad_edit_is_400_and_changes_nothing(
    cast: Cast, body: dict[str, Any], field: str
) -> None:
    message = post(cast.thread, cast.alice, "orig")
    before = db_state()
    response = cast.client(cast.alice).patch(f"{API}/messages/{message.pk}/", body, format="json")
    assert_field_error(response, field)
    assert db_state() == before


def test_an_edit_cannot_blank_a_text_only_message(cast: Cast) -> None:
    message = post(cast.thread, cast.alice, "orig")
    before = db_state()
    response = cast.client(cast.alice).patch(
        f"{API}/messages/{message.pk}/", {"text": "   "}, format="json"
    )
    assert_field_error(response, "text")
    assert db_state() == before


def test_an_ai_message_cannot_be_edited_by_anyone(cast: Cast) -> None:
    message = post(cast.thread, None, "I am the AI")
    for user in (cast.alice, cast.admin):
        response = cast.client(user).patch(
            f"{API}/messages/{message.pk}/", {"text": "hijack"}, format="json"
        )
        assert response.json() == error(
            "permission_denied", "Only the author can edit this message."
        )
    message.refresh_from_db()
    assert message.text == "I am the AI"
    assert cast.client(cast.alice).get(f"{API}/messages/{message.pk}/").json()["userId"] is None


def test_a_refused_delete_keeps_the_message(cast: Cast) -> None:
    message = post(cast.thread, cast.alice, "mine")
    before = db_state()
    response = cast.client(cast.bob).delete(f"{API}/messages/{message.pk}/")
    assert response.json() == error(
        "permission_denied",
        "Only the author, the thread's owner or an admin can delete this message.",
    )
    assert db_state() == before


def test_deleting_a_message_keeps_its_files_and_the_seq_counter(cast: Cast) -> None:
    client = cast.client(cast.alice)
    file_id = upload(client, "a.csv", CSV_BYTES, "text/csv").json()["id"]
    message = post(cast.thread, cast.alice, "with file", file_ids=[file_id])
    assert client.delete(f"{API}/messages/{message.pk}/").status_code == 204
    assert not Message.objects.filter(pk=message.pk).exists()
    assert client.get(f"{API}/files/{file_id}/").status_code == 200
    assert (
        client.post(
            f"{API}/threads/{cast.thread.pk}/messages/", {"text": "next"}, format="json"
        ).json()["seq"]
        == 2
    )


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/messages/%00/"),
        ("patch", "/messages/%00/"),
        ("delete", "/messages/%00/"),
        ("get", "/threads/%00/messages/"),
        ("get", "/files/%00/"),
        ("get", "/files/%00/content/"),
    ],
)
def test_a_nul_character_in_a_path_id_is_404(cast: Cast, method: str, url: str) -> None:
    client = cast.client(cast.alice)
    client.raise_request_exception = False
    response = getattr(client, method)(API + url, {"text": "x"}, format="json")
    assert_error(response, 404, "not_found")


def test_meta_with_a_nul_character_is_refused(cast: Cast) -> None:
    """PostgreSQL's jsonb cannot hold NUL, so it is refused on every database alike."""
    client = cast.client(cast.alice)
    client.raise_request_exception = False
    before = db_state()
    response = client.post(
        f"{API}/threads/{cast.thread.pk}/messages/",
        {"text": "hi", "meta": {"note": "a\x00b"}},
        format="json",
    )
    assert_field_error(response, "meta")
    assert db_state() == before
