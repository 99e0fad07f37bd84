"""Rate limits (threads.rates, chatproject.rates): the refusal, its shape on every door, no side
effect, recovery when the window resets, the group overrides, the per-address limits.

tests/settings.py turns RATE_LIMITS off; every test here turns it on (the `limits` fixture)
with small rates, so that a handful of requests reaches them. Windows are moved by a clock the
tests own (FakeClock, where django-ratelimit reads the time), never by waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client

from agents.models import AgentRun, LedgerEntry
from chatproject.asgi import application
from messaging.models import File, Message
from tests.conftest import Cast
from threads import rates
from threads.models import GroupLimits, Thread, User
from threads.ratespec import describe, more_generous, parse_rate

TIMEOUT = 3.0


class FakeClock:
    """time.time() as django-ratelimit's core sees it: a fixed second the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    # 1_800_000_000 is a round second; the window of each key ends at its own offset within
    # the period, so tests read Retry-After rather than assume where the window ends.
    fake = FakeClock(1_800_000_000.0)
    monkeypatch.setattr("django_ratelimit.core.time", fake)
    return fake


@pytest.fixture
def limits(settings: Any, clock: FakeClock) -> Any:
    """Rate limits on, every rate generous except where a test lowers one."""
    settings.RATE_LIMITS = True
    for limit in rates.Limit:
        setattr(settings, f"RATE_LIMIT_{limit.upper()}", "1000/m")
    return settings


def post(cast: Cast, user: User, text: str = "hi", **extra: Any) -> Any:
    return cast.client(user).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/", {"text": text, **extra}, format="json"
    )


def assert_refused(response: Any, *, within: int) -> int:
    """A native 429: the one error shape, code rate_limited, Retry-After in 1..within."""
    assert response.status_code == 429, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["fields"] == {}
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= within
    assert f"Try again in {retry_after} s." in body["error"]["message"]
    return retry_after


# --- the rate's form --------------------------------------------------------------------------


