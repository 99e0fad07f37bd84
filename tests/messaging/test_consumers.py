"""The WebSocket door (/ws/v1/events/): authentication, origins, subscriptions, resume, removal,
the outsider, and bad input. Driven through chatproject.asgi.application, as daphne serves it."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import Client

from chatproject.asgi import application
from messaging import events, services, streams
from messaging.models import Message
from messaging.wire import message_json
from tests.conftest import Cast
from threads import services as thread_services
from threads.models import CHAT_PERMISSIONS, Thread, ThreadMembership, User
from threads.selectors import thread_get
from threads.wire import member_json, thread_json

# Real commits, so on_commit publishes as in production.
pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")
Headers = Sequence[tuple[bytes, bytes]]
TIMEOUT = 3.0  # generous bound for one frame; nothing here should take more than milliseconds
QUIET = 0.3  # how long "nothing arrives" is watched, after a witness saw the same event
MISSING_THREAD = "thr_doesnotexist00000000000"
NOT_FOUND = {"code": "not_found", "message": "Thread not found.", "fields": {}}


async def act(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a service (or any ORM code) off the event loop; its on_commit publishes as in prod."""
    return await sync_to_async(fn)(*args, **kwargs)


async def receive(comm: WebsocketCommunicator) -> dict[str, Any]:
    frame = await comm.receive_json_from(timeout=TIMEOUT)
    assert isinstance(frame, dict)
    return frame


