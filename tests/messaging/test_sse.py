"""The Server-Sent Events door (GET /api/v1/events/), driven through the ASGI application.

httpx's ASGITransport waits for the whole response, so an endless stream is driven by hand: an
http scope, one `http.request`, then the `http.response.body` chunks read from a queue until the
test sends `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import Client

from chatproject.asgi import application
from messaging import events, services, sse
from messaging.wire import message_json
from tests.conftest import Cast
from threads import services as thread_services
from threads.models import Thread, User
from threads.wire import thread_json

# Real commits, so on_commit publishes as in production.
pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")
TIMEOUT = 3.0
QUIET = 0.3
MISSING_THREAD = "thr_doesnotexist00000000000"
Headers = Sequence[tuple[bytes, bytes]]


async def act(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ORM code and services off the loop; their on_commit publishes as in production."""
    return await sync_to_async(fn)(*args, **kwargs)


def post(thread: Thread, author: User, text: str) -> dict[str, Any]:
    """Post, and return the chatMessageAdded event followers must get."""
    message, _ = services.message_post(thread=thread, author=author, text=text)
    return {
        "type": "chatMessageAdded",
        "threadId": thread.pk,
        "seq": thread.last_event_seq,  # message_post leaves the event seq it took here
        "data": message_json(message),
    }


