"""Unread markers: each member's read position (`lastReadSeq`) and POST /threads/{id}/read/."""

from __future__ import annotations

import pytest

from messaging.services import message_post
from tests.conftest import Cast
from tests.helpers import API, MISSING_THREAD, assert_error
from threads.models import ThreadMembership

pytestmark = pytest.mark.django_db


def _mark(cast: Cast, user_name: str) -> int:
    user = getattr(cast, user_name)
    return ThreadMembership.objects.get(thread=cast.thread, user=user).last_read_seq


def _post(cast: Cast, text: str) -> int:
    message, _ = message_post(thread=cast.thread, author=cast.alice, text=text)
    return message.seq


def test_members_start_unread_and_read_up_to_a_seq(cast: Cast) -> None:
    first = _post(cast, "one")
    second = _post(cast, "two")
    thread = cast.client(cast.bob).get(f"{API}/threads/{cast.thread.pk}/").json()
    bob = next(m for m in thread["members"] if m["username"] == "bob")
    assert bob["lastReadSeq"] == 0
    assert thread["lastMessageSeq"] == second

    response = cast.client(cast.bob).post(
        f"{API}/threads/{cast.thread.pk}/read/", {"seq": first}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {"threadId": cast.thread.pk, "lastReadSeq": first}
    listed = cast.client(cast.bob).get(f"{API}/threads/").json()["threads"][0]
    assert next(m for m in listed["members"] if m["username"] == "bob")["lastReadSeq"] == first


def test_without_a_seq_everything_is_read_and_the_mark_never_moves_back(cast: Cast) -> None:
    _post(cast, "one")
    last = _post(cast, "two")
    client = cast.client(cast.bob)
    assert (
        client.post(f"{API}/threads/{cast.thread.pk}/read/", {}, format="json").json()[
            "lastReadSeq"
        ]
        == last
    )
    # A stale tab reporting an older position does not un-read anything.
    older = client.post(f"{API}/threads/{cast.thread.pk}/read/", {"seq": 1}, format="json")
    assert older.json()["lastReadSeq"] == last
    # Nor can a client claim to have read messages that do not exist yet.
    future = client.post(f"{API}/threads/{cast.thread.pk}/read/", {"seq": 10**9}, format="json")
    assert future.json()["lastReadSeq"] == last
    assert _mark(cast, "bob") == last
    assert _mark(cast, "alice") == 0


def test_bad_input_and_outsiders(cast: Cast) -> None:
    client = cast.client(cast.bob)
    url = f"{API}/threads/{cast.thread.pk}/read/"
    assert_error(client.post(url, {"seq": -1}, format="json"), 400, "invalid")
    assert_error(client.post(url, {"seq": "x"}, format="json"), 400, "invalid")
    assert_error(client.post(url, {"seq": 1, "extra": 1}, format="json"), 400, "invalid")
    outsider = cast.client(cast.charlie).post(url, {}, format="json")
    missing = cast.client(cast.charlie).post(
        f"{API}/threads/{MISSING_THREAD}/read/", {}, format="json"
    )
    assert_error(outsider, 404, "not_found")
    assert outsider.content == missing.content
    assert_error(cast.client(None).post(url, {}, format="json"), 401, "not_authenticated")


def test_an_admin_who_is_not_a_member_gets_a_zero_mark(cast: Cast) -> None:
    _post(cast, "one")
    response = cast.client(cast.admin).post(
        f"{API}/threads/{cast.thread.pk}/read/", {}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["lastReadSeq"] == 0
    assert not ThreadMembership.objects.filter(thread=cast.thread, user=cast.admin).exists()