async def receive_n(comm: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    return [await receive(comm) for _ in range(count)]


async def drain(comm: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Every frame that arrives until the socket has been quiet for QUIET seconds."""
    frames = []
    while not await comm.receive_nothing(timeout=QUIET):
        frames.append(await receive(comm))
    return frames


async def assert_silent(comm: WebsocketCommunicator) -> None:
    frames = await drain(comm)
    assert frames == []


async def subscribe(
    comm: WebsocketCommunicator, thread_id: str, last_seq: int | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"action": "subscribe", "threadId": thread_id}
    if last_seq is not None:
        frame["lastSeq"] = last_seq
    await comm.send_json_to(frame)
    return await receive(comm)


async def ping(comm: WebsocketCommunicator, ref: str = "alive") -> None:
    await comm.send_json_to({"action": "ping", "ref": ref})
    assert await receive(comm) == {"type": "pong", "ref": ref}


@dataclass
class Posted:
    message: Message
    event: dict[str, Any]  # the chatMessageAdded every follower must receive


def post(thread: Thread, author: User, text: str) -> Posted:
    message, _ = services.message_post(thread=thread, author=author, text=text)
    # message_post leaves the event seq it took on the thread instance.
    seq = thread.last_event_seq
    return Posted(message, event(thread.pk, "chatMessageAdded", message_json(message), seq=seq))


def event(thread_id: str, kind: str, data: dict[str, Any], *, seq: int) -> dict[str, Any]:
    return {"type": kind, "threadId": thread_id, "seq": seq, "data": data}


def grant_only(user: User, *codenames: str) -> None:
    """Give `user` exactly these chat permissions (instead of the default group's ten)."""
    user.groups.clear()
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="threads", codename__in=codenames)
    )


def all_chat_perms_but(missing: str) -> list[str]:
    return [codename for codename, _ in CHAT_PERMISSIONS if codename != missing]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def tokens(cast: Cast) -> dict[str, str]:
    return {
        user.username: thread_services.token_issue(user=user)[1]
        for user in (cast.alice, cast.bob, cast.charlie, cast.admin)
    }


@pytest.fixture
def alice_session(cast: Cast) -> str:
    client = Client()
    client.force_login(cast.alice)
    return client.cookies["sessionid"].value


class Sockets:
    """Opens sockets to /ws/v1/events/ as a cast member (by name) or with given credentials."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens
        self.opened: list[WebsocketCommunicator] = []

    async def _connect(
        self, user: str | None, headers: Headers, query: str
    ) -> tuple[WebsocketCommunicator, bool, int | None]:
        if user is not None:
            query = f"token={self.tokens[user]}"
        path = "/ws/v1/events/" + (f"?{query}" if query else "")
        comm = WebsocketCommunicator(application, path, headers=list(headers))
        self.opened.append(comm)
        connected, code = await comm.connect(timeout=TIMEOUT)
        return comm, connected, code

    async def __call__(
        self, user: str | None = None, *, headers: Headers = (), query: str = ""
    ) -> WebsocketCommunicator:
        """An accepted socket."""
        comm, connected, code = await self._connect(user, headers, query)
        assert connected, code
        return comm

    async def refused(self, *, headers: Headers = (), query: str = "") -> int | None:
        """Try to connect; the close code of the refusal."""
        _, connected, code = await self._connect(None, headers, query)
        assert not connected
        return code

    async def close_all(self) -> None:
        for comm in self.opened:
            with contextlib.suppress(Exception):
                await comm.disconnect(timeout=TIMEOUT)


@pytest.fixture
async def ws(tokens: dict[str, str]) -> AsyncIterator[Sockets]:
    sockets = Sockets(tokens)
    yield sockets
    await sockets.close_all()
    # sync_to_async runs the ORM on one long-lived thread; let its connection go so the test
    # database can be flushed and dropped.
    await sync_to_async(connections.close_all)()


# --- authentication -------------------------------------------------------------------------------


async def test_a_token_in_the_query_string_authenticates(cast: Cast, ws: Sockets) -> None:
    alice = await ws("alice")

    assert await subscribe(alice, cast.thread.pk) == {
        "type": "subscribed",
        "threadId": cast.thread.pk,
        "seq": 0,
    }


async def test_a_token_in_the_authorization_header_authenticates(
    cast: Cast, ws: Sockets, tokens: dict[str, str]
) -> None:
    for keyword in ("Bearer", "Token", "bearer"):
        bob = await ws(headers=[(b"authorization", f"{keyword} {tokens['bob']}".encode())])

        assert (await subscribe(bob, cast.thread.pk))["type"] == "subscribed", keyword


async def test_a_session_cookie_authenticates(cast: Cast, ws: Sockets, alice_session: str) -> None:
    alice = await ws(headers=[(b"cookie", f"sessionid={alice_session}".encode())])

    assert (await subscribe(alice, cast.thread.pk))["type"] == "subscribed"


async def test_missing_or_bad_credentials_are_refused_with_4401(cast: Cast, ws: Sockets) -> None:
    token, revoked = await act(thread_services.token_issue, user=cast.alice)
    await act(thread_services.token_revoke, token=token)
    attempts: dict[str, dict[str, Any]] = {
        "nothing": {},
        "bad query token": {"query": "token=tl_not-a-real-token"},
        "empty query token": {"query": "token="},
        "bad header token": {"headers": [(b"authorization", b"Bearer tl_not-a-real-token")]},
        "bad session cookie": {"headers": [(b"cookie", b"sessionid=not-a-session")]},
        "revoked token": {"query": f"token={revoked}"},
    }

    for name, credentials in attempts.items():
        assert await ws.refused(**credentials) == 4401, name


async def test_a_bad_token_does_not_fall_back_to_the_session_cookie(
    cast: Cast, ws: Sockets, alice_session: str
) -> None:
    cookie = (b"cookie", f"sessionid={alice_session}".encode())
    bad_header = (b"authorization", b"Bearer tl_garbage")

    assert await ws.refused(headers=[cookie], query="token=tl_garbage") == 4401
    assert await ws.refused(headers=[cookie, bad_header]) == 4401


# --- origins --------------------------------------------------------------------------------------

EVIL = (b"origin", b"http://evil.example")


async def test_a_foreign_origin_is_refused(
    cast: Cast, ws: Sockets, tokens: dict[str, str], alice_session: str
) -> None:
    await ws.refused(query=f"token={tokens['alice']}", headers=[EVIL])
    cookie = (b"cookie", f"sessionid={alice_session}".encode())
    await ws.refused(headers=[cookie, EVIL])


async def test_an_allowed_host_origin_or_no_origin_is_accepted(
    cast: Cast, ws: Sockets, tokens: dict[str, str]
) -> None:
    same_site = await ws(
        query=f"token={tokens['alice']}", headers=[(b"origin", b"http://testserver")]
    )
    no_origin = await ws("alice")

    await ping(same_site)
    await ping(no_origin)


# --- live events ----------------------------------------------------------------------------------


async def test_owner_and_member_receive_every_kind_of_thread_event(cast: Cast, ws: Sockets) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    for comm in (alice, bob):
        assert await subscribe(comm, cast.thread.pk) == {
            "type": "subscribed",
            "threadId": cast.thread.pk,
            "seq": 0,
        }
    tid = cast.thread.pk

    updated = await act(services.thread_update, thread=cast.thread, title="Renamed")
    message = (await act(post, cast.thread, cast.bob, "hello")).message
    posted = message_json(message)
    edited = message_json(await act(services.message_edit, message=message, text="hello!"))
    await act(services.message_delete, message=message)
    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.charlie])
    charlie_member = await act(
        lambda: member_json(ThreadMembership.objects.get(thread_id=tid, user=cast.charlie))
    )
    await act(
        services.membership_remove, thread=cast.thread, actor=cast.alice, user_id=cast.charlie.pk
    )
    await act(services.thread_delete, thread=cast.thread)

    expected = [
        event(tid, "chatThreadUpdate", thread_json(updated), seq=1),
        event(tid, "chatMessageAdded", posted, seq=2),
        event(tid, "chatMessageUpdated", edited, seq=3),
        event(tid, "chatMessageDeleted", {"id": posted["id"], "seq": 1}, seq=4),
        event(tid, "chatMemberAdded", charlie_member, seq=5),
        event(tid, "chatMemberRemoved", {"userId": cast.charlie.pk}, seq=6),
        event(tid, "chatThreadDeleted", {"id": tid}, seq=7),
    ]
    assert expected[0]["data"]["title"] == "Renamed"
    assert edited["text"] == "hello!"
    assert edited["edited"] is True
    for comm in (alice, bob):
        assert await receive_n(comm, len(expected)) == expected


async def test_subscribed_reports_the_threads_current_seq(cast: Cast, ws: Sockets) -> None:
    for i in range(3):
        await act(post, cast.thread, cast.alice, f"m{i}")
    bob = await ws("bob")

    assert await subscribe(bob, cast.thread.pk) == {
        "type": "subscribed",
        "threadId": cast.thread.pk,
        "seq": 3,
    }
    await assert_silent(bob)  # without lastSeq: from now on, no replay


async def test_an_admin_can_follow_any_thread(cast: Cast, ws: Sockets) -> None:
    admin = await ws("admin")
    assert (await subscribe(admin, cast.thread.pk))["type"] == "subscribed"

    message = await act(post, cast.thread, cast.bob, "seen by the admin")

    assert await receive(admin) == message.event


async def test_unsubscribe_stops_the_threads_events(cast: Cast, ws: Sockets) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)
    await subscribe(bob, cast.thread.pk)

    await bob.send_json_to({"action": "unsubscribe", "threadId": cast.thread.pk})
    assert await receive(bob) == {"type": "unsubscribed", "threadId": cast.thread.pk}
    message = await act(post, cast.thread, cast.alice, "after bob left the stream")

    assert await receive(alice) == message.event
    await assert_silent(bob)


async def test_closing_one_socket_leaves_the_other_followers_receiving(
    cast: Cast, ws: Sockets
) -> None:
    # The process joins a thread's group once for all its sockets (messaging.events.Hub).
    first, second, bob = await ws("alice"), await ws("alice"), await ws("bob")
    for comm in (first, second, bob):
        await subscribe(comm, cast.thread.pk)
    message = await act(post, cast.thread, cast.bob, "to all three")
    for comm in (first, second, bob):
        assert await receive(comm) == message.event

    await first.disconnect()
    await second.send_json_to({"action": "unsubscribe", "threadId": cast.thread.pk})
    assert (await receive(second))["type"] == "unsubscribed"
    later = await act(post, cast.thread, cast.alice, "bob still hears this")

    assert await receive(bob) == later.event
    await assert_silent(second)


async def test_subscribing_twice_does_not_deliver_twice(cast: Cast, ws: Sockets) -> None:
    bob = await ws("bob")
    await subscribe(bob, cast.thread.pk)
    assert (await subscribe(bob, cast.thread.pk))["type"] == "subscribed"

    message = await act(post, cast.thread, cast.alice, "once")

    assert await receive(bob) == message.event
    await assert_silent(bob)


# --- the outsider ---------------------------------------------------------------------------------


async def test_an_outsider_gets_the_missing_thread_error_and_then_nothing(
    cast: Cast, ws: Sockets
) -> None:
    await act(post, cast.thread, cast.alice, "before charlie tried")
    alice, charlie = await ws("alice"), await ws("charlie")
    await subscribe(alice, cast.thread.pk)
    tid = cast.thread.pk
    attempts: list[tuple[str, int | None]] = [
        (tid, None),
        (tid, 0),  # asking for the log from the start
        (f" {tid} ", None),
        (f"{tid}\n", None),
        (tid.upper(), None),
        (f"{tid}/", None),
        (MISSING_THREAD, None),
    ]

    for tried, last_seq in attempts:
        refused = await subscribe(charlie, tried, last_seq)

        # The same answer as for a thread that does not exist, whatever the spelling.
        assert refused == {
            "type": "error",
            "error": NOT_FOUND,
            "action": "subscribe",
            "threadId": tried,
        }, tried

    await act(post, cast.thread, cast.alice, "not for charlie")
    await act(services.thread_update, thread=cast.thread, title="Still not for charlie")
    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.admin])
    assert [frame["type"] for frame in await receive_n(alice, 3)] == [
        "chatMessageAdded",
        "chatThreadUpdate",
        "chatMemberAdded",
    ]
    await assert_silent(charlie)
    await ping(charlie)


# --- permissions ----------------------------------------------------------------------------------


async def test_without_thread_stream_permission_the_socket_is_refused(
    cast: Cast, ws: Sockets
) -> None:
    await act(grant_only, cast.bob, *all_chat_perms_but("chat-svc:thread:stream"))

    bob = await ws("bob")

    assert await receive(bob) == {
        "type": "error",
        "error": {
            "code": "permission_denied",
            "message": "You do not have the chat-svc:thread:stream permission.",
            "fields": {},
        },
    }
    assert await bob.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}


async def test_without_message_stream_permission_only_thread_events_arrive(
    cast: Cast, ws: Sockets
) -> None:
    await act(grant_only, cast.bob, *all_chat_perms_but("chat-svc:message:stream"))
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)
    await subscribe(bob, cast.thread.pk)

    await act(post, cast.thread, cast.alice, "hidden from bob")
    updated = await act(services.thread_update, thread=cast.thread, title="Visible")
    await act(post, cast.thread, cast.alice, "hidden too")
    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.charlie])

    live = await receive_n(bob, 2)
    assert [(f["type"], f["seq"]) for f in live] == [
        ("chatThreadUpdate", 2),
        ("chatMemberAdded", 4),
    ]
    assert live[0]["data"] == thread_json(updated)
    assert [f["type"] for f in await receive_n(alice, 4)] == [
        "chatMessageAdded",
        "chatThreadUpdate",
        "chatMessageAdded",
        "chatMemberAdded",
    ]
    await assert_silent(bob)

    # The same filter applies to what a resuming socket reads back from the log.
    replay = await ws("bob")
    assert (await subscribe(replay, cast.thread.pk, last_seq=0))["seq"] == 4
    assert await receive_n(replay, 2) == live
    await assert_silent(replay)


# --- resume ---------------------------------------------------------------------------------------


async def test_resuming_from_last_seq_replays_exactly_the_missed_events_then_live_ones(
    cast: Cast, ws: Sockets
) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)
    await subscribe(bob, cast.thread.pk)
    for i in range(2):
        await act(post, cast.thread, cast.alice, f"seen {i}")
    seen = await receive_n(bob, 2)
    assert [f["seq"] for f in seen] == [1, 2]
    await bob.disconnect()

    first = (await act(post, cast.thread, cast.alice, "missed 0")).message
    await act(post, cast.thread, cast.bob, "missed 1")
    await act(services.message_edit, message=first, text="missed 0, edited")
    await act(services.thread_update, thread=cast.thread, session_prompt="Be terse.")
    watched = await receive_n(alice, 6)
    missed = watched[2:]

    bob = await ws("bob")
    assert await subscribe(bob, cast.thread.pk, last_seq=2) == {
        "type": "subscribed",
        "threadId": cast.thread.pk,
        "seq": 6,
    }
    assert await receive_n(bob, 4) == missed
    assert [f["seq"] for f in missed] == [3, 4, 5, 6]
    live = await act(post, cast.thread, cast.alice, "live")
    assert await receive(bob) == live.event
    assert (await receive(alice))["seq"] == 7
    await assert_silent(bob)


async def test_resuming_from_the_current_seq_or_beyond_replays_nothing(
    cast: Cast, ws: Sockets
) -> None:
    for i in range(3):
        await act(post, cast.thread, cast.alice, f"m{i}")
    at_current, beyond = await ws("bob"), await ws("bob")

    assert (await subscribe(at_current, cast.thread.pk, last_seq=3))["seq"] == 3
    assert (await subscribe(beyond, cast.thread.pk, last_seq=99))["seq"] == 3
    live = await act(post, cast.thread, cast.alice, "next")

    assert live.event["seq"] == 4
    for comm in (at_current, beyond):
        assert await receive(comm) == live.event
        await assert_silent(comm)


async def test_resuming_from_before_the_kept_log_gets_resync_then_live_events(
    cast: Cast, ws: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events.log, "EVENT_LOG_KEEP", 3)
    monkeypatch.setattr(events.log, "_PRUNE_EVERY", 5)
    for i in range(6):
        await act(post, cast.thread, cast.alice, f"m{i}")  # pruned at seq 5: the log keeps 3..6
    bob = await ws("bob")

    assert (await subscribe(bob, cast.thread.pk, last_seq=1))["seq"] == 6
    assert await receive(bob) == {
        "type": "resync",
        "threadId": cast.thread.pk,
        "seq": 6,
        "data": {"reason": "The events you missed are older than the log keeps."},
    }
    live = await act(post, cast.thread, cast.alice, "after the resync")
    assert await receive(bob) == live.event
    await assert_silent(bob)


async def test_resuming_from_the_oldest_kept_seq_needs_no_resync(
    cast: Cast, ws: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events.log, "EVENT_LOG_KEEP", 3)
    monkeypatch.setattr(events.log, "_PRUNE_EVERY", 5)
    messages = [await act(post, cast.thread, cast.alice, f"m{i}") for i in range(6)]
    bob = await ws("bob")

    await subscribe(bob, cast.thread.pk, last_seq=2)

    assert await receive_n(bob, 4) == [m.event for m in messages[2:]]
    await assert_silent(bob)


async def test_an_event_committed_while_subscribing_arrives_exactly_once(
    cast: Cast, ws: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscription joins the group, then reads the thread's seq: a post committed in
    between reaches it both live and from the log, and must be delivered once."""
    await act(post, cast.thread, cast.alice, "before")
    read_seq = streams._current_seq
    racing: list[Posted] = []

    def post_then_read(thread_id: str) -> int:
        if not racing:
            racing.append(post(cast.thread, cast.alice, "racing"))
        return read_seq(thread_id)

    monkeypatch.setattr(streams, "_current_seq", post_then_read)
    bob = await ws("bob")

    assert (await subscribe(bob, cast.thread.pk, last_seq=1))["seq"] == 2
    assert await receive(bob) == racing[0].event
    live = await act(post, cast.thread, cast.alice, "after")
    assert await receive(bob) == live.event
    await assert_silent(bob)


async def test_a_live_event_lost_in_transit_is_filled_from_the_log(
    cast: Cast, ws: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = await ws("bob")
    await subscribe(bob, cast.thread.pk)
    real_publish = events.publish

    def lose_seq_2(event: dict[str, Any], *, groups: Any) -> None:
        if event["seq"] != 2:
            real_publish(event, groups=groups)

    # The module, not the package: `events.publish` is the function itself.
    monkeypatch.setattr(importlib.import_module("messaging.events.publish"), "publish", lose_seq_2)
    messages = [await act(post, cast.thread, cast.alice, f"m{i}") for i in range(3)]

    assert await receive_n(bob, 3) == [m.event for m in messages]
    await assert_silent(bob)


# --- removal and deletion -------------------------------------------------------------------------


async def test_a_removed_member_gets_member_removed_once_and_then_nothing(
    cast: Cast, ws: Sockets
) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)
    await subscribe(bob, cast.thread.pk)

    await act(services.membership_remove, thread=cast.thread, actor=cast.alice, user_id=cast.bob.pk)
    for i in range(2):
        await act(post, cast.thread, cast.alice, f"after bob {i}")

    removed = event(cast.thread.pk, "chatMemberRemoved", {"userId": cast.bob.pk}, seq=1)
    assert await receive(bob) == removed
    assert await receive(alice) == removed
    assert [f["seq"] for f in await receive_n(alice, 2)] == [2, 3]
    # Neither the posts nor a second copy of the removal (it also comes by bob's own stream).
    await assert_silent(bob)
    await ping(bob)


async def test_a_removed_member_who_is_added_again_hears_of_it_and_can_follow_again(
    cast: Cast, ws: Sockets
) -> None:
    bob = await ws("bob")
    await subscribe(bob, cast.thread.pk)
    await act(services.membership_remove, thread=cast.thread, actor=cast.alice, user_id=cast.bob.pk)
    assert (await receive(bob))["type"] == "chatMemberRemoved"

    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.bob])
    notice = await receive(bob)
    assert (notice["type"], notice["seq"]) == ("chatThreadAdded", 2)
    assert cast.bob.pk in [m["userId"] for m in notice["data"]["members"]]
    assert (await subscribe(bob, cast.thread.pk, last_seq=notice["seq"]))["seq"] == 2
    message = await act(post, cast.thread, cast.alice, "welcome back")
    assert await receive(bob) == message.event
    await assert_silent(bob)


