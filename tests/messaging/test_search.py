"""Search over messages and thread titles: visibility, index sync, hostile queries, the API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from messaging import selectors
from messaging.models import Message
from messaging.services import message_delete, message_edit, thread_delete
from tests.conftest import Cast
from tests.factories import ThreadFactory, UserFactory
from tests.helpers import (
    API,
    CHAT_PERMS,
    IS_POSTGRES,
    MISSING_THREAD,
    assert_error,
    assert_field_error,
    error,
    post,
    post_many,
    set_chat_perms,
)
from threads.errors import Invalid, NotFound
from threads.models import Thread, ThreadMembership

pytestmark = pytest.mark.django_db

HIT_KEYS = {"id", "threadId", "seq", "userId", "snippet", "createdAt"}


def _search(client: Any, status: int = 200, **params: Any) -> Any:
    response = client.get(f"{API}/search/?{urlencode(params)}")
    assert response.status_code == status, response.content[:500]
    return response.json() if status == 200 else response


def _ids(body: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in body["messages"]]


@pytest.fixture
def secret(cast: Cast) -> Thread:
    """charlie's thread, which alice and bob are not in, with a secret word in it and its title."""
    thread = ThreadFactory.create(creator=cast.charlie, title="Zanzibar plans")
    post(thread, cast.charlie, "the zanzibar password is swordfish")
    return thread


# --- finding ---------------------------------------------------------------------------------


def test_members_find_words_in_their_thread(cast: Cast) -> None:
    message = post(cast.thread, cast.bob, "The quarterly budget review is on Friday")
    post(cast.thread, cast.alice, "lunch?")
    for user in (cast.alice, cast.bob):
        body = _search(cast.client(user), q="budget")
        assert body["messages"] == [
            {
                "id": message.pk,
                "threadId": cast.thread.pk,
                "seq": 1,
                "userId": cast.bob.pk,
                "snippet": "The quarterly budget review is on Friday",
                "createdAt": body["messages"][0]["createdAt"],
            }
        ]
        assert body["messages"][0]["createdAt"].endswith("Z")
        assert body["threads"] == []


def test_every_word_must_match_in_any_case_and_order(cast: Cast) -> None:
    both = post(cast.thread, cast.alice, "Deploy the API gateway tonight")
    post(cast.thread, cast.alice, "the gateway is fine")
    client = cast.client(cast.alice)
    assert _ids(_search(client, q="GATEWAY deploy")) == [both.pk]
    assert _ids(_search(client, q="gateway, api!")) == [both.pk]
    assert _ids(_search(client, q="gateway nowhere")) == []


def test_whole_words_match_not_fragments(cast: Cast) -> None:
    post(cast.thread, cast.alice, "concatenate")
    assert _ids(_search(cast.client(cast.alice), q="cat")) == []


def test_accented_words_match_as_written(cast: Cast) -> None:
    message = post(cast.thread, cast.alice, "Un café à Zürich")
    client = cast.client(cast.alice)
    assert _ids(_search(client, q="CAFÉ zürich")) == [message.pk]
    # Both databases keep accents (PostgreSQL's 'simple' cannot drop them), so both agree.
    assert _ids(_search(client, q="cafe")) == []


def test_better_matches_come_first_then_newer(cast: Cast) -> None:
    weak = post(cast.thread, cast.alice, "kiwi and a long list of many other unrelated words here")
    strong = post(cast.thread, cast.alice, "kiwi kiwi kiwi")
    old_twin = post(cast.thread, cast.alice, "mango smoothie")
    new_twin = post(cast.thread, cast.alice, "mango smoothie")
    now = timezone.now()
    Message.objects.filter(pk=old_twin.pk).update(created_at=now - timedelta(hours=1))
    Message.objects.filter(pk=new_twin.pk).update(created_at=now)
    client = cast.client(cast.alice)
    assert _ids(_search(client, q="kiwi")) == [strong.pk, weak.pk]
    assert _ids(_search(client, q="mango")) == [new_twin.pk, old_twin.pk]


def test_before_keeps_older_messages_only(cast: Cast) -> None:
    old, new = post(cast.thread, cast.alice, "papaya one"), post(cast.thread, cast.alice, "papaya")
    now = timezone.now()
    Message.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=2))
    Message.objects.filter(pk=new.pk).update(created_at=now)
    client = cast.client(cast.alice)
    cutoff = (now - timedelta(days=1)).isoformat()
    assert _ids(_search(client, q="papaya", before=cutoff)) == [old.pk]
    assert_field_error(_search(client, 400, q="papaya", before="yesterday"), "before")