def test_rates_are_count_slash_period_or_off() -> None:
    assert parse_rate("60/m") == (60, 60)
    assert parse_rate("10/5m") == (10, 300)
    assert parse_rate(" 1000 / d ") == (1000, 86400)
    assert parse_rate("OFF") is None
    for bad in ("", "60", "60/", "60/w", "0/m", "-1/m", "60/m/s", "sixty/m", "60/0m"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
    assert describe("60/m") == "60 a minute"
    assert describe("10/5m") == "10 every 5 minutes"
    assert describe("off") == "no limit"


def test_the_more_generous_rate_lets_more_through() -> None:
    assert more_generous("60/m", "2/s") == "2/s"
    assert more_generous("100/h", "2/m") == "2/m"
    assert more_generous("60/m", "off") == "off"
    assert more_generous("60/m", "3600/h") == "3600/h"  # the same pace: the larger burst


def test_a_bad_rate_variable_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from chatproject.settings import env_rate

    monkeypatch.setenv("RATE_LIMIT_POSTS", "lots")
    with pytest.raises(ImproperlyConfigured, match="RATE_LIMIT_POSTS"):
        env_rate("RATE_LIMIT_POSTS", "60/m")
    monkeypatch.setenv("RATE_LIMIT_POSTS", "5/10s")
    assert env_rate("RATE_LIMIT_POSTS", "60/m") == "5/10s"


# --- native REST --------------------------------------------------------------------------------


def test_posts_over_the_rate_are_refused_and_write_nothing(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "2/m"
    assert post(cast, cast.alice, "one").status_code == 201
    assert post(cast, cast.alice, "two").status_code == 201

    assert_refused(post(cast, cast.alice, "three"), within=60)

    assert list(Message.objects.values_list("text", flat=True).order_by("seq")) == ["one", "two"]
    # Per user: bob's first post in the same thread is his own count.
    assert post(cast, cast.bob, "bob's").status_code == 201


def test_with_limits_off_nothing_is_counted(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"
    limits.RATE_LIMITS = False
    for n in range(3):
        assert post(cast, cast.alice, f"post {n}").status_code == 201


def test_a_limit_set_off_does_not_count(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "off"
    for n in range(3):
        assert post(cast, cast.alice, f"post {n}").status_code == 201


def test_the_count_recovers_when_the_window_resets(
    cast: Cast, limits: Any, clock: FakeClock
) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"
    assert post(cast, cast.alice, "one").status_code == 201
    retry_after = assert_refused(post(cast, cast.alice, "two"), within=60)
    clock.now += retry_after - 1
    assert_refused(post(cast, cast.alice, "still two"), within=1)

    clock.now += 1

    assert post(cast, cast.alice, "two").status_code == 201
    assert_refused(post(cast, cast.alice, "three"), within=60)


def test_replies_over_their_rate_are_refused_with_no_message_charge_or_run(
    cast: Cast, limits: Any, queued: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    limits.RATE_LIMIT_REPLIES = "1/m"
    with django_capture_on_commit_callbacks(execute=True):
        assert post(cast, cast.alice, "question", reply=True).status_code == 201
    state = (Message.objects.count(), AgentRun.objects.count(), LedgerEntry.objects.count())

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert_refused(post(cast, cast.alice, "another question", reply=True), within=60)
    assert callbacks == []

    assert (Message.objects.count(), AgentRun.objects.count(), LedgerEntry.objects.count()) == (
        state
    )
    assert len(queued) == 1
    # A post that asks for no reply is only a post.
    assert post(cast, cast.alice, "no reply wanted", reply=False).status_code == 201


def test_regenerate_counts_as_a_reply(cast: Cast, limits: Any, scripted_llm: Any) -> None:
    limits.RATE_LIMIT_REPLIES = "1/m"
    answered = post(cast, cast.alice, "question", reply=True).json()["reply"]["messageId"]
    runs = AgentRun.objects.count()

    refused = cast.client(cast.alice).post(f"/api/v1/messages/{answered}/regenerate/")

    assert_refused(refused, within=60)
    assert AgentRun.objects.count() == runs


def test_uploads_over_their_rate_are_refused_and_store_nothing(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_UPLOADS = "1/m"

    def upload() -> Any:
        file = SimpleUploadedFile("notes.txt", b"Some notes.")
        return cast.client(cast.alice).post("/api/v1/files/", {"file": file}, format="multipart")

    assert upload().status_code == 201
    assert_refused(upload(), within=60)
    assert File.objects.count() == 1


def test_the_schema_documents_429_on_the_limited_operations() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    post_429 = paths["/api/v1/threads/{thread_id}/messages/"]["post"]["responses"]["429"]
    assert "Retry-After" in post_429["headers"]
    assert "rate limit" in post_429["description"]
    # Every operation counts against the address limit, and says only that.
    me_429 = paths["/api/v1/me/"]["get"]["responses"]["429"]
    assert "address" in me_429["description"]
    assert "Retry-After" in me_429["headers"]


# --- groups ---------------------------------------------------------------------------------------


def test_a_group_raises_its_members_rate_and_the_most_generous_group_wins(
    cast: Cast, limits: Any
) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"
    writers, editors = Group.objects.create(name="Writers"), Group.objects.create(name="Editors")
    GroupLimits.objects.create(group=writers, posts="2/m")
    GroupLimits.objects.create(group=editors, posts="3/m", replies="")  # blank: the default
    cast.alice.groups.add(writers, editors)
    cast.bob.groups.add(writers)

    for n in range(3):
        assert post(cast, cast.alice, f"alice {n}").status_code == 201
    assert_refused(post(cast, cast.alice, "alice 3"), within=60)
    for n in range(2):
        assert post(cast, cast.bob, f"bob {n}").status_code == 201
    assert_refused(post(cast, cast.bob, "bob 2"), within=60)
    # charlie is in no group with limits: the default.
    assert rates.user_rates(user=cast.charlie)[rates.Limit.POSTS] == "1/m"
    assert rates.user_rates(user=cast.alice)[rates.Limit.REPLIES] == "1000/m"


def test_a_group_can_lower_a_rate_or_lift_it(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "5/m"
    strict = Group.objects.create(name="Strict")
    GroupLimits.objects.create(group=strict, posts="1/m")
    cast.alice.groups.add(strict)
    assert post(cast, cast.alice).status_code == 201
    assert_refused(post(cast, cast.alice), within=60)

    unlimited = Group.objects.create(name="Unlimited")
    GroupLimits.objects.create(group=unlimited, posts="off")
    cast.bob.groups.add(strict, unlimited)
    for _ in range(7):
        assert post(cast, cast.bob).status_code == 201


def test_saving_a_groups_limits_in_the_admin_applies_at_once(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"
    group = Group.objects.create(name="Writers")
    cast.alice.groups.add(group)
    assert post(cast, cast.alice).status_code == 201
    assert_refused(post(cast, cast.alice), within=60)  # the default rate is now cached

    admin = Client()
    admin.force_login(cast.admin)
    response = admin.post(
        "/admin/threads/grouplimits/add/",
        {
            "group": group.pk,
            "posts": "3/m",
            "replies": "",
            "uploads": "",
            "ws_connects": "",
            "ws_subscribes": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    assert post(cast, cast.alice).status_code == 201  # 3/m is another counter


def test_the_admin_refuses_a_malformed_rate(cast: Cast) -> None:
    group = Group.objects.create(name="Writers")
    admin = Client()
    admin.force_login(cast.admin)
    response = admin.post("/admin/threads/grouplimits/add/", {"group": group.pk, "posts": "lots"})
    assert response.status_code == 200
    assert "is not a rate" in response.content.decode()
    assert not GroupLimits.objects.exists()


def test_effective_rates_are_cached(
    cast: Cast, limits: Any, django_assert_num_queries: Any
) -> None:
    rates.user_rates(user=cast.alice)
    with django_assert_num_queries(0):
        rates.user_rates(user=cast.alice)


# --- per client address ---------------------------------------------------------------------------


def test_api_requests_over_the_address_rate_are_refused_on_every_api_path(
    cast: Cast, limits: Any
) -> None:
    limits.RATE_LIMIT_IP_REQUESTS = "2/m"
    client = cast.client(cast.alice)
    assert client.get("/api/v1/me/").status_code == 200
    assert client.get("/api/v1/me/").status_code == 200

    assert_refused(client.get("/api/v1/me/"), within=60)
    # Another user from the same address is refused too: the count is the address's.
    assert_refused(cast.client(cast.bob).get("/api/v1/threads/"), within=60)
    # Before authentication: an anonymous flood is counted like any other.
    assert_refused(Client().get("/api/v1/me/"), within=60)
    chat_svc = client.post("/chat-svc/threads", {}, format="json")
    assert chat_svc.status_code == 429
    assert set(chat_svc.json()) == {"error"}
    assert chat_svc.json()["error"].startswith("Too many requests from this address")
    assert int(chat_svc["Retry-After"]) >= 1
    upload = client.post("/upload", {}, format="multipart")
    assert upload.status_code == 429
    assert upload.json()["data"] is None
    assert upload.json()["message"].startswith("Too many requests from this address")
    # Pages, static files and logins are not API requests.
    assert Client().get("/login/").status_code == 200
    assert Client().get("/healthz").status_code == 200


def test_the_address_comes_from_x_forwarded_for_only_behind_trusted_proxies(
    cast: Cast, limits: Any
) -> None:
    limits.RATE_LIMIT_IP_REQUESTS = "1/m"
    client = cast.client(cast.alice)

    def me(forwarded: str) -> int:
        response = client.get("/api/v1/me/", HTTP_X_FORWARDED_FOR=forwarded)
        return int(response.status_code)

    # No trusted proxy: the header is the client's own claim, and ignored.
    assert [me("198.51.100.1"), me("198.51.100.2")] == [200, 429]
    limits.TRUSTED_PROXY_COUNT = 1
    assert [me("198.51.100.3"), me("198.51.100.4"), me("198.51.100.4")] == [200, 200, 429]
    # An IPv6 client holds a whole /64: one address.
    assert [me("2001:db8:1:2::1"), me("2001:db8:1:2::ffff"), me("2001:db8:1:3::1")] == [
        200,
        429,
        200,
    ]


def test_a_failing_cache_lets_requests_through(
    cast: Cast, limits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the cache is down")

    monkeypatch.setattr(caches["rates"], "add", broken)
    assert post(cast, cast.alice, "one").status_code == 201
    assert post(cast, cast.alice, "two").status_code == 201


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="the Redis profile's counter cache")
def test_the_redis_counter_cache_counts_once_per_request_with_a_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counters = caches["rates"]
    assert type(counters).__name__ == "CounterRedisCache"
    client = counters._cache.get_client(write=True)  # type: ignore[attr-defined]
    key = counters.make_and_validate_key("rl:test")
    sent: list[str] = []
    execute = type(client.pipeline()).execute

    def counting(pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append("round trip")
        return execute(pipeline, *args, **kwargs)

    monkeypatch.setattr(type(client.pipeline()), "execute", counting)
    # django-ratelimit's calls for one counted request: add, and incr when the key was there.
    assert counters.add("rl:test", 1, 60) is True  # new: the count is 1
    assert counters.add("rl:test", 1, 60) is False
    assert counters.incr("rl:test") == 2  # the add's count, not a second increment
    assert counters.add("rl:test", 1, 60) is False
    assert counters.incr("rl:test") == 3
    assert sent == ["round trip"] * 3
    assert int(client.get(key)) == 3
    assert 0 < client.ttl(key) <= 60  # the first add's lifetime, kept
    # An incr of its own is a real one; a key gone in between comes back with a lifetime.
    assert counters.incr("rl:test") == 4
    client.delete(key)
    assert counters.incr("rl:test") == 1
    assert client.ttl(key) > 0


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="the Redis profile's counter cache")
def test_the_redis_counter_cache_refuses_at_the_limit(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "3/m"
    assert [post(cast, cast.alice).status_code for _ in range(4)] == [201, 201, 201, 429]


# --- the compat doors (HTTP) --------------------------------------------------------------------


def test_chat_svc_answers_its_own_error_shape_with_429(cast: Cast, limits: Any) -> None:
    limits.RATE_LIMIT_POSTS = "1/m"
    client = cast.client(cast.alice)
    path = f"/chat-svc/thread/{cast.thread.pk}/message"
    assert client.post(path, {"text": "one"}, format="json").status_code == 200

    refused = client.post(path, {"text": "two"}, format="json")

    assert refused.status_code == 429
    assert set(refused.json()) == {"error"}
    assert refused.json()["error"].startswith("Too many messages: at most 1 a minute.")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert Message.objects.count() == 1


def test_ai_at_works_upload_answers_its_own_shape_and_leaves_no_session(
    cast: Cast, limits: Any
) -> None:
    limits.RATE_LIMIT_UPLOADS = "1/m"

    def upload(session_id: str) -> Any:
        body = {"file": SimpleUploadedFile("notes.txt", b"Notes."), "session_id": session_id}
        return cast.client(cast.alice).post("/upload", body, format="multipart")

    assert upload(cast.thread.pk).status_code == 202
    threads = Thread.objects.count()

    refused = upload("NEW")

    assert refused.status_code == 429
    assert refused.json()["data"] is None
    assert refused.json()["message"].startswith("Too many uploads")
    assert int(refused["Retry-After"]) >= 1
    assert (Thread.objects.count(), File.objects.count()) == (threads, 1)


# --- streamed and socket doors (ASGI, real commits) -------------------------------------------


@pytest.fixture
def tokens(cast: Cast) -> dict[str, str]:
    from threads import services as thread_services

    return {
        user.username: thread_services.token_issue(user=user)[1]
        for user in (cast.alice, cast.bob, cast.charlie)
    }


@pytest.fixture
def bundled_model(transactional_db: None) -> None:
    import importlib

    from django.apps import apps

    importlib.import_module("agents.migrations.0002_default_model").create_default_model(apps, None)


@pytest.fixture
async def sockets() -> AsyncIterator[list[WebsocketCommunicator]]:
    opened: list[WebsocketCommunicator] = []
    yield opened
    for comm in opened:
        # A refused socket's application has finished already: disconnecting cancels nothing.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await comm.disconnect(timeout=TIMEOUT)
    await sync_to_async(connections.close_all)()


async def connect(
    opened: list[WebsocketCommunicator], path: str, token: str, address: str = "192.0.2.10"
) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, f"{path}?token={token}")
    comm.scope["client"] = (address, 40000)
    opened.append(comm)
    connected, code = await comm.connect(timeout=TIMEOUT)
    assert connected, code
    return comm


async def closed_with(comm: WebsocketCommunicator) -> int:
    message = await comm.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close", message
    return int(message["code"])


@pytest.mark.django_db(transaction=True)
async def test_the_native_socket_refuses_a_connect_with_a_frame_then_4429(
    cast: Cast, limits: Any, tokens: dict[str, str], sockets: list[WebsocketCommunicator]
) -> None:
    limits.RATE_LIMIT_WS_CONNECTS = "1/m"
    first = await connect(sockets, "/ws/v1/events/", tokens["alice"])
    await first.send_json_to({"action": "ping", "ref": "1"})
    assert (await first.receive_json_from(timeout=TIMEOUT))["type"] == "pong"

    second = await connect(sockets, "/ws/v1/events/", tokens["alice"])

    frame = await second.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "rate_limited"
    assert frame["error"]["message"].startswith("Too many socket connections: at most 1 a minute")
    assert 1 <= frame["error"]["retryAfter"] <= 60
    assert await closed_with(second) == 4429
    # Per user: bob's connect is his own.
    await connect(sockets, "/ws/v1/events/", tokens["bob"])


@pytest.mark.django_db(transaction=True)
async def test_socket_connects_over_the_address_rate_are_refused(
    cast: Cast, limits: Any, tokens: dict[str, str], sockets: list[WebsocketCommunicator]
) -> None:
    limits.RATE_LIMIT_IP_WS_CONNECTS = "1/m"
    await connect(sockets, "/ws/v1/events/", tokens["alice"])

    refused = await connect(sockets, "/ws", tokens["bob"])  # another user, the same address

    frame = await refused.receive_json_from(timeout=TIMEOUT)
    assert frame["error"].startswith("Too many socket connections from this address")
    assert await closed_with(refused) == 4429
    await connect(sockets, "/ws/v1/events/", tokens["bob"], address="192.0.2.11")


@pytest.mark.django_db(transaction=True)
async def test_the_native_socket_refuses_subscribes_over_the_rate(
    cast: Cast, limits: Any, tokens: dict[str, str], sockets: list[WebsocketCommunicator]
) -> None:
    limits.RATE_LIMIT_WS_SUBSCRIBES = "1/m"
    comm = await connect(sockets, "/ws/v1/events/", tokens["alice"])
    await comm.send_json_to({"action": "subscribe", "threadId": cast.thread.pk})
    assert (await comm.receive_json_from(timeout=TIMEOUT))["type"] == "subscribed"

    await comm.send_json_to({"action": "subscribe", "threadId": cast.thread.pk})

    frame = await comm.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == "error"
    assert frame["action"] == "subscribe"
    assert frame["threadId"] == cast.thread.pk
    assert frame["error"]["code"] == "rate_limited"
    assert 1 <= frame["error"]["retryAfter"] <= 60
    # The socket stays open and serves other frames.
    await comm.send_json_to({"action": "ping", "ref": "still here"})
    assert await comm.receive_json_from(timeout=TIMEOUT) == {"type": "pong", "ref": "still here"}


@pytest.mark.django_db(transaction=True)
async def test_ai_at_works_socket_answers_its_own_error_frame(
    cast: Cast,
    limits: Any,
    tokens: dict[str, str],
    sockets: list[WebsocketCommunicator],
    bundled_model: None,
    scripted_llm: Any,
) -> None:
    limits.RATE_LIMIT_REPLIES = "1/m"
    limits.RATE_LIMIT_WS_CONNECTS = "1/m"
    comm = await connect(sockets, "/ws", tokens["alice"])
    await comm.send_json_to({"type": 3, "data": {"session_id": cast.thread.pk, "message": "1"}})
    assert (await comm.receive_json_from(timeout=TIMEOUT))["type"] == 3
    messages = await sync_to_async(Message.objects.count)()

    await comm.send_json_to({"type": 3, "data": {"session_id": "NEW", "message": "2"}})

    answer = await comm.receive_json_from(timeout=TIMEOUT)
    assert set(answer) == {"error"}
    assert answer["error"].startswith("Too many AI replies asked for: at most 1 a minute.")
    assert await sync_to_async(Message.objects.count)() == messages
    assert await sync_to_async(Thread.objects.count)() == 1  # no session left by the NEW

    refused = await connect(sockets, "/ws", tokens["alice"])
    frame = await refused.receive_json_from(timeout=TIMEOUT)
    assert set(frame) == {"error"}
    assert frame["error"].startswith("Too many socket connections")
    assert await closed_with(refused) == 4429


@pytest.mark.django_db(transaction=True)
async def test_the_bffs_streamed_post_answers_429_before_the_stream(
    cast: Cast, limits: Any, tokens: dict[str, str], bundled_model: None, scripted_llm: Any
) -> None:
    from tests.messaging.compat.conftest import HttpExchange

    limits.RATE_LIMIT_POSTS = "1/m"
    limits.RATE_LIMIT_REPLIES = "1/m"
    auth = [(b"authorization", f"Bearer {tokens['alice']}".encode())]

    async def send(body: bytes) -> HttpExchange:
        exchange = HttpExchange(
            "POST",
            "/api/v1/chat/messages",
            headers=[*auth, (b"content-type", b"application/json")],
            body=body,
        )
        return await exchange.start()

    first = await send(b'{"message": "one"}')
    assert first.status == 200, await first.body()
    await first.close()
    messages = await sync_to_async(Message.objects.count)()

    refused = await send(b'{"message": "two"}')

    assert refused.status == 429
    assert 1 <= int(refused.headers[b"retry-after"]) <= 60
    body = await refused.json()
    assert body["error"]["code"] == "rate_limited"
    assert await sync_to_async(Message.objects.count)() == messages
    assert await sync_to_async(Thread.objects.count)() == 2  # the first post's new session only
    await sync_to_async(connections.close_all)()