async def test_followers_of_a_deleted_thread_get_thread_deleted_once_and_then_nothing(
    cast: Cast, ws: Sockets
) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    for comm in (alice, bob):
        await subscribe(comm, cast.thread.pk)
    tid = cast.thread.pk
    last_words = await act(post, cast.thread, cast.alice, "last words")

    await act(services.thread_delete, thread=cast.thread)

    deleted = event(tid, "chatThreadDeleted", {"id": tid}, seq=2)
    for comm in (alice, bob):
        assert await receive_n(comm, 2) == [last_words.event, deleted]
        # A second copy also comes by each member's own stream: it must not go out.
        await assert_silent(comm)
        await ping(comm)


async def test_a_member_who_follows_nothing_hears_of_removal_and_deletion_once(
    cast: Cast, ws: Sockets
) -> None:
    other, _ = await act(services.thread_create, creator=cast.alice, members=[cast.bob])
    bob = await ws("bob")
    tid = cast.thread.pk

    await act(services.membership_remove, thread=other, actor=cast.alice, user_id=cast.bob.pk)
    await act(services.thread_delete, thread=cast.thread)

    assert await receive_n(bob, 2) == [
        event(other.pk, "chatMemberRemoved", {"userId": cast.bob.pk}, seq=2),
        event(tid, "chatThreadDeleted", {"id": tid}, seq=1),
    ]
    await assert_silent(bob)