def test_thread_titles_are_searched_too(cast: Cast, secret: Thread) -> None:
    other = ThreadFactory.create(creator=cast.alice, title="Zanzibar trip")
    body = _search(cast.client(cast.alice), q="zanzibar")
    assert body["messages"] == []
    assert body["threads"] == [
        {
            "id": other.pk,
            "title": "Zanzibar trip",
            "lastActivityAt": body["threads"][0]["lastActivityAt"],
        }
    ]
    charlies = _search(cast.client(cast.charlie), q="zanzibar")["threads"]
    assert [thread["id"] for thread in charlies] == [secret.pk]


# --- visibility ------------------------------------------------------------------------------


def test_other_peoples_threads_are_never_searched(cast: Cast, secret: Thread) -> None:
    post(cast.thread, cast.alice, "no secrets here")
    for user in (cast.alice, cast.bob):
        body = _search(cast.client(user), q="swordfish")
        assert body == {"messages": [], "threads": []}
        assert _search(cast.client(user), q="zanzibar") == {"messages": [], "threads": []}
    found = _search(cast.client(cast.charlie), q="swordfish")
    assert [hit["threadId"] for hit in found["messages"]] == [secret.pk]


def test_leaving_a_thread_hides_its_messages(cast: Cast) -> None:
    post(cast.thread, cast.alice, "the launch code")
    client = cast.client(cast.bob)
    assert len(_search(client, q="launch")["messages"]) == 1
    ThreadMembership.objects.filter(thread=cast.thread, user=cast.bob).delete()
    assert _search(client, q="launch") == {"messages": [], "threads": []}


def test_an_admin_searches_their_own_threads_as_their_thread_list_shows(
    cast: Cast, secret: Thread
) -> None:
    client = cast.client(cast.admin)
    # Like GET /threads/, a plain search covers the admin's own threads only ...
    assert _search(client, q="swordfish") == {"messages": [], "threads": []}
    # ... and like every thread route, threadId reaches any thread.
    body = _search(client, q="zanzibar", threadId=secret.pk)
    assert [hit["threadId"] for hit in body["messages"]] == [secret.pk]
    assert [thread["id"] for thread in body["threads"]] == [secret.pk]


def test_thread_id_narrows_the_search_to_that_thread(cast: Cast) -> None:
    other = ThreadFactory.create(creator=cast.alice, title="Walrus facts")
    here = post(cast.thread, cast.alice, "walrus tusks")
    there = post(other, cast.alice, "walrus whiskers")
    client = cast.client(cast.alice)
    assert set(_ids(_search(client, q="walrus"))) == {here.pk, there.pk}
    body = _search(client, q="walrus", threadId=cast.thread.pk)
    assert _ids(body) == [here.pk]
    assert body["threads"] == []
    body = _search(client, q="walrus", threadId=other.pk)
    assert _ids(body) == [there.pk]
    assert [thread["id"] for thread in body["threads"]] == [other.pk]
    # Empty means absent, as with the other optional parameters.
    assert len(_search(client, q="walrus", threadId="")["messages"]) == 2


@pytest.mark.parametrize("thread_id", ["secret", MISSING_THREAD, "not a valid id!", "x" * 65])
def test_a_thread_the_caller_cannot_see_is_the_one_404(
    cast: Cast, secret: Thread, thread_id: str
) -> None:
    thread_id = secret.pk if thread_id == "secret" else thread_id
    client = cast.client(cast.alice)
    response = _search(client, 404, q="swordfish", threadId=thread_id)
    missing = _search(client, 404, q="swordfish", threadId=MISSING_THREAD)
    assert response.json() == error("not_found", "Thread not found.")
    assert response.content == missing.content
    # The same answer the thread's own routes give.
    page = client.get(f"{API}/threads/{secret.pk}/messages/")
    assert page.status_code == 404
    assert page.content == response.content


def test_charlie_gets_the_404_for_alices_thread(cast: Cast) -> None:
    post(cast.thread, cast.alice, "quarterly numbers")
    response = _search(cast.client(cast.charlie), 404, q="quarterly", threadId=cast.thread.pk)
    assert response.json() == error("not_found", "Thread not found.")


def test_anonymous_is_401(cast: Cast) -> None:
    response = _search(cast.client(None), 401, q="anything")
    assert response.json() == error(
        "not_authenticated", "Authentication credentials were not provided."
    )


def test_a_bad_token_is_401(cast: Cast) -> None:
    client = cast.client(None)
    client.credentials(HTTP_AUTHORIZATION="Bearer nope")
    assert_error(client.get(f"{API}/search/?q=x"), 401, "not_authenticated")


