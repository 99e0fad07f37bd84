"""Contract tests for the dashboard BFF's chat routes (/api/v1/chat/...): sessions, history and
the streamed reply, every route tried as charlie."""

from __future__ import annotations

from typing import Any

import pytest

from agents.llm import LLMError
from messaging.compat import bff
from messaging.models import Message
from tests.conftest import Cast
from tests.helpers import MISSING_THREAD, assert_error, db_state, post
from tests.messaging.compat.conftest import Exchange, act
from threads.models import Thread

API = "/api/v1/chat"
SESSION_KEYS = {"id", "title", "sessionPrompt", "createdAt", "updatedAt", "lastActivityAt"}
HISTORY_KEYS = {"id", "role", "content", "userId", "status", "fileIds", "seq", "createdAt"}


def test_sessions_are_created_listed_and_paged(cast: Cast) -> None:
    client = cast.client(cast.alice)

    created = client.post(
        f"{API}/sessions", {"title": "Q3 numbers", "sessionPrompt": "Be brief."}, format="json"
    )

    assert created.status_code == 201, created.content
    session = created.json()["session"]
    assert set(session) == SESSION_KEYS
    assert session["id"].startswith("thr_")
    assert (session["title"], session["sessionPrompt"]) == ("Q3 numbers", "Be brief.")
    listed = client.get(f"{API}/sessions").json()
    assert [s["id"] for s in listed["sessions"]] == [session["id"], cast.thread.pk]
    assert listed["nextCursor"] is None
    first = client.get(f"{API}/sessions?limit=1").json()
    assert [s["id"] for s in first["sessions"]] == [session["id"]]
    rest = client.get(f"{API}/sessions?limit=1&cursor={first['nextCursor']}").json()
    assert [s["id"] for s in rest["sessions"]] == [cast.thread.pk]
    assert_error(client.post(f"{API}/sessions", {"bogus": 1}, format="json"), 400, "invalid")


@pytest.mark.parametrize("field", ["title", "sessionPrompt"])
@pytest.mark.parametrize("value", [5, 1.5, True, ["a"], {"a": 1}])
def test_a_session_field_that_is_not_a_string_is_refused(
    cast: Cast, field: str, value: Any
) -> None:
    before = db_state()

    response = cast.client(cast.alice).post(f"{API}/sessions", {field: value}, format="json")

    assert_error(response, 400, "invalid")
    assert set(response.json()["error"]["fields"]) == {field}
    assert db_state() == before


def test_deleting_a_session_is_for_its_owner(cast: Cast) -> None:
    path = f"{API}/sessions/{cast.thread.pk}"
    assert_error(cast.client(cast.bob).delete(path), 403, "permission_denied")
    assert_error(cast.client(cast.charlie).delete(path), 404, "not_found")

    assert cast.client(cast.alice).delete(path).status_code == 204
    assert not Thread.objects.filter(pk=cast.thread.pk).exists()


def test_history_is_paginated_oldest_first_within_a_page(cast: Cast) -> None:
    for i in range(5):
        post(cast.thread, cast.alice if i % 2 else cast.bob, f"m{i}")
    client = cast.client(cast.bob)

    newest = client.get(f"{API}/history?sessionId={cast.thread.pk}&limit=2").json()

    assert newest["sessionId"] == cast.thread.pk
    assert [m["content"] for m in newest["messages"]] == ["m3", "m4"]
    assert all(set(m) == HISTORY_KEYS for m in newest["messages"])
    assert newest["messages"][0]["role"] == "user"
    assert (newest["hasOlder"], newest["before"]) == (True, 4)
    older = client.get(f"{API}/history?sessionId={cast.thread.pk}&limit=2&before=4").json()
    assert [m["content"] for m in older["messages"]] == ["m1", "m2"]
    oldest = client.get(f"{API}/history?sessionId={cast.thread.pk}&limit=2&before=2").json()
    assert [m["content"] for m in oldest["messages"]] == ["m0"]
    assert (oldest["hasOlder"], oldest["before"]) == (False, None)
    assert_error(client.get(f"{API}/history"), 400, "invalid")
    assert_error(client.get(f"{API}/history?sessionId={MISSING_THREAD}"), 404, "not_found")


ROUTES = [
    ("get", f"{API}/history?sessionId={{thread}}", None),
    ("delete", f"{API}/sessions/{{thread}}", None),
    ("post", f"{API}/messages", {"sessionId": "{thread}", "message": "let me in"}),
]


# Real commits: POST /messages is an async view whose database work runs on other threads.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_as_charlie_is_the_missing_thread_404(
    cast: Cast, method: str, path: str, body: dict[str, Any] | None
) -> None:
    post(cast.thread, cast.alice, "secret")
    before = db_state()
    client = cast.client(cast.charlie)
    url = path.format(thread=cast.thread.pk)
    data = {k: v.format(thread=cast.thread.pk) for k, v in (body or {}).items()}

    outsider = getattr(client, method)(url, data or None, format="json")
    missing = getattr(client, method)(
        path.format(thread=MISSING_THREAD),
        {k: v.format(thread=MISSING_THREAD) for k, v in (body or {}).items()} or None,
        format="json",
    )

    assert_error(outsider, 404, "not_found", message="Thread not found.")
    assert outsider.json() == missing.json()
    assert db_state() == before