# --- your own stream ------------------------------------------------------------------------------


async def test_being_added_to_a_thread_arrives_without_subscribing(cast: Cast, ws: Sockets) -> None:
    charlie, bob = await ws("charlie"), await ws("bob")
    await act(post, cast.thread, cast.alice, "history")

    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.charlie])

    notice = await receive(charlie)
    fresh = await act(lambda: thread_json(thread_get(thread_id=cast.thread.pk)))
    assert notice == event(cast.thread.pk, "chatThreadAdded", fresh, seq=2)
    assert [m["userId"] for m in notice["data"]["members"]] == [
        cast.alice.pk,
        cast.bob.pk,
        cast.charlie.pk,
    ]
    await assert_silent(bob)  # bob follows nothing; the notice is for the added user only

    assert (await subscribe(charlie, cast.thread.pk, last_seq=notice["seq"]))["seq"] == 2
    message = await act(post, cast.thread, cast.alice, "hi charlie")
    assert await receive(charlie) == message.event
    await assert_silent(charlie)


async def test_a_new_thread_arrives_on_every_members_own_stream(cast: Cast, ws: Sockets) -> None:
    alice, bob, charlie = await ws("alice"), await ws("bob"), await ws("charlie")

    thread, _ = await act(
        services.thread_create, creator=cast.alice, title="With charlie", members=[cast.charlie]
    )

    fresh = await act(lambda: thread_json(thread_get(thread_id=thread.pk)))
    expected = event(thread.pk, "chatThreadAdded", fresh, seq=1)
    assert await receive(charlie) == expected
    assert await receive(alice) == expected
    await assert_silent(bob)
    await assert_silent(charlie)