@pytest.mark.parametrize("perm", ["chat-svc:message:view", "chat-svc:thread:view"])
def test_search_needs_both_view_permissions(cast: Cast, perm: str) -> None:
    post(cast.thread, cast.alice, "hello there")
    set_chat_perms(cast.bob, [codename for codename in CHAT_PERMS if codename != perm])
    extras: list[dict[str, str]] = [
        {"q": "hello"},
        {"q": "hello", "threadId": cast.thread.pk},
        {"q": "hello", "threadId": MISSING_THREAD},
        {"q": "!!!"},
        {},
    ]
    for params in extras:
        response = _search(cast.client(cast.bob), 403, **params)
        assert response.json() == error(
            "permission_denied", f"You do not have the {perm} permission."
        )


# --- the index follows writes ----------------------------------------------------------------


def test_an_edit_is_found_by_its_new_words_only(cast: Cast) -> None:
    message = post(cast.thread, cast.alice, "meet at the harbour")
    client = cast.client(cast.alice)
    response = client.patch(
        f"{API}/messages/{message.pk}/", {"text": "meet at the station"}, format="json"
    )
    assert response.status_code == 200
    assert _ids(_search(client, q="harbour")) == []
    assert _ids(_search(client, q="station")) == [message.pk]
    message_edit(message=message, text="meet at the airport")
    assert _ids(_search(client, q="station")) == []
    assert _ids(_search(client, q="airport")) == [message.pk]


def test_a_deleted_message_is_not_found(cast: Cast) -> None:
    keep = post(cast.thread, cast.alice, "zebra crossing")
    gone = post(cast.thread, cast.bob, "zebra stripes")
    client = cast.client(cast.alice)
    assert set(_ids(_search(client, q="zebra"))) == {keep.pk, gone.pk}
    assert client.delete(f"{API}/messages/{gone.pk}/").status_code == 204
    assert _ids(_search(client, q="zebra")) == [keep.pk]
    message_delete(message=keep)
    assert _ids(_search(client, q="zebra")) == []
    _assert_index_consistent()


def test_a_deleted_thread_takes_its_messages_out_of_the_index(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 3, prefix="platypus ")
    thread_delete(thread=cast.thread)
    assert _search(cast.client(cast.alice), q="platypus") == {"messages": [], "threads": []}
    _assert_index_consistent()


def test_status_and_text_saves_of_a_streamed_reply_keep_the_index_in_sync(cast: Cast) -> None:
    reply = post(cast.thread, None, "")
    client = cast.client(cast.alice)
    for text in ("partial answ", "partial answer about otters"):
        Message.objects.filter(pk=reply.pk).update(text=text, status=Message.Status.STREAMING)
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.COMPLETE)
    assert _ids(_search(client, q="otters")) == [reply.pk]
    assert _ids(_search(client, q="answ")) == []
    _assert_index_consistent()


def _assert_index_consistent() -> None:
    with connection.cursor() as cursor:
        if IS_POSTGRES:
            cursor.execute(
                "SELECT indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'message_text_search_idx'"
            )
            assert cursor.fetchall() == [(True,)]
        else:
            # Raises if the index and the table disagree in any word.
            cursor.execute(
                "INSERT INTO messaging_message_fts(messaging_message_fts, rank) "
                "VALUES ('integrity-check', 1)"
            )
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name = 'messaging_message' ORDER BY name"
            )
            # A later migration that rebuilds messaging_message on SQLite drops these.
            assert [row[0] for row in cursor.fetchall()] == [
                "messaging_message_fts_delete",
                "messaging_message_fts_insert",
                "messaging_message_fts_update",
            ]


def test_the_index_exists_and_agrees_with_the_table(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 5, prefix="word ")
    _assert_index_consistent()


@pytest.mark.skipif(not IS_POSTGRES, reason="PostgreSQL's planner")
def test_postgresql_can_use_the_gin_index_for_the_search_condition(cast: Cast) -> None:
    # The selector's match condition, spelled by the selector's own constants: any other
    # spelling than the indexed expression would leave only sequential scans. (Which index the
    # whole query uses is the planner's choice: a user in few threads is best served by the
    # thread index.)
    sql = (
        "EXPLAIN SELECT m.id FROM messaging_message AS m "  # noqa: S608 (our constants)
        f"WHERE {selectors._PG_VECTOR} @@ {selectors._PG_QUERY} AND {selectors._SEARCHABLE}"
    )
    with connection.cursor() as cursor:
        # The test table is tiny; forbid the sequential scan to see whether the index applies.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(sql, ['"hello"'])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "message_text_search_idx" in plan, plan