@dataclass
class Block:
    """One SSE block: its fields and comment lines."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        assert self.data is not None
        parsed = json.loads(self.data)
        assert isinstance(parsed, dict)
        return parsed


def parse_block(text: str) -> Block:
    block = Block()
    for line in text.split("\n"):
        if line.startswith(":"):
            block.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        assert name in {"id", "event", "data", "retry"}, line
        assert getattr(block, name) is None, f"{name} twice in {text!r}"
        setattr(block, name, value)
    return block


class Stream:
    """A GET /api/v1/events/ request in flight."""

    def __init__(self, query: str, headers: Headers) -> None:
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/v1/events/",
            "raw_path": b"/api/v1/events/",
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.buffer = ""
        self.more_body = True
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(application(self.scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "http.request", "body": b"", "more_body": False})
        start = await asyncio.wait_for(self.from_app.get(), TIMEOUT)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {name.lower(): value for name, value in start["headers"]}

    async def _chunk(self, wait: float) -> None:
        message = await asyncio.wait_for(self.from_app.get(), wait)
        assert message["type"] == "http.response.body"
        self.buffer += message.get("body", b"").decode()
        self.more_body = message.get("more_body", False)

    async def body(self) -> bytes:
        """The whole body of a response that is not a stream."""
        while self.more_body:
            await self._chunk(TIMEOUT)
        return self.buffer.encode()

    async def next_block(self) -> Block:
        while "\n\n" not in self.buffer:
            await self._chunk(TIMEOUT)
        text, self.buffer = self.buffer.split("\n\n", 1)
        return parse_block(text)

    async def next_event(self) -> Block:
        """The next block that is an event (keep-alive comments skipped)."""
        while True:
            block = await self.next_block()
            if block.event is not None:
                return block

    async def events(self, count: int) -> list[Block]:
        return [await self.next_event() for _ in range(count)]

    async def quiet_events(self) -> list[Block]:
        """Every event that arrives until the stream has been quiet for QUIET seconds."""
        found: list[Block] = []
        while True:
            try:
                block = await self.next_block() if "\n\n" in self.buffer else None
                if block is None:
                    await self._chunk(QUIET)
                    continue
            except TimeoutError:
                return found
            if block.event is not None:
                found.append(block)

    async def close(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "http.disconnect"})
        await asyncio.wait_for(self.task, TIMEOUT)


class Opener(Protocol):
    def __call__(
        self, user: str | None = None, *, query: str = "", headers: Headers = ()
    ) -> Awaitable[Stream]: ...


@pytest.fixture
def tokens(cast: Cast) -> dict[str, str]:
    return {
        user.username: thread_services.token_issue(user=user)[1]
        for user in (cast.alice, cast.bob, cast.charlie, cast.admin)
    }


@pytest.fixture
async def streams(tokens: dict[str, str]) -> AsyncIterator[Opener]:
    opened: list[Stream] = []

    async def open_stream(
        user: str | None = None, *, query: str = "", headers: Headers = ()
    ) -> Stream:
        if user is not None:
            headers = [(b"authorization", f"Bearer {tokens[user]}".encode()), *headers]
        stream = Stream(query, headers)
        opened.append(stream)
        await stream.start()
        return stream

    yield open_stream
    for stream in opened:
        with contextlib.suppress(Exception):
            await stream.close()
    await sync_to_async(connections.close_all)()
    # Django's ASGI handler runs each request's ORM calls on a thread of its own; with
    # CONN_MAX_AGE > 0 (the PostgreSQL profile) their connections stay open until collected,
    # and an open connection stops the test database from being dropped.
    gc.collect()


@pytest.fixture
async def websocket(tokens: dict[str, str]) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[WebsocketCommunicator] = []

    async def open_socket(user: str) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(application, f"/ws/v1/events/?token={tokens[user]}")
        opened.append(comm)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert connected
        return comm

    yield open_socket
    for comm in opened:
        with contextlib.suppress(Exception):
            await comm.disconnect(timeout=TIMEOUT)


async def ws_subscribe(comm: WebsocketCommunicator, thread_id: str) -> None:
    await comm.send_json_to({"action": "subscribe", "threadId": thread_id})
    assert (await comm.receive_json_from(timeout=TIMEOUT))["type"] == "subscribed"


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


NOT_AUTHENTICATED = error_body("not_authenticated", "Authentication credentials were not provided.")


# --- refusals -------------------------------------------------------------------------------------


async def test_without_credentials_or_with_a_bad_token_the_stream_is_401(
    cast: Cast, streams: Opener
) -> None:
    client = await act(Client)
    await act(client.force_login, cast.alice)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
    bad_bearer = (b"authorization", b"Bearer tl_garbage")
    attempts: dict[str, tuple[str, Headers]] = {
        "nothing": ("", []),
        "bad bearer": ("", [bad_bearer]),
        "bad query token": ("&token=tl_garbage", []),
        # A token that is present but bad is not a fallback to the cookie.
        "bad bearer and a good cookie": ("", [bad_bearer, cookie]),
        "bad query token and a good cookie": ("&token=tl_garbage", [cookie]),
    }

    for name, (extra_query, headers) in attempts.items():
        stream = await streams(query=f"threadId={cast.thread.pk}{extra_query}", headers=headers)

        assert stream.status == 401, name
        assert json.loads(await stream.body()) == NOT_AUTHENTICATED, name

    with_cookie = await streams(query=f"threadId={cast.thread.pk}", headers=[cookie])
    assert with_cookie.status == 200
    assert (await with_cookie.next_block()).comments == ["connected"]


async def test_an_outsiders_thread_and_a_missing_thread_are_the_same_404(
    cast: Cast, streams: Opener
) -> None:
    outsider = await streams("charlie", query=f"threadId={cast.thread.pk}")
    missing = await streams("charlie", query=f"threadId={MISSING_THREAD}")
    mixed = await streams("bob", query=f"threadId={cast.thread.pk}&threadId={MISSING_THREAD}")

    bodies = [await s.body() for s in (outsider, missing, mixed)]
    assert [s.status for s in (outsider, missing, mixed)] == [404, 404, 404]
    assert bodies[0] == bodies[1] == bodies[2]
    assert json.loads(bodies[0]) == error_body("not_found", "Thread not found.")


@pytest.mark.parametrize(
    "position", ["garbage", f"{MISSING_THREAD}:-1", f"{MISSING_THREAD}:x", ":5", "thr_a:1,,thr_b:2"]
)
async def test_a_malformed_last_event_id_is_400(cast: Cast, streams: Opener, position: str) -> None:
    expected = error_body(
        "invalid",
        "Last-Event-ID must look like thr_a:41,thr_b:7.",
        {"lastEventId": ["Malformed."]},
    )
    by_header = await streams(
        "bob", query=f"threadId={cast.thread.pk}", headers=[(b"last-event-id", position.encode())]
    )
    by_query = await streams(
        "bob", query=f"threadId={cast.thread.pk}&lastEventId={position.replace(',', '%2C')}"
    )

    for stream in (by_header, by_query):
        assert stream.status == 400
        assert json.loads(await stream.body()) == expected


async def test_without_thread_stream_permission_the_stream_is_403(
    cast: Cast, streams: Opener
) -> None:
    def revoke_stream(user: User) -> None:
        user.groups.clear()
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="threads", codename__in=["chat-svc:thread:view"]
            )
        )

    await act(revoke_stream, cast.bob)

    stream = await streams("bob", query=f"threadId={cast.thread.pk}")

    assert stream.status == 403
    assert json.loads(await stream.body()) == error_body(
        "permission_denied", "You do not have the chat-svc:thread:stream permission."
    )


async def test_more_thread_ids_than_allowed_is_400(
    cast: Cast, streams: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_THREADS_PER_CONNECTION", 1)
    other, _ = await act(services.thread_create, creator=cast.alice, members=[cast.bob])

    stream = await streams("bob", query=f"threadId={cast.thread.pk}&threadId={other.pk}")

    assert stream.status == 400
    assert json.loads(await stream.body()) == error_body(
        "invalid", "At most 1 threadId parameters."
    )


# --- the stream -----------------------------------------------------------------------------------


async def test_the_stream_carries_positions_names_and_the_websockets_json(
    cast: Cast, streams: Opener, websocket: Callable[[str], Any]
) -> None:
    other, _ = await act(services.thread_create, creator=cast.alice, members=[cast.bob])
    one, two = cast.thread.pk, other.pk
    bob_ws = await websocket("bob")
    for thread_id in (one, two):
        await ws_subscribe(bob_ws, thread_id)
    stream = await streams("bob", query=f"threadId={one}&threadId={two}")

    assert stream.status == 200
    assert stream.headers[b"content-type"] == b"text/event-stream"
    assert stream.headers[b"cache-control"] == b"no-cache"
    first = await stream.next_block()
    assert (first.retry, first.id, first.comments) == ("2000", f"{one}:0,{two}:1", ["connected"])

    posted = await act(post, cast.thread, cast.alice, "one")
    updated = await act(services.thread_update, thread=other, title="Two, renamed")
    posted_again = await act(post, cast.thread, cast.bob, "one again")

    blocks = await stream.events(3)
    ws_texts = [await bob_ws.receive_from(timeout=TIMEOUT) for _ in range(3)]
    assert [(b.id, b.event) for b in blocks] == [
        (f"{one}:1,{two}:1", "chatMessageAdded"),
        (f"{one}:1,{two}:2", "chatThreadUpdate"),
        (f"{one}:2,{two}:2", "chatMessageAdded"),
    ]
    assert [b.json for b in blocks] == [
        posted,
        {"type": "chatThreadUpdate", "threadId": two, "seq": 2, "data": thread_json(updated)},
        posted_again,
    ]
    # Byte for byte what the WebSocket door sends.
    assert [b.data for b in blocks] == ws_texts


async def test_resuming_with_last_event_id_gives_exactly_the_missed_events(
    cast: Cast, streams: Opener
) -> None:
    other, _ = await act(services.thread_create, creator=cast.alice, members=[cast.bob])
    one, two = cast.thread.pk, other.pk
    sent = [await act(post, cast.thread, cast.alice, f"m{i}") for i in range(4)]
    sent_two = await act(post, other, cast.alice, "in two")  # seq 2 of thread two
    # The events above are published from a background thread; bob's streams must open
    # after they went out, or his own stream gets thread two's chatThreadAdded live (this
    # test failed that way now and then).
    assert await act(events.publish_drain)
    positions = f"{one}:2,{two}:1"
    query = f"threadId={one}&threadId={two}"

    by_header = await streams("bob", query=query, headers=[(b"last-event-id", positions.encode())])
    by_query = await streams("bob", query=f"{query}&lastEventId={positions.replace(',', '%2C')}")

    for stream in (by_header, by_query):
        assert stream.status == 200
        assert (await stream.next_block()).id == positions
        blocks = await stream.events(3)
        assert [b.json for b in blocks] == [sent[2], sent[3], sent_two]
        assert [b.id for b in blocks] == [
            f"{one}:3,{two}:1",
            f"{one}:4,{two}:1",
            f"{one}:4,{two}:2",
        ]
    live = await act(post, cast.thread, cast.bob, "live")
    for stream in (by_header, by_query):
        block = await stream.next_event()
        assert (block.id, block.json) == (f"{one}:5,{two}:2", live)
        assert await stream.quiet_events() == []


async def test_resuming_from_before_the_kept_log_gets_a_resync_event(
    cast: Cast, streams: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events.log, "EVENT_LOG_KEEP", 3)
    monkeypatch.setattr(events.log, "_PRUNE_EVERY", 5)
    for i in range(6):
        await act(post, cast.thread, cast.alice, f"m{i}")  # the log keeps seqs 3..6
    tid = cast.thread.pk

    stream = await streams("bob", query=f"threadId={tid}&lastEventId={tid}:1")

    assert (await stream.next_block()).id == f"{tid}:1"
    resync = await stream.next_event()
    assert (resync.id, resync.event) == (f"{tid}:6", "resync")
    assert resync.json == {
        "type": "resync",
        "threadId": tid,
        "seq": 6,
        "data": {"reason": "The events you missed are older than the log keeps."},
    }
    live = await act(post, cast.thread, cast.alice, "after the resync")
    block = await stream.next_event()
    assert (block.id, block.json) == (f"{tid}:7", live)


async def test_a_keep_alive_comment_is_sent_when_the_stream_is_idle(
    cast: Cast, streams: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.05)
    stream = await streams("bob", query=f"threadId={cast.thread.pk}")
    await stream.next_block()  # connected

    idle = await stream.next_block()

    assert (idle.comments, idle.event, idle.data, idle.id) == (["keep-alive"], None, None, None)
    # Events still flow between keep-alives.
    posted = await act(post, cast.thread, cast.alice, "after a pause")
    assert (await stream.next_event()).json == posted


async def test_a_removed_member_stops_receiving(
    cast: Cast, streams: Opener, websocket: Callable[[str], Any]
) -> None:
    alice_ws = await websocket("alice")
    await ws_subscribe(alice_ws, cast.thread.pk)
    stream = await streams("bob", query=f"threadId={cast.thread.pk}")
    await stream.next_block()

    await act(services.membership_remove, thread=cast.thread, actor=cast.alice, user_id=cast.bob.pk)
    removed = await stream.next_event()
    for i in range(2):
        await act(post, cast.thread, cast.alice, f"after bob {i}")
    seen_by_alice = [await alice_ws.receive_json_from(timeout=TIMEOUT) for _ in range(3)]

    assert (removed.event, removed.json["data"]) == ("chatMemberRemoved", {"userId": cast.bob.pk})
    assert [f["seq"] for f in seen_by_alice] == [1, 2, 3]
    # Neither the posts nor the copy of the removal that comes by bob's own stream.
    assert await stream.quiet_events() == []


async def test_an_outsider_hears_only_of_threads_they_are_added_to(
    cast: Cast, streams: Opener
) -> None:
    stream = await streams("charlie")
    assert (await stream.next_block()).comments == ["connected"]
    await act(post, cast.thread, cast.alice, "not for charlie")

    await act(services.membership_add, thread=cast.thread, actor=cast.alice, users=[cast.charlie])

    block = await stream.next_event()
    assert (block.event, block.json["threadId"], block.json["seq"]) == (
        "chatThreadAdded",
        cast.thread.pk,
        2,
    )
    assert cast.charlie.pk in [m["userId"] for m in block.json["data"]["members"]]
    assert await stream.quiet_events() == []