async def test_a_followed_thread_event_is_not_doubled_by_the_users_own_stream(
    cast: Cast, ws: Sockets
) -> None:
    # thread_create sends chatThreadAdded to the thread's group and to each member's own group.
    alice = await ws("alice")
    thread, _ = await act(
        services.thread_create, creator=cast.alice, title="Followed", thread_id="thr_followed"
    )
    assert (await receive(alice))["type"] == "chatThreadAdded"
    await subscribe(alice, thread.pk)

    message = await act(post, thread, cast.alice, "once")

    assert await receive(alice) == message.event
    await assert_silent(alice)


# --- bad input ------------------------------------------------------------------------------------


def _invalid(message: str, fields: dict[str, Any] | None = None, **echo: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "error",
        "error": {"code": "invalid", "message": message, "fields": fields or {}},
    }
    frame.update(echo)
    return frame


NOT_AN_OBJECT = _invalid("Frames are JSON objects.")


def _bad_frames(tid: str) -> list[tuple[str, dict[str, Any]]]:
    def subscribe_with(last_seq: str) -> str:
        return f'{{"action": "subscribe", "threadId": "{tid}", "lastSeq": {last_seq}}}'

    def not_an_integer(last_seq: str) -> tuple[str, dict[str, Any]]:
        error = _invalid(
            "lastSeq must be an integer.",
            {"lastSeq": ["Not an integer."]},
            action="subscribe",
            threadId=tid,
        )
        return subscribe_with(last_seq), error

    return [
        ("not json", NOT_AN_OBJECT),
        ("{garbage", NOT_AN_OBJECT),
        ("[1, 2]", NOT_AN_OBJECT),
        ('"subscribe"', NOT_AN_OBJECT),
        ("null", NOT_AN_OBJECT),
        (
            '{"action": "dance"}',
            _invalid(
                "Unknown action 'dance'.",
                {"action": ["Unknown action."]},
                action="dance",
                threadId=None,
            ),
        ),
        (
            "{}",
            _invalid(
                "Unknown action None.", {"action": ["Unknown action."]}, action=None, threadId=None
            ),
        ),
        (
            '{"action": "subscribe"}',
            _invalid(
                "threadId is required.",
                {"threadId": ["Required."]},
                action="subscribe",
                threadId=None,
            ),
        ),
        (
            '{"action": "subscribe", "threadId": ""}',
            _invalid(
                "threadId is required.",
                {"threadId": ["Required."]},
                action="subscribe",
                threadId="",
            ),
        ),
        (
            '{"action": "unsubscribe", "threadId": 42}',
            _invalid(
                "threadId is required.",
                {"threadId": ["Required."]},
                action="unsubscribe",
                threadId=42,
            ),
        ),
        not_an_integer('"3"'),
        not_an_integer("1.5"),
        not_an_integer("true"),
        not_an_integer("[1]"),
        (
            subscribe_with("-1"),
            _invalid(
                "lastSeq must be 0 or more.",
                {"lastSeq": ["Out of range."]},
                action="subscribe",
                threadId=tid,
            ),
        ),
    ]