@pytest.mark.django_db(transaction=True)
def test_the_migration_indexes_existing_messages_and_reverses(cast: Cast) -> None:
    message = post(cast.thread, cast.alice, "an ocelot before the index")
    executor = MigrationExecutor(connection)
    executor.migrate([("messaging", "0002_threadevent")])
    with connection.cursor() as cursor:
        names = connection.introspection.table_names(cursor)
    assert "messaging_message_fts" not in names
    post(cast.thread, cast.alice, "an ocelot while unindexed")
    executor = MigrationExecutor(connection)
    executor.migrate([("messaging", "0003_message_search_index")])
    hits = _search(cast.client(cast.alice), q="ocelot")["messages"]
    assert len(hits) == 2
    assert message.pk in {hit["id"] for hit in hits}
    _assert_index_consistent()
    executor = MigrationExecutor(connection)
    executor.migrate([("messaging", "0004_search_index_skips_streaming")])
    assert len(_search(cast.client(cast.alice), q="ocelot")["messages"]) == 2
    _assert_index_consistent()
    if IS_POSTGRES:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_indexdef('message_text_search_idx'::regclass)")
            assert "WHERE ((status)::text <> 'streaming'::text)" in cursor.fetchone()[0]


def test_a_reply_is_found_once_it_is_written_not_while_it_streams(cast: Cast) -> None:
    reply = post(cast.thread, None, "")
    client = cast.client(cast.alice)
    Message.objects.filter(pk=reply.pk).update(
        text="half an answer about wombats", status=Message.Status.STREAMING
    )
    assert _ids(_search(client, q="wombats")) == []
    Message.objects.filter(pk=reply.pk).update(
        text="a whole answer about wombats", status=Message.Status.COMPLETE
    )
    assert _ids(_search(client, q="wombats")) == [reply.pk]
    _assert_index_consistent()


# --- hostile and bad queries -----------------------------------------------------------------