def test_charlie_lists_only_his_own_sessions(cast: Cast) -> None:
    assert cast.client(cast.charlie).get(f"{API}/sessions").json()["sessions"] == []
    mine = cast.client(cast.charlie).post(f"{API}/sessions", {}, format="json").json()["session"]
    assert mine["title"] == "New chat"
    listed = cast.client(cast.charlie).get(f"{API}/sessions").json()["sessions"]
    assert [s["id"] for s in listed] == [mine["id"]]


def test_the_routes_need_authentication(cast: Cast) -> None:
    anonymous = cast.client(None)
    for response in (
        anonymous.get(f"{API}/sessions"),
        anonymous.post(f"{API}/sessions", {}, format="json"),
        anonymous.delete(f"{API}/sessions/{cast.thread.pk}"),
        anonymous.get(f"{API}/history?sessionId={cast.thread.pk}"),
        anonymous.post(f"{API}/messages", {"message": "hi"}, format="json"),
    ):
        assert_error(response, 401, "not_authenticated")


# --- the streamed reply ---------------------------------------------------------------------------

pytestmark_stream = pytest.mark.django_db(transaction=True)


@pytestmark_stream
async def test_a_message_streams_the_reply_and_the_final_event_lists_artifacts(
    cast: Cast, http: Exchange, scripted_llm, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [{"id": "art_chart", "kind": "chart", "title": "Revenue", "url": "/x"}]
    monkeypatch.setattr(bff, "reply_artifacts", lambda *, message_id: made)

    answer = await http(
        "POST",
        f"{API}/messages",
        user="bob",
        json_body={"sessionId": cast.thread.pk, "message": "Chart revenue"},
    )

    assert answer.status == 200
    assert answer.headers[b"content-type"].startswith(b"text/event-stream")
    events = await answer.all_events()
    kinds = [e.event for e in events]
    assert kinds[0] == "session" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    session = events[0].json
    assert session["sessionId"] == cast.thread.pk
    assert "".join(e.json["text"] for e in events[1:-1]) == "Hello, world."
    done = events[-1].json
    assert done == {
        "messageId": session["replyMessageId"],
        "status": "complete",
        "text": "Hello, world.",
        "error": None,
        "usage": done["usage"],
        "artifacts": made,
    }
    assert set(done["usage"]) == {"promptTokens", "completionTokens", "cost"}
    question = await act(Message.objects.get, pk=session["messageId"])
    assert (question.text, question.author_id) == ("Chart revenue", cast.bob.pk)


@pytestmark_stream
async def test_the_artifacts_hook_is_empty_until_artifacts_exist(
    cast: Cast, http: Exchange, scripted_llm
) -> None:
    answer = await http("POST", f"{API}/messages", user="alice", json_body={"message": "New one"})

    events = await answer.all_events()
    assert events[-1].json["artifacts"] == []
    # No sessionId: a session was started, named after the message, owned by the caller.
    thread = await act(Thread.objects.get, pk=events[0].json["sessionId"])
    assert (thread.title, thread.creator_id) == ("New one", cast.alice.pk)


@pytestmark_stream
async def test_a_failed_reply_ends_the_stream_with_its_reason(
    cast: Cast, http: Exchange, scripted_llm
) -> None:
    scripted_llm.failure = LLMError("The AI service cannot be reached.")

    answer = await http(
        "POST",
        f"{API}/messages",
        user="alice",
        json_body={"sessionId": cast.thread.pk, "message": "?"},
    )

    done = (await answer.all_events())[-1]
    assert done.event == "done"
    assert (done.json["status"], done.json["error"]) == (
        "failed",
        "The AI service cannot be reached.",
    )


@pytestmark_stream
async def test_bad_requests_are_refused_before_the_stream(cast: Cast, http: Exchange) -> None:
    cases: list[tuple[int, str, Any]] = [
        (400, "invalid", {"message": ""}),
        (400, "invalid", {"message": "hi", "extra": 1}),
        (400, "invalid", {"message": "hi", "sessionId": 7}),
        (404, "not_found", {"message": "hi", "sessionId": MISSING_THREAD}),
    ]
    for status, code, body in cases:
        answer = await http("POST", f"{API}/messages", user="alice", json_body=body)
        assert answer.status == status, body
        assert (await answer.json())["error"]["code"] == code
    wrong_method = await http("GET", f"{API}/messages", user="alice")
    assert wrong_method.status == 405
    assert await act(Message.objects.count) == 0


@pytestmark_stream
async def test_a_bff_client_and_a_native_client_share_a_session(
    cast: Cast, http: Exchange, scripted_llm
) -> None:
    """alice speaks the BFF, bob the native API, in one thread: both see everything."""
    native = await act(cast.client, cast.bob)
    await act(
        native.post,
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "native says hi"},
        format="json",
    )

    answer = await http(
        "POST",
        f"{API}/messages",
        user="alice",
        json_body={"sessionId": cast.thread.pk, "message": "bff asks"},
    )
    await answer.all_events()

    history = await http("GET", f"{API}/history", user="alice", query=f"sessionId={cast.thread.pk}")
    assert [(m["role"], m["userId"], m["content"]) for m in (await history.json())["messages"]] == [
        ("user", cast.bob.pk, "native says hi"),
        ("user", cast.alice.pk, "bff asks"),
        ("assistant", None, "Hello, world."),
    ]
    seen = await act(native.get, f"/api/v1/threads/{cast.thread.pk}/messages/")
    assert [(m["userId"], m["text"]) for m in seen.json()["messages"]] == [
        (cast.bob.pk, "native says hi"),
        (cast.alice.pk, "bff asks"),
        (None, "Hello, world."),
    ]