async def test_each_bad_frame_gets_a_clear_error_and_the_socket_keeps_working(
    cast: Cast, ws: Sockets
) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)

    for raw, expected in _bad_frames(cast.thread.pk):
        await bob.send_to(text_data=raw)

        assert await receive(bob) == expected, raw
        await ping(bob, ref=raw)

    # None of the refused subscribes left a subscription behind.
    message = await act(post, cast.thread, cast.alice, "after the bad frames")
    assert await receive(alice) == message.event
    await assert_silent(bob)
    assert (await subscribe(bob, cast.thread.pk))["type"] == "subscribed"


async def test_a_frame_over_64_kib_closes_the_socket_with_1009(cast: Cast, ws: Sockets) -> None:
    bob = await ws("bob")

    await bob.send_to(text_data="x" * (64 * 1024 + 1))

    assert await bob.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 1009}


async def test_a_frame_of_exactly_64_kib_is_read(cast: Cast, ws: Sockets) -> None:
    bob = await ws("bob")
    envelope = json.dumps({"action": "ping", "ref": ""})
    ref = "r" * (64 * 1024 - len(envelope))
    frame = json.dumps({"action": "ping", "ref": ref})
    assert len(frame.encode()) == 64 * 1024

    await bob.send_to(text_data=frame)

    assert await receive(bob) == {"type": "pong", "ref": ref}