HOSTILE = [
    '"',
    '"unbalanced',
    "'",
    "*",
    "ocean*",
    "NEAR(",
    "NEAR(ocean wave, 2)",
    "-ocean",
    "ocean -wave",
    "text:ocean",
    "ocean:",
    ":",
    "OR",
    "ocean OR",
    "OR ocean",
    "AND",
    "NOT ocean",
    "ocean NOT",
    "^ocean",
    "(ocean",
    "ocean)",
    "{text}: ocean",
    "ocean & wave | !sea <-> x",
    "\\",
    "%",
    "_",
    "100%",
    "ocean_wave",
    "'; DROP TABLE messaging_message; --",
    "ocean\x01",
    "ocean\x00",
    "🌊 ocean",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_query_syntax_characters_never_fail(cast: Cast, query: str) -> None:
    post(cast.thread, cast.alice, "ocean wave at sea, text and more")
    response = cast.client(cast.alice).get(f"{API}/search/", {"q": query})
    assert response.status_code in (200, 400), (query, response.content[:300])
    if response.status_code == 400:
        assert_field_error(response, "q")
    assert Message.objects.count() == 1


def test_operators_are_plain_words(cast: Cast) -> None:
    both = post(cast.thread, cast.alice, "apples or pears, near the tree")
    only_apples = post(cast.thread, cast.alice, "apples")
    client = cast.client(cast.alice)
    # `OR` is a word to find, not an alternative; `-` does not exclude; NEAR( groups nothing.
    assert _ids(_search(client, q="apples OR pears")) == [both.pk]
    assert _ids(_search(client, q="apples OR zebra")) == []
    assert set(_ids(_search(client, q="-apples"))) == {both.pk, only_apples.pk}
    assert _ids(_search(client, q="NEAR(tree apples")) == [both.pk]
    assert _ids(_search(client, q='"pears apples"')) == [both.pk]


@pytest.mark.parametrize("query", ["", "   ", "!!!", "*", '"', "-", ":", "___", "... ,;"])
def test_a_query_without_words_is_400(cast: Cast, query: str) -> None:
    response = _search(cast.client(cast.alice), 400, q=query)
    assert_field_error(response, "q")


def test_a_missing_q_is_400(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/search/")
    assert response.json() == error(
        "invalid", "q: This field is required.", {"q": ["This field is required."]}
    )
    assert response.status_code == 400


def test_q_may_be_200_characters_not_201(cast: Cast) -> None:
    client = cast.client(cast.alice)
    _search(client, q="a" * 200)
    assert_field_error(_search(client, 400, q="a" * 201), "q")
    assert_field_error(_search(client, 400, q="a " * 100 + "b"), "q")


def test_limit_is_clamped_to_1_through_50(cast: Cast) -> None:
    post_many(cast.thread, cast.alice, 55, prefix="heron ")
    ThreadFactory.create(creator=cast.alice, title="heron 1")
    ThreadFactory.create(creator=cast.alice, title="heron 2")
    client = cast.client(cast.alice)
    for limit, expected in ((0, 1), (-7, 1), (1, 1), (3, 3), (50, 50), (51, 50), (10**9, 50)):
        body = _search(client, q="heron", limit=limit)
        assert len(body["messages"]) == expected, limit
        assert len(body["threads"]) == min(expected, 2), limit
    assert len(_search(client, q="heron")["messages"]) == selectors.DEFAULT_SEARCH_LIMIT
    assert_field_error(_search(client, 400, q="heron", limit="ten"), "limit")


# --- snippets --------------------------------------------------------------------------------


def test_a_long_message_is_cut_around_the_match(cast: Cast) -> None:
    text = " ".join(f"filler{i}" for i in range(100)) + " the needle is here " + "tail " * 100
    post(cast.thread, cast.alice, text)
    snippet = _search(cast.client(cast.alice), q="needle")["messages"][0]["snippet"]
    assert "the needle is here" in snippet
    assert snippet.startswith("…")
    assert snippet.endswith("…")
    assert len(snippet) <= selectors.SNIPPET_CHARS + 2
    # Cut between words: every word in the excerpt is whole.
    assert set(snippet.strip("…").split()) <= set(text.split())


def test_snippets_are_plain_text_on_one_line(cast: Cast) -> None:
    post(cast.thread, cast.alice, "<b>bold</b>\n\nand   <script>x()</script> spaced")
    snippet = _search(cast.client(cast.alice), q="spaced")["messages"][0]["snippet"]
    assert snippet == "<b>bold</b> and <script>x()</script> spaced"


def test_snippet_edges() -> None:
    assert selectors.search_snippet("short one", ["one"]) == "short one"
    long_word = "x" * 500
    snippet = selectors.search_snippet(f"{long_word} end", ["end"])
    assert snippet.endswith("end")
    assert len(snippet) <= selectors.SNIPPET_CHARS + 1
    start = selectors.search_snippet("start " + "word " * 100, ["start"])
    assert start.startswith("start word") and start.endswith("…")


def test_the_endpoint_is_documented(cast: Cast) -> None:
    schema = cast.client(cast.alice).get(f"{API}/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/search/"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert set(parameters) == {"q", "threadId", "limit", "before"}
    assert parameters["q"]["required"] is True
    output = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert output.rsplit("/", 1)[1] in schema["components"]["schemas"]


# --- the selectors, as other code calls them -------------------------------------------------


def test_message_search_returns_plain_hits(cast: Cast, secret: Thread) -> None:
    message = post(cast.thread, cast.bob, "the ferry leaves at nine")
    hits = selectors.message_search(user=cast.alice, query="ferry")
    assert hits == [
        selectors.MessageHit(
            id=message.pk,
            thread_id=cast.thread.pk,
            seq=message.seq,
            author_id=cast.bob.pk,
            snippet="the ferry leaves at nine",
            created_at=message.created_at,
        )
    ]
    assert selectors.message_search(user=cast.alice, query="swordfish") == []
    with pytest.raises(NotFound):
        selectors.message_search(user=cast.alice, query="swordfish", thread_id=secret.pk)
    with pytest.raises(Invalid):
        selectors.message_search(user=cast.alice, query="?!")
    threads = selectors.thread_search(user=cast.alice, query="ALICE's")
    assert [(hit.id, hit.title) for hit in threads] == [(cast.thread.pk, "Alice's thread")]


def test_the_fallback_for_other_databases_keeps_the_same_rules(cast: Cast, secret: Thread) -> None:
    message = post(cast.thread, cast.alice, "Walnut bread")
    threads = ThreadMembership.objects.filter(user=cast.alice).values("thread_id")
    found = selectors._like_search(terms=["walnut"], threads=threads, before=None, limit=5)
    assert [row.pk for row in found] == [message.pk]
    assert selectors._like_search(terms=["swordfish"], threads=threads, before=None, limit=5) == []
    Message.objects.filter(pk=message.pk).update(status=Message.Status.STREAMING)
    assert selectors._like_search(terms=["walnut"], threads=threads, before=None, limit=5) == []


def test_a_new_user_with_no_threads_finds_nothing(cast: Cast, secret: Thread) -> None:
    dave = UserFactory.create(username="dave")
    assert _search(cast.client(dave), q="swordfish zanzibar") == {"messages": [], "threads": []}