async def test_too_many_subscriptions_on_one_socket_are_refused(
    cast: Cast, ws: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "MAX_THREADS_PER_CONNECTION", 2)
    second, _ = await act(services.thread_create, creator=cast.alice, title="Two")
    third, _ = await act(services.thread_create, creator=cast.alice, title="Three")
    alice = await ws("alice")

    assert (await subscribe(alice, cast.thread.pk))["type"] == "subscribed"
    assert (await subscribe(alice, second.pk))["type"] == "subscribed"
    assert await subscribe(alice, third.pk) == _invalid(
        "At most 2 threads per connection.",
        {"threadId": ["Too many subscriptions."]},
        action="subscribe",
        threadId=third.pk,
    )
    # Re-subscribing to a followed thread is not a new one.
    assert (await subscribe(alice, second.pk))["type"] == "subscribed"
    await ping(alice)

    posted = [await act(post, t, cast.alice, t.title) for t in (cast.thread, second, third)]
    assert await receive_n(alice, 2) == [m.event for m in posted[:2]]
    await assert_silent(alice)


async def test_one_users_bad_frames_do_not_disturb_another_users_socket(
    cast: Cast, ws: Sockets
) -> None:
    alice, bob = await ws("alice"), await ws("bob")
    await subscribe(alice, cast.thread.pk)
    await subscribe(bob, cast.thread.pk)

    await bob.send_to(text_data="{garbage")
    assert (await receive(bob))["type"] == "error"
    await bob.send_to(text_data="x" * (65 * 1024))
    assert await bob.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 1009}

    message = await act(post, cast.thread, cast.bob, "alice still hears this")
    assert await receive(alice) == message.event
    await ping(alice)
